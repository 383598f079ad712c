"""Every change to projects' files: upload, validation results, deletion; and erasing a project with
everything it stored."""

from __future__ import annotations

import logging
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q

from apps.accounts.actions import require_manager, require_manager_or_creator
from apps.accounts.models import ApiKey, User
from apps.core.errors import ActionError
from apps.core.storage import JOB_AREAS, delete_stored, job_prefix
from apps.core.text import refuse_unstorable
from apps.jobs.models import ACTIVE_STATUSES, Job, JobKind, JobStatus
from apps.projects.models import UPLOAD_PURPOSES, File, FilePurpose, FileStatus, Project
from apps.registry.models import Model

logger = logging.getLogger(__name__)

VALIDATE_FILE_TASK = "files.validate"
MAPPING_FIELDS = ("text", "label", "prompt", "completion", "messages")


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
    from apps.billing.quotas import subscription_for

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

    return send_now(VALIDATE_FILE_TASK, [file.public_id])


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


DELETE_FILE_REFUSAL = "Only owners and admins, and the member who uploaded it, can delete this file."
# A job in one of these is not over: it still reads its files (a paused fine-tune again when it
# resumes), and a fine-tune or batch still writes to storage.
UNFINISHED_STATUSES = (*ACTIVE_STATUSES, JobStatus.PAUSED)
JOB_NOUNS = {JobKind.FINE_TUNE: "fine-tuning job", JobKind.BATCH: "batch"}


def job_using(file: File) -> Job | None:
    """The oldest unfinished job that reads `file` (as training, validation or batch input file)."""
    return (
        Job.objects.filter(Q(training_file=file) | Q(validation_file=file), status__in=UNFINISHED_STATUSES)
        .order_by("id")
        .first()
    )


@transaction.atomic
def delete_file(actor: User | None, file: File) -> None:
    """For owners and admins of the file's organization and for its uploader (files we produce,
    results and batch output, have no uploader: only owners and admins delete them). Refused (409)
    while an unfinished job reads the file: deleting it would fail that job."""
    require_manager_or_creator(actor, file.project.organization, file.created_by_id, DELETE_FILE_REFUSAL)
    # A job created on this file takes a share lock on its row when it commits (the foreign-key
    # check): with this lock held, such a job is either committed already, and found below, or its
    # commit waits and then fails because the file is gone. Never a job without its file.
    if not File.objects.select_for_update().filter(pk=file.pk).exists():
        return  # already deleted
    job = job_using(file)
    if job is not None:
        raise ActionError(
            f"File {file.public_id} is used by {JOB_NOUNS.get(JobKind(job.kind), 'job')} {job.public_id}, "
            f"which is {JobStatus(job.status).label.lower()}. Cancel the job or wait for it to finish, "
            "then delete the file.",
            code="file_in_use",
            status=409,
        )
    name = file.content.name
    storage = file.content.storage
    file.delete()
    if name:
        # After the row is gone, so a failure here leaves an orphan blob, never a broken row.
        transaction.on_commit(lambda: storage.delete(name))


RESULT_PURPOSES = (FilePurpose.FINE_TUNE_RESULTS, FilePurpose.BATCH_OUTPUT)


# Long work whose worker writes to storage until it stops (checkpoints, weights, result files).
STORING_KINDS = (JobKind.FINE_TUNE, JobKind.BATCH)


@transaction.atomic
def delete_project(actor: User, project: Project) -> None:
    """For owners and admins: the project, and everything it stored (`erase_project`)."""
    require_manager(actor, project.organization)
    erase_project(project)


def erase_project(project: Project) -> None:
    """Deletes the project with its files, jobs, fine-tuned models and API keys, and then everything
    they stored. Usage records stay (their project and job become empty): they are billing history.

    Refused while a fine-tune or batch of the project is unfinished: deleting cannot be undone, a
    paused job is work its owner meant to resume, and a running one goes on writing checkpoints and
    weights until its worker stops, which would outlive the deletion. In-flight inference requests
    do not block: they last seconds, and a project in use always has some."""
    # As in delete_file: a job created in the project meanwhile fails at its commit, never outlives it.
    Project.objects.select_for_update().filter(pk=project.pk).exists()
    jobs = Job.objects.filter(project=project)
    unfinished = list(
        jobs.filter(kind__in=STORING_KINDS, status__in=UNFINISHED_STATUSES)
        .order_by("id")[:4]
        .values_list("public_id", flat=True)
    )
    if unfinished:
        named = ", ".join(unfinished[:3]) + (" and more" if len(unfinished) > 3 else "")
        raise ActionError(
            f"The project has unfinished fine-tuning jobs or batches ({named}). Cancel them or wait for "
            "them to finish, then delete the project.",
            code="project_in_use",
            status=409,
        )
    organization_id = project.organization.public_id
    keys = [name for name in File.objects.filter(project=project).values_list("content", flat=True) if name]
    prefixes = [
        job_prefix(area, organization_id, job_id)
        for job_id in jobs.filter(kind__in=STORING_KINDS).values_list("public_id", flat=True)
        for area in JOB_AREAS
    ]
    models = Model.objects.filter(project=project)
    prefixes += [
        key
        for key in models.values_list("artifact_key", flat=True)
        if key and not key.startswith(("catalog:", "local:"))
    ]
    models.delete()
    project.delete()
    # After the rows are gone, so a storage fault leaves orphan blobs, never rows without content.
    transaction.on_commit(lambda: delete_stored(keys, sorted(set(prefixes))))
