"""Where a model's weights are on this worker: catalog packages, the model cache, or storage; and
which loaded model serves a request (a LoRA fine-tune as a view of its cached base)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files.storage import default_storage

from apps.core.storage import download_dir

if TYPE_CHECKING:
    from apps.registry.models import Model
    from workers.runtime.models import LoadedModel, ModelCache

logger = logging.getLogger(__name__)

CATALOG_PREFIX = "catalog:"
LOCAL_PREFIX = "local:"  # a directory on the worker's disk (staff-registered models, tests)
# What serving a fine-tune as an adapter needs of its artifact: all but the merged weights.
_NOT_FOR_ADAPTERS = (".safetensors", "trainer_state.pt")


def local_model_dir(artifact_key: str) -> Path:
    if artifact_key.startswith(CATALOG_PREFIX):
        from workers.runtime.catalog import catalog_model_dir

        return catalog_model_dir(artifact_key[len(CATALOG_PREFIX) :], Path(settings.MODEL_CACHE_DIR))
    if artifact_key.startswith(LOCAL_PREFIX):
        return Path(artifact_key[len(LOCAL_PREFIX) :])
    # A fine-tuned model in storage: copied once into this worker's model cache.
    return download_dir(artifact_key, Path(settings.MODEL_CACHE_DIR) / "artifacts" / artifact_key)


# artifact key -> its adapter's local directory, or None: a model's artifact never changes.
_adapter_dirs: dict[str, Path | None] = {}


def _adapter_dir(artifact_key: str) -> Path | None:
    """The local copy of a LoRA fine-tune's adapter and tokenizer (not its merged weights), or None
    when its artifact holds no adapter (a full fine-tune, a catalog model)."""
    from workers.runtime.adapters import ADAPTER_CONFIG, ADAPTER_DIR

    if artifact_key in _adapter_dirs:
        return _adapter_dirs[artifact_key]
    found: Path | None = None
    if artifact_key.startswith(LOCAL_PREFIX):
        local = Path(artifact_key[len(LOCAL_PREFIX) :])
        found = local if (local / ADAPTER_DIR / ADAPTER_CONFIG).is_file() else None
    elif not artifact_key.startswith(CATALOG_PREFIX) and default_storage.exists(
        f"{artifact_key}/{ADAPTER_DIR}/{ADAPTER_CONFIG}"
    ):
        found = download_dir(
            artifact_key,
            Path(settings.MODEL_CACHE_DIR) / "adapters" / artifact_key,
            keep=lambda name: "/" in name or not name.endswith(_NOT_FOR_ADAPTERS),
        )
    _adapter_dirs[artifact_key] = found
    return found


def load_servable(model: Model, cache: ModelCache) -> LoadedModel:
    """The loaded model that answers for `model`. A LoRA fine-tune of a local base is served on
    that base, which the cache holds once for all its fine-tunes (SERVE_LORA_ADAPTERS); anything
    else, or an adapter the view cannot serve exactly, from its own weights."""
    from workers.runtime.adapters import UnsupportedAdapter

    base = model.base
    if settings.SERVE_LORA_ADAPTERS and base is not None and base.artifact_key:
        adapter = _adapter_dir(model.artifact_key)
        if adapter is not None:
            try:
                return cache.get_adapted(str(local_model_dir(base.artifact_key)), str(adapter))
            except UnsupportedAdapter as exc:
                logger.info("model %s is served from its merged weights: %s", model.name, exc)
    return cache.get(str(local_model_dir(model.artifact_key)))
