"""A database seeded before embeddings learns which catalog models embed (registry migration 0005)."""

from __future__ import annotations

import importlib

from django.apps import apps

from apps.registry.models import Model

migration = importlib.import_module("apps.registry.migrations.0005_embedding_models")


def test_an_older_catalog_is_marked_and_completed(db: None) -> None:
    # given the catalog as it was before: MiniLM without the mark (its other limits edited by staff),
    # and no OpenAI embedding model
    minilm = Model.objects.get(name="minilm-l6")
    minilm.limits = {"max_seq_length": 128, "servable": False}
    minilm.save(update_fields=["limits"])
    Model.objects.filter(name="openai:text-embedding-3-small").delete()

    migration.mark_embedding_models(apps, None)

    minilm.refresh_from_db()
    assert minilm.limits == {"max_seq_length": 128, "servable": False, "embedding_dimensions": 384}
    added = Model.objects.get(name="openai:text-embedding-3-small")
    assert added.task == "embedding" and added.embedding_dimensions == 1536
    assert Model.objects.get(name="smollm2-135m-instruct").embedding_dimensions is None
