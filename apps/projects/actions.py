"""Every change to projects, their API keys and their files (upload, validation results). Deleting
a file or a project asks whether a job still needs it: that is `apps.jobs.deletion`."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from apps.accounts.actions import require_manager_or_creator
from apps.accounts.models import ApiKey, Organization, User
from apps.billing.quotas import subscription_for
from apps.core import hotcache, tasks
from apps.core.errors import ActionError
from apps.core.text import refuse_unstorable
from apps.projects.models import UPLOAD_PURPOSES, File, FileStatus, Project
from apps.projects.validation import Report

logger = logging.getLogger(__name__)

MAPPING_FIELDS = ("text", "label", "prompt", "completion", "messages")
DEFAULT_PROJECT_NAME = "Default project"


def _project_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ActionError("Give the project a name.", param="name")
    return name[:100]


@transaction.atomic
def create_project(organization: Organization, user: User | None, name: str) -> Project:
    return Project.objects.create(organization=organization, name=_project_name(name), created_by=user)


def rename_project(project: Project, name: str) -> Project:
    project.name = _project_name(name)
    project.save(update_fields=["name"])
    return project


def create_api_key(
    project: Project, name: str, user: User | None, expires_in_days: int | None = None
) -> tuple[ApiKey, str]:
    """Returns the key and its full secret, which is shown once and never stored. With
    `expires_in_days` the key stops working that many days from now."""
    name = name.strip() or "Secret key"
    prefix, raw = ApiKey.generate()
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    key = ApiKey.objects.create(
        project=project,
        name=name[:100],
        prefix=prefix,
        hashed_key=ApiKey.hash_secret(raw),
        created_by=user,
        expires_at=expires_at,
    )
    return key, raw


REVOKE_KEY_REFUSAL = "Only owners and admins can revoke another member's API key."


def revoke_api_key(actor: User, key: ApiKey) -> None:
    require_manager_or_creator(actor, key.project.organization, key.created_by_id, REVOKE_KEY_REFUSAL)
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    hotcache.invalidate()  # an update() sends no signal; the key must stop working at once


def parse_column_mapping(raw: Any) -> dict[str, str] | None:
    """`{"text": "review", "label": "sentiment"}`, as a dict or a JSON string (multipart forms)."""
    import json

    if raw in (None, "", {}):
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        # ValueError: not JSON, or an integer of more digits than int() takes; RecursionError: nested
        # deeper than the parser goes.
        except (ValueError, RecursionError):
            raise ActionError(
                'column_mapping must be a JSON object such as {"text": "review", "label": "sentiment"}.',
                param="column_mapping",
            ) from None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ActionError(
            "column_mapping must map field names to column names (strings).", param="column_mapping"
        )
    unknown = sorted(set(raw) - set(MAPPING_FIELDS))
    if unknown:
        raise ActionError(
            f"column_mapping has unknown field {unknown[0]!r}; use any of: {', '.join(MAPPING_FIELDS)}.",
            param="column_mapping",
        )
    refuse_unstorable(raw, "column_mapping")  # JSON inside a form field: its escapes decode only here
    return dict(raw)


def upload_file(
    project: Project,
    upload: UploadedFile | None,
    purpose: str | None,
    *,
    user: User | None = None,
    api_key: ApiKey | None = None,
    column_mapping: Any = None,
) -> File:
    """Stores an upload (status `uploaded`) and queues its validation after the commit."""
    if not purpose:
        raise ActionError("Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        allowed = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
        raise ActionError(f"Invalid value for 'purpose': {purpose!r}. Use one of {allowed}.", param="purpose")
    if upload is None:
        raise ActionError("Missing required parameter: 'file'.", param="file")
    mapping = parse_column_mapping(column_mapping)
    plan = subscription_for(project.organization).plan
    if (upload.size or 0) > plan.max_upload_bytes:
        raise ActionError(
            f"The file is {upload.size:,} bytes; the {plan.name} plan takes files up to "
            f"{plan.max_upload_bytes:,} bytes. Split it, or upgrade under Billing.",
            code="file_too_large",
            param="file",
            status=413,
        )
    filename = (upload.name or "upload").replace("\\", "/").rsplit("/", 1)[-1][:255] or "upload"
    with transaction.atomic():
        file = File(
            project=project,
            filename=filename,
            purpose=purpose,
            bytes=upload.size or 0,
            column_mapping=mapping,
            created_by=user,
            api_key=api_key,
        )
        # Storage streams the upload's chunks; the key is derived from ids, never the filename.
        file.content.save(filename, upload, save=False)
        file.save()
        transaction.on_commit(lambda: queue_validation(file))
    return file


def create_result_file(project: Project, filename: str, purpose: str, data: bytes) -> File:
    """A file we produce (batch output, fine-tune results): stored and marked processed at once."""
    file = stored_result_file(project, filename, purpose, data)
    file.save()
    return file


def create_processed_file(project: Project, filename: str, purpose: str, data: bytes, report: Report) -> File:
    """A file we wrote and validated ourselves (a batch built from a dataset): stored, processed,
    with its validation report, in the caller's transaction."""
    file = stored_result_file(project, filename, purpose, data)
    file.validation = dict(report)
    file.format = report["format"] or ""
    file.status_details = report["summary"][:500]
    file.save()
    return file


def stored_result_file(project: Project, filename: str, purpose: str, data: bytes) -> File:
    """A result file whose content is already in storage but whose row is not saved yet: save it
    in the transaction that publishes it (no storage I/O while that transaction holds its locks),
    or `discard` it when that transaction does not happen (a fenced attempt)."""
    from django.core.files.base import ContentFile

    file = File(
        project=project,
        filename=filename,
        purpose=purpose,
        bytes=len(data),
        status=FileStatus.PROCESSED,
        status_details="",
    )
    file.content.save(filename, ContentFile(data), save=False)
    return file


def discard(files: list[File]) -> None:
    """Removes the stored content of result files whose rows were never saved."""
    for file in files:
        file.content.delete(save=False)


def queue_validation(file: File) -> bool:
    """With the broker down the upload still succeeds: the reaper sends the validation again later
    (its message is just a file id, safe to send twice)."""
    from apps.core.broker import send_now

    return send_now(tasks.VALIDATE_FILE, [file.public_id])


def record_validation(file_id: str, report: dict[str, Any]) -> bool:
    """Stores a validation report; only the first report for an upload counts (a redelivered
    task finds the file no longer `uploaded` and changes nothing)."""
    status = FileStatus.PROCESSED if report["valid"] else FileStatus.ERROR
    updated = File.objects.filter(public_id=file_id, status=FileStatus.UPLOADED).update(
        status=status,
        status_details=report["summary"][:500],
        format=report["format"] or "",
        validation=report,
    )
    return updated == 1
