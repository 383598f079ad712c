"""Where a model's weights are on this worker: catalog packages, the model cache, or storage."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from apps.core.storage import download_dir

CATALOG_PREFIX = "catalog:"
LOCAL_PREFIX = "local:"  # a directory on the worker's disk (staff-registered models, tests)


def local_model_dir(artifact_key: str) -> Path:
    if artifact_key.startswith(CATALOG_PREFIX):
        from workers.runtime.catalog import catalog_model_dir

        return catalog_model_dir(artifact_key[len(CATALOG_PREFIX) :], Path(settings.MODEL_CACHE_DIR))
    if artifact_key.startswith(LOCAL_PREFIX):
        return Path(artifact_key[len(LOCAL_PREFIX) :])
    # A fine-tuned model in storage: copied once into this worker's model cache.
    return download_dir(artifact_key, Path(settings.MODEL_CACHE_DIR) / "artifacts" / artifact_key)
