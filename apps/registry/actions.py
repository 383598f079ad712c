"""Every change to models: fine-tuned models are created when their job succeeds."""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction

from apps.core.storage import delete_prefix
from apps.registry.models import Model, Task


def fine_tuned_name(base: str, organization_name: str, suffix: str, job_id: str) -> str:
    """OpenAI's naming: `ft:{base}:{org}:{suffix}:{job}`."""
    org = re.sub(r"[^a-z0-9-]+", "-", organization_name.lower()).strip("-")[:40] or "org"
    return f"ft:{base}:{org}:{suffix}:{job_id}" if suffix else f"ft:{base}:{org}::{job_id}"


def create_fine_tuned_model(
    job: Any, *, artifact_key: str, labels: list[str], metrics: dict[str, Any]
) -> Model:
    base = job.model
    suffix = (job.request or {}).get("suffix") or ""
    model, _ = Model.objects.update_or_create(
        name=fine_tuned_name(base.name, job.organization.name, suffix, job.public_id),
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
        },
    )
    return model


def delete_fine_tuned_model(model: Model) -> None:
    if model.is_catalog:
        raise ValueError("catalog models cannot be deleted")
    key = model.artifact_key
    with transaction.atomic():
        model.delete()
        if key and not key.startswith(("catalog:", "local:")):
            transaction.on_commit(lambda: delete_prefix(key))


__all__ = ["Task", "create_fine_tuned_model", "delete_fine_tuned_model", "fine_tuned_name"]
