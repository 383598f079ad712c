"""The base models every organization can use (docs/architecture.md, "Models and weights").
Synced into `registry.Model` rows by a data migration and by `manage.py prepare_models`; staff can
edit them in admin."""

from __future__ import annotations

from typing import Any

CATALOG: list[dict[str, Any]] = [
    {
        "name": "minilm-l6",
        "task": "classification",
        "provider": "local",
        "artifact_key": "catalog:minilm-l6",
        "description": "all-MiniLM-L6-v2 encoder (22M parameters): sentence embeddings, and a fast base for text classifiers.",
        "context_length": 512,
        "is_fine_tunable": True,
        # `servable` is about classifying: the bare encoder has no head. It embeds as it is
        # (/v1/embeddings), 384 numbers a text.
        "limits": {
            "max_seq_length": 512,
            "methods": ["classification", "distillation"],
            "servable": False,
            "embedding_dimensions": 384,
        },
    },
    {
        "name": "smollm2-135m-instruct",
        "task": "generation",
        "provider": "local",
        "artifact_key": "catalog:smollm2-135m-instruct",
        "description": "SmolLM2-135M-Instruct: a small chat model with a ChatML template.",
        "context_length": 2048,
        "is_fine_tunable": True,
        "limits": {"max_seq_length": 2048, "methods": ["supervised", "dpo"], "servable": True},
    },
    {
        "name": "openai:gpt-4o-mini",
        "task": "generation",
        "provider": "openai",
        "artifact_key": "",
        "description": "OpenAI gpt-4o-mini, proxied with the platform key or your organization's own key.",
        "context_length": 128000,
        "is_fine_tunable": False,
        "limits": {"servable": True},
    },
    {
        "name": "openai:text-embedding-3-small",
        "task": "embedding",
        "provider": "openai",
        "artifact_key": "",
        "description": "OpenAI text-embedding-3-small, proxied: 1,536 dimensions, or fewer with `dimensions`.",
        "context_length": 8191,
        "is_fine_tunable": False,
        "limits": {"servable": True, "embedding_dimensions": 1536},
    },
]


def sync_catalog(model_class: Any) -> int:
    """Creates missing catalog rows; leaves rows staff may have edited alone. Returns how many were new."""
    created = 0
    for entry in CATALOG:
        fields = {k: v for k, v in entry.items() if k != "name"}
        _, was_created = model_class.objects.get_or_create(
            name=entry["name"], organization=None, defaults=fields
        )
        created += int(was_created)
    return created
