"""Batches, as OpenAI's: a file of requests run by a worker into an output and an error file."""

from __future__ import annotations

from typing import Any

from apps.accounts.models import ApiKey, User
from apps.core.errors import ActionError
from apps.core.wire import omit_unset
from apps.jobs import actions
from apps.jobs.fine_tuning import parse_metadata
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.formats import BATCH_ENDPOINTS
from apps.projects.models import File, FilePurpose, FileStatus, Project

ENDPOINTS = tuple(BATCH_ENDPOINTS)
MAX_REQUESTS = 50_000


def parse(project: Project, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    for key in body:
        if key not in ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"):
            raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise ActionError(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    if body.get("completion_window") != "24h":
        raise ActionError("completion_window must be '24h'.", param="completion_window")
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise ActionError("Missing required parameter: 'input_file_id'.", param="input_file_id")
    file = File.objects.filter(project=project, public_id=file_id).first()
    if file is None:
        raise ActionError(
            f"Invalid file id '{file_id}': no such file in this project.", param="input_file_id"
        )
    if file.purpose != FilePurpose.BATCH:
        raise ActionError(
            f"File {file_id} has purpose '{file.purpose}'; batches need purpose 'batch'.",
            param="input_file_id",
        )
    if file.status != FileStatus.PROCESSED:
        state = "failed validation" if file.status == FileStatus.ERROR else "is still being validated"
        raise ActionError(f"File {file_id} {state}; use a processed file.", param="input_file_id")
    report = file.validation or {}
    rows = int(report.get("rows") or 0)
    if rows > MAX_REQUESTS:
        raise ActionError(
            f"The file has {rows} requests; a batch holds at most {MAX_REQUESTS}.", param="input_file_id"
        )
    urls = set(((report.get("stats") or {}).get("endpoints") or {}).keys())
    if urls - {endpoint}:
        raise ActionError(
            f"Every line's url must be {endpoint}; the file also uses {', '.join(sorted(urls - {endpoint}))}.",
            param="input_file_id",
        )
    metadata = parse_metadata(body.get("metadata"))
    return {"file": file, "endpoint": endpoint, "metadata": metadata, "total": rows}


def submit(
    project: Project, parsed: dict[str, Any], *, api_key: ApiKey | None = None, user: User | None = None
) -> Job:
    """Creates the batch after the checks every request passes: entitlement and the spend cap, the
    plan's models (from the file's report, so a batch the plan excludes is refused before it
    starts; the worker checks each line again) and the plan's number of batches at once."""
    from django.db import transaction

    from apps.billing import quotas
    from apps.jobs import admission
    from apps.jobs.inference import aliased

    file = parsed["file"]
    stats = (file.validation or {}).get("stats") or {}
    # An alias a line names is resolved once, now: the batch runs on the model it points to when the
    # batch is made, even if the alias moves while it runs.
    aliases = {name: target for name in stats.get("models") or {} if (target := aliased(project, name))}
    models = sorted({aliases.get(name, name) for name in stats.get("models") or {}})
    with transaction.atomic():
        organization = admission.lock_organization(project.organization_id)
        subscription = quotas.check_quota(organization)
        plan = subscription.plan
        for name in models:
            if not plan.allows(name):
                raise ActionError(
                    f"The {plan.name} plan does not include '{name}', which requests in {file.public_id} call. "
                    "Upgrade under Billing, or leave those requests out.",
                    code="model_not_allowed",
                    param="input_file_id",
                    status=403,
                )
        admission.check_batch_concurrency(subscription)
        # Something of the cap must be left; the batch takes its share chunk by chunk as it runs.
        admission.reserve(subscription, 0)
        return actions.create_job(
            kind=JobKind.BATCH,
            project=project,
            # A batch calls one model; known from the report when the file names one.
            model_name=models[0] if len(models) == 1 and not stats.get("more_models") else "",
            request={
                "endpoint": parsed["endpoint"],
                "input_file_id": file.public_id,
                "completion_window": "24h",
                **({"aliases": aliases} if aliases else {}),
            },
            api_key=api_key,
            user=user,
            metadata=parsed["metadata"],
            training_file=file,  # the input file
            progress={"total": parsed["total"], "completed": 0, "failed": 0},
            message="Batch created.",
        )


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value else None


def status_of(job: Job) -> str:
    if job.status == JobStatus.RUNNING and job.stop_requested == actions.STOP_CANCEL:
        return "cancelling"
    return {
        JobStatus.VALIDATING_FILES: "validating",
        JobStatus.QUEUED: "validating",
        JobStatus.RUNNING: "in_progress",
        JobStatus.SUCCEEDED: "completed",
        JobStatus.FAILED: "failed",
        JobStatus.CANCELLED: "cancelled",
    }.get(JobStatus(job.status), "in_progress")


# Set as the batch goes: OpenAI leaves each out until then (the spec types none as nullable).
OMITTED_WHEN_UNSET = (
    "model",
    "errors",
    "output_file_id",
    "error_file_id",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def batch_object(job: Job) -> dict[str, Any]:
    result = job.result or {}
    progress = job.progress or {}
    usage = result.get("usage") or {}
    status = status_of(job)
    errors = None
    if job.status == JobStatus.FAILED and job.error:
        errors = {"object": "list", "data": [{**job.error, "line": None}]}
    input_tokens, output_tokens = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    body = {
        "id": job.public_id,
        "object": "batch",
        "endpoint": job.request.get("endpoint"),
        "model": job.model_name or None,
        "errors": errors,
        "input_file_id": job.request.get("input_file_id"),
        "completion_window": "24h",
        "status": status,
        "output_file_id": result.get("output_file_id"),
        "error_file_id": result.get("error_file_id"),
        "created_at": _ts(job.created_at),
        "in_progress_at": _ts(job.started_at),
        "expires_at": int(job.created_at.timestamp()) + 24 * 3600,
        "finalizing_at": _ts(job.finished_at) if status == "completed" else None,
        "completed_at": _ts(job.finished_at) if status == "completed" else None,
        "failed_at": _ts(job.finished_at) if status == "failed" else None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": _ts(job.finished_at) if status == "cancelled" else None,
        "request_counts": {
            "total": int(progress.get("total", 0)),
            "completed": int(progress.get("completed", 0)),
            "failed": int(progress.get("failed", 0)),
        },
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "metadata": job.metadata,
    }
    return omit_unset(body, OMITTED_WHEN_UNSET)
