"""Every change to models: fine-tuned models are created when their job succeeds (deleting one asks
whether a job resumes from it: `apps.jobs.deletion`)."""

from __future__ import annotations

import re
from typing import Any

from apps.accounts.models import Organization
from apps.registry.models import Model


def fine_tuned_name(base: str, organization: Organization, suffix: str, job_id: str) -> str:
    """OpenAI's naming: `ft:{base}:{org}:{suffix}:{job}`, `org` being the organization's slug (not
    its name, which its members may change). A model keeps the name it was made with: its row
    stores it, so ids made before a slug was chosen go on working. A fine-tune of a fine-tuned
    model is named after the catalog base, as OpenAI names one (`ft:ft:...` never appears), and so
    is priced as that base."""
    if base.startswith("ft:"):
        base = base.split(":")[1]
    return f"ft:{base}:{organization.slug}:{suffix}:{job_id}"


def create_fine_tuned_model(
    job: Any, *, artifact_key: str, labels: list[str], metrics: dict[str, Any]
) -> Model:
    base = job.model
    suffix = (job.request or {}).get("suffix") or ""
    model, _ = Model.objects.update_or_create(
        name=fine_tuned_name(base.name, job.organization, suffix, job.public_id),
        defaults={
            "organization": job.organization,
            "project": job.project,
            "task": base.task,
            "provider": base.provider,
            "base": base,
            "artifact_key": artifact_key,
            "labels": labels,
            "metrics": metrics,
            "context_length": base.context_length,
            "limits": {"servable": True},
            "description": f"Fine-tuned from {base.name} by {job.public_id}.",
            "created_by_id": job.created_by_id,
        },
    )
    return model


def register_checkpoint_model(job: Any, checkpoint: Any) -> Model | None:
    """A kept checkpoint is callable by its `fine_tuned_model_checkpoint` name."""
    if not checkpoint.fine_tuned_model_checkpoint or job.model is None:
        return None
    model, _ = Model.objects.update_or_create(
        name=checkpoint.fine_tuned_model_checkpoint,
        defaults={
            "organization": job.organization,
            "project": job.project,
            "task": job.model.task,
            "provider": job.model.provider,
            "base": job.model,
            "artifact_key": checkpoint.artifact_key,
            # The runtime orders labels by name; the training file's report has them all.
            "labels": sorted(((job.training_file.validation or {}).get("stats") or {}).get("labels") or {})
            if job.training_file
            else [],
            "metrics": {k: v for k, v in (checkpoint.metrics or {}).items() if isinstance(v, int | float)},
            "context_length": job.model.context_length,
            "limits": {"servable": True, "checkpoint": True},
            "description": f"Checkpoint at step {checkpoint.step} of {job.public_id}.",
            "created_by_id": job.created_by_id,
        },
    )
    return model


EXPORT_SKIP = {"trainer_state.pt"}  # optimizer state: not part of a model, and never unpickled


class WeightsMissing(ValueError):
    """A fine-tuned model whose stored weights are gone (a storage fault, never the customer's)."""


def export_archive(model: Model) -> Any:
    """The model as a standard transformers directory in a .tar.gz (an open temporary file that
    disappears when closed). Raises ValueError for catalog models."""
    import tarfile
    import tempfile
    from pathlib import Path

    from django.conf import settings

    from apps.core.storage import download_dir

    if model.is_catalog or model.artifact_key.startswith(("catalog:", "local:")):
        raise ValueError(f"'{model.name}' is not a fine-tuned model with stored weights.")
    try:
        local = download_dir(
            model.artifact_key, Path(settings.MODEL_CACHE_DIR) / "artifacts" / model.artifact_key
        )
    except FileNotFoundError:
        raise WeightsMissing(
            f"The weights of '{model.name}' are missing from storage. Contact us with the model id."
        ) from None
    work = Path(settings.VAR_DIR) / "work"
    work.mkdir(parents=True, exist_ok=True)
    archive = tempfile.TemporaryFile(dir=work)  # noqa: SIM115  (returned open; deleted on close)
    top = re.sub(r"[^A-Za-z0-9._-]+", "-", model.name).strip("-")
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name not in EXPORT_SKIP):
            tar.add(path, arcname=f"{top}/{path.relative_to(local).as_posix()}")
    archive.seek(0)
    return archive
