"""Every state change of a job, each one a conditional UPDATE (docs/architecture.md, "Jobs").

- Creation publishes `(job_id, attempt)` after the commit; the reaper covers a lost publish.
- `claim` is the only way into `running`; a duplicate delivery matches no row and exits.
- Writes from a worker (heartbeat, progress, events, checkpoints, the result and its usage) are
  fenced on the attempt that claimed the job: a zombie's late write changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.accounts.models import ApiKey, User
from apps.billing.models import UsageRecord
from apps.billing.pricing import cost_of
from apps.jobs.models import (
    STOP_CANCEL,
    STOP_PAUSE,
    Checkpoint,
    Job,
    JobEvent,
    JobKind,
    JobStatus,
    StopReason,
)
from apps.jobs.queue import publish
from apps.projects.models import Project
from apps.registry.models import Model
from apps.webhooks import models as webhook_events
from apps.webhooks.actions import emit

logger = logging.getLogger(__name__)

# The pool checks its time limits once a second, then sends SIGTERM and SIGKILL; an attempt's last
# heartbeat can come a moment after the deadline its claim recorded.
TIME_LIMIT_GRACE = timedelta(seconds=3)


def lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_is_dead_here(owner: str) -> bool:
    """True when the lease belongs to a process on this host that no longer exists: a child the
    pool replaced after it was killed. Its job can be claimed at once instead of after the stale
    timeout."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --- Creation --------------------------------------------------------------------------------
def create_job(
    *,
    kind: str,
    project: Any,
    model_name: str,
    request: dict[str, Any],
    model: Any = None,
    api_key: ApiKey | None = None,
    user: User | None = None,
    status: str = JobStatus.QUEUED,
    message: str | None = None,
    **fields: Any,
) -> Job:
    """Creates a job and publishes it once the transaction commits."""
    now = timezone.now()
    # One INSERT needs no transaction of its own (an inference request's job, in autocommit).
    with transaction.atomic() if message else nullcontext():
        job = Job.objects.create(
            kind=kind,
            organization=project.organization,
            project=project,
            api_key=api_key,
            created_by=user,
            model=model,
            model_name=model_name,
            request=request,
            status=status,
            queued_at=now if status == JobStatus.QUEUED else None,
            published_at=now if status == JobStatus.QUEUED else None,
            max_attempts=settings.JOB_MAX_ATTEMPTS,
            **fields,
        )
        if message:
            JobEvent.objects.create(job=job, message=message)
        if status == JobStatus.QUEUED:
            transaction.on_commit(lambda: publish(job))
    return job


def release_validated(job: Job, fields: dict[str, Any] | None = None) -> bool:
    """`validating_files → queued` once the job's files have passed validation."""
    now = timezone.now()
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, status=JobStatus.VALIDATING_FILES).update(
            status=JobStatus.QUEUED, queued_at=now, published_at=now, **(fields or {})
        )
        if updated:
            JobEvent.objects.create(job=job, message="Files validated; job queued.")
            job.refresh_from_db()
            transaction.on_commit(lambda: publish(job))
    return bool(updated)


def webhook_event_types(job: Job) -> list[str]:
    """The webhook events a fine-tune, a batch or an eval run raises on reaching its status (none for inference):
    OpenAI's names, and ours for a pause and for a job its max_cost stopped."""
    status = JobStatus(job.status)
    if job.kind == JobKind.FINE_TUNE:
        found = {
            JobStatus.SUCCEEDED: [webhook_events.FINE_TUNE_SUCCEEDED],
            JobStatus.FAILED: [webhook_events.FINE_TUNE_FAILED],
            JobStatus.CANCELLED: [webhook_events.FINE_TUNE_CANCELLED],
            JobStatus.PAUSED: [webhook_events.FINE_TUNE_PAUSED],
        }.get(status, [])
        # Stopped by its max_cost, a job succeeds with the model of what ran (status_reason) or, with
        # nothing trained yet, fails with that code: either way the budget is why it ended.
        if StopReason.BUDGET_REACHED in (job.status_reason, (job.error or {}).get("code")):
            found = [*found, webhook_events.FINE_TUNE_BUDGET_REACHED]
        return found
    if job.kind == JobKind.BATCH:
        batch = {
            JobStatus.SUCCEEDED: webhook_events.BATCH_COMPLETED,
            JobStatus.FAILED: webhook_events.BATCH_FAILED,
            JobStatus.CANCELLED: webhook_events.BATCH_CANCELLED,
        }.get(status)
        return [batch] if batch else []
    if job.kind == JobKind.EVAL_RUN:
        run = {
            JobStatus.SUCCEEDED: webhook_events.EVAL_RUN_SUCCEEDED,
            JobStatus.FAILED: webhook_events.EVAL_RUN_FAILED,
            JobStatus.CANCELLED: webhook_events.EVAL_RUN_CANCELED,
        }.get(status)
        return [run] if run else []
    return []


def announce(job: Job) -> None:
    """The webhook events of the status `job` holds, written in the caller's transaction (the
    outbox: docs/api.md, "Webhooks")."""
    for event_type in webhook_event_types(job):
        emit(job.project_id, event_type, job.public_id)


def _announce(job_pk: int) -> None:
    """`announce` for a job changed by an UPDATE: its new status read back in the same transaction."""
    fields = ("kind", "status", "status_reason", "error", "project_id", "public_id")
    announce(Job.objects.only(*fields).get(pk=job_pk))


def fail_before_start(job: Job, code: str, message: str, param: str | None = None) -> bool:
    """A job that cannot run (a file failed validation, ...) fails at once, never retried."""
    now = timezone.now()
    with transaction.atomic():
        updated = Job.objects.filter(
            pk=job.pk, status__in=[JobStatus.VALIDATING_FILES, JobStatus.QUEUED]
        ).update(
            status=JobStatus.FAILED,
            error={"code": code, "message": message, "param": param},
            finished_at=now,
            reserved_cost=0,
        )
        if updated:
            JobEvent.objects.create(job=job, level="error", message=message)
            _announce(job.pk)
    return bool(updated)


# --- Worker side: claim, heartbeat, progress, events, checkpoints, finish --------------------------
def claim(
    job_id: str, owner: str | None = None, time_limit: float | None = None, *, with_files: bool = True
) -> Job | None:
    """queued (or running with a stale heartbeat, or leased by a dead process on this host)
    → running with attempt + 1. None when another live attempt owns the job, or it is finished.

    `time_limit` is the hard limit (seconds) the worker's pool enforces on this attempt: once it has
    passed and the heartbeat stopped, the attempt was killed and the job fails with `time_limit`.
    `with_files=False` (inference, which has none) leaves the training and validation files unloaded."""
    owner = owner or lease_owner()
    now = timezone.now()
    lease = {
        "status": JobStatus.RUNNING,
        "attempt": F("attempt") + 1,
        "lease_owner": owner,
        "heartbeat_at": now,
        "started_at": Coalesce(F("started_at"), now),
        "attempt_started_at": now,
        "time_limit_at": now + timedelta(seconds=time_limit) if time_limit else None,
    }
    # The common case, the first delivery for a queued job: one UPDATE, nothing read first.
    if not with_files:
        claimed = _claim_queued_request(job_id, owner, now, time_limit)
        if claimed is not None:
            return claimed
    elif Job.objects.filter(public_id=job_id, status=JobStatus.QUEUED).update(**lease):
        return _claimed(job_id, with_files)
    cutoff = now - timedelta(seconds=settings.JOB_STALE_SECONDS)
    current = (
        Job.objects.filter(public_id=job_id).only("status", "lease_owner", "attempt", "max_attempts").first()
    )
    if current is None:
        return None
    claimable = (
        Q(status=JobStatus.QUEUED)
        | Q(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
        | Q(status=JobStatus.RUNNING, heartbeat_at__isnull=True, started_at__lt=cutoff)
    )
    owner_dead = (
        current.status == JobStatus.RUNNING
        and bool(current.lease_owner)
        and _owner_is_dead_here(current.lease_owner)
    )
    if (
        current.status == JobStatus.RUNNING
        and _timed_out(now, owner_dead=owner_dead).filter(pk=current.pk).exists()
    ):
        # A redelivered message of an attempt the hard time limit killed: running it again would only
        # run into the same limit.
        fail_time_limit(current.pk, current.attempt)
        return None
    if owner_dead:
        if current.attempt >= current.max_attempts:
            fail_lost(current.pk, current.attempt)
            return None
        claimable |= Q(status=JobStatus.RUNNING, lease_owner=current.lease_owner, attempt=current.attempt)
    running = Q(status=JobStatus.RUNNING)
    updated = (
        Job.objects.filter(public_id=job_id)
        .filter(claimable)
        .filter(~running | Q(attempt__lt=F("max_attempts")))
        .update(**lease)
    )
    return _claimed(job_id, with_files) if updated else None


# `claim`'s lease for a queued job as one statement that returns the claimed row: an inference
# request's first delivery, where the UPDATE and the read that followed it were a third of the
# worker's time around a small model.
_CLAIM_QUEUED = f"""
UPDATE {Job._meta.db_table}
SET status = %s, attempt = attempt + 1, lease_owner = %s, heartbeat_at = %s,
    started_at = COALESCE(started_at, %s), attempt_started_at = %s, time_limit_at = %s
WHERE public_id = %s AND status = %s
RETURNING *
"""  # noqa: S608  (the only name formatted in is our own table's)


def _claim_queued_request(job_id: str, owner: str, now: datetime, time_limit: float | None) -> Job | None:
    time_limit_at = now + timedelta(seconds=time_limit) if time_limit else None
    params = [JobStatus.RUNNING, owner, now, now, now, time_limit_at, job_id, JobStatus.QUEUED]
    found = list(Job.objects.raw(_CLAIM_QUEUED, params))
    if not found:
        return None
    job = found[0]
    # The rows the worker reads through the job, from a short-lived copy: it checks that they are
    # the job's organization's (apps.core.tenancy) and loads the model's weights, and neither the
    # organization of a project, a key or a model nor a model's weights ever change.
    job.project = _row(Project, job.project_id, ("organization",))
    if job.model_id is not None:
        job.model = _row(Model, job.model_id, ("base",))  # a LoRA fine-tune is served on its base
    if job.api_key_id is not None:
        job.api_key = _row(ApiKey, job.api_key_id, ("project",))
    return job


_ROW_SECONDS = 60.0
_rows: dict[tuple[str, int], tuple[float, Any]] = {}


def _row(model: type[Any], pk: int, related: tuple[str, ...] = ()) -> Any:
    key = (model._meta.label, pk)
    now = time.monotonic()
    entry = _rows.get(key)
    if entry is not None and entry[0] > now:
        return entry[1]
    row = model.objects.select_related(*related).filter(pk=pk).first()
    if row is None:
        return None  # deleted since the claim (a model): the runner fails the job at once
    if len(_rows) >= 10_000:
        _rows.clear()
    _rows[key] = (now + _ROW_SECONDS, row)
    return row


def _claimed(job_id: str, with_files: bool) -> Job:
    # The files' and key's projects too: the worker checks they are the job's organization's
    # (apps.core.tenancy) without another round trip. Inference jobs have no files: fewer joins on
    # the serving path, where this query's compile time alone was a few milliseconds.
    related = ["project__organization", "model", "api_key__project"]
    if with_files:
        related += ["training_file__project", "validation_file__project"]
    else:
        related.append("model__base")  # a LoRA fine-tune is served on its base
    job = Job.objects.select_related(*related).get(public_id=job_id)
    if job.kind == JobKind.FINE_TUNE:  # inference jobs are too many and too short for a log line
        # Customers read events: the worker's hostname stays in lease_owner (staff, logs) only.
        JobEvent.objects.create(job=job, message=f"Attempt {job.attempt} started.")
    return job


def claim_waiting(job: Job, limit: int, owner: str | None = None) -> list[Job]:
    """Claims up to `limit` other queued jobs for the same model, to run as one batch. Their own
    messages arrive later, find them claimed or finished, and do nothing. They run inside `job`'s
    task, so under its time limit."""
    if limit <= 0:
        return []
    owner = owner or lease_owner()
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(status=JobStatus.QUEUED, kind=job.kind, model_name=job.model_name)
            .exclude(pk=job.pk)
            .order_by("queued_at")
            .values_list("pk", flat=True)[:limit]
        )
        if not ids:
            return []
        Job.objects.filter(pk__in=ids, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING,
            attempt=F("attempt") + 1,
            lease_owner=owner,
            heartbeat_at=now,
            started_at=Coalesce(F("started_at"), now),
            attempt_started_at=now,
            time_limit_at=job.time_limit_at,
        )
    return list(
        Job.objects.select_related("project__organization", "model__base")
        .filter(pk__in=ids)
        .order_by("queued_at")
    )


def _fenced(job_pk: int, attempt: int) -> Any:
    return Job.objects.filter(pk=job_pk, attempt=attempt, status=JobStatus.RUNNING)


def _bound_lock_time() -> None:
    """First statement of a worker's fenced transaction. A worker paused inside it (a long GC pause,
    SIGSTOP, a frozen VM) would hold the job's row lock for as long as it sleeps, and the reaper
    (SKIP LOCKED) could never take the job over: PostgreSQL ends such a session after half the
    stale threshold instead. Only for a transaction of our own, never inside a caller's."""
    if len(connection.atomic_blocks) != 1:
        return
    timeout_ms = max(int(settings.JOB_STALE_SECONDS * 500), 1000)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, true)", [str(timeout_ms)]
        )


def heartbeat(job_pk: int, attempt: int, progress: dict[str, Any] | None = None) -> str | None:
    """Writes the heartbeat (and progress). Returns the stop request ("", "cancel", "pause"),
    or None when this attempt no longer owns the job: the caller must stop and write nothing."""
    fields: dict[str, Any] = {"heartbeat_at": timezone.now()}
    if progress is not None:
        fields["progress"] = progress
    if not _fenced(job_pk, attempt).update(**fields):
        return None
    return Job.objects.filter(pk=job_pk).values_list("stop_requested", flat=True).first() or ""


def stop_requested(job_pk: int, attempt: int) -> str | None:
    """A cheap read between heartbeats: the stop request, or None if this attempt is fenced off."""
    row = _fenced(job_pk, attempt).values_list("stop_requested", flat=True).first()
    return None if row is None else row


def requeue(job_pk: int, attempt: int, message: str) -> bool:
    """A transient failure (storage or database hiccup): back to the queue for another attempt,
    or failed once the attempts are used up."""
    now = timezone.now()
    with transaction.atomic():
        _bound_lock_time()
        job = _fenced(job_pk, attempt).select_for_update().first()
        if job is None:
            return False
        if job.attempt >= job.max_attempts:
            job.status, job.finished_at, job.reserved_cost = JobStatus.FAILED, now, 0
            job.error = {"code": "retries_exhausted", "message": message, "param": None}
        else:
            job.status, job.queued_at, job.published_at = JobStatus.QUEUED, now, now
        job.lease_owner = ""
        job.save(
            update_fields=[
                "status",
                "finished_at",
                "error",
                "queued_at",
                "published_at",
                "lease_owner",
                "reserved_cost",
            ]
        )
        JobEvent.objects.create(job=job, level="warn", message=message)
        if job.status == JobStatus.QUEUED:
            transaction.on_commit(lambda: publish(job))
        else:
            _announce(job.pk)
    return True


def add_event(
    job_pk: int,
    attempt: int,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> bool:
    with transaction.atomic():
        _bound_lock_time()
        if not _fenced(job_pk, attempt).select_for_update().exists():
            return False
        JobEvent.objects.create(job_id=job_pk, message=message, level=level, type=type, data=data)
    return True


def add_metrics(job_pk: int, attempt: int, rows: list[tuple[str, dict[str, Any]]]) -> bool:
    """Records a batch of per-step metrics as `metrics` events (message, data), one a step."""
    with transaction.atomic():
        _bound_lock_time()
        if not _fenced(job_pk, attempt).select_for_update().exists():
            return False
        JobEvent.objects.bulk_create(
            [JobEvent(job_id=job_pk, type="metrics", message=message, data=data) for message, data in rows]
        )
    return True


def add_checkpoint(
    job_pk: int,
    attempt: int,
    *,
    step: int,
    epoch: int,
    metrics: dict[str, Any],
    artifact_key: str,
    model_name: str = "",
    trained_tokens: int = 0,
    usage: dict[str, int] | None = None,
    usage_models: dict[str, str] | None = None,
) -> bool:
    """Records a saved checkpoint, which is callable and exportable as a model from this moment: the
    work that produced it (`usage`, the job's running counts) is billed in the same transaction."""
    with transaction.atomic():
        _bound_lock_time()
        job = _fenced(job_pk, attempt).select_for_update(of=("self",)).first()
        if job is None:
            return False
        job.checkpoint_ref = artifact_key
        changed = ["checkpoint_ref", *bill(job, usage or {}, usage_models)]
        job.save(update_fields=changed)
        Checkpoint.objects.update_or_create(
            job_id=job_pk,
            step=step,
            defaults={
                "epoch": epoch,
                "metrics": metrics,
                "artifact_key": artifact_key,
                "fine_tuned_model_checkpoint": model_name,
                "trained_tokens": trained_tokens,
            },
        )
        JobEvent.objects.create(
            job_id=job_pk, message=f"Checkpoint saved at step {step}.", data={"step": step, "epoch": epoch}
        )
        _keep_best_and_last(job_pk)
    return True


def lock_fenced(job_pk: int, attempt: int) -> Job | None:
    """Inside the caller's transaction: the job's row, locked, when `attempt` still owns it."""
    _bound_lock_time()
    return _fenced(job_pk, attempt).select_for_update(of=("self",)).first()


def bill_progress(
    job_pk: int, attempt: int, usage: dict[str, int], usage_models: dict[str, str] | None = None
) -> bool:
    """Bills what a running job's counts added since its last bill (a batch, chunk by chunk), so
    that its spend is on the books while it runs. False when this attempt no longer owns the job."""
    with transaction.atomic():
        job = lock_fenced(job_pk, attempt)
        if job is None:
            return False
        changed = bill(job, usage, usage_models)
        if changed:
            job.save(update_fields=changed)
    return True


def _keep_best_and_last(job_pk: int) -> None:
    """A job keeps two checkpoints: the last (to resume from) and the best by validation loss.
    Each kept one is callable as a model; the others are deleted with their files."""
    from apps.core.storage import delete_prefix
    from apps.registry.actions import register_checkpoint_model
    from apps.registry.models import Model

    checkpoints = list(Checkpoint.objects.filter(job_id=job_pk).order_by("-step"))
    last = checkpoints[0]
    scored = [c for c in checkpoints if isinstance((c.metrics or {}).get("valid_loss"), int | float)]
    best = min(scored, key=lambda c: (c.metrics["valid_loss"], -c.step)) if scored else last
    keep = {last.pk, best.pk}
    job = Job.objects.select_related("organization", "project", "model").get(pk=job_pk)
    for checkpoint in checkpoints:
        if checkpoint.pk in keep:
            register_checkpoint_model(job, checkpoint)
            continue
        key = checkpoint.artifact_key
        Model.objects.filter(
            name=checkpoint.fine_tuned_model_checkpoint, organization=job.organization
        ).delete()
        checkpoint.delete()
        transaction.on_commit(lambda key=key: delete_prefix(key))  # type: ignore[misc]


def finish(
    job_pk: int,
    attempt: int,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    status_reason: str = "",
    usage: dict[str, int] | None = None,
    usage_models: dict[str, str] | None = None,
    message: str | None = None,
    fields: dict[str, Any] | None = None,
    on_finished: Callable[[Job], dict[str, Any] | None] | None = None,
) -> Job | None:
    """running → succeeded | failed | cancelled | paused, with the usage records, in one
    transaction, fenced on the attempt. Returns None (and writes nothing) for a stale attempt.

    A unit in `usage_models` is priced as that model rather than the job's (a distillation's
    teacher).

    `on_finished(job)` runs inside the transaction (e.g. to create the fine-tuned model) and may
    return more job fields to store.
    """
    now = timezone.now()
    with transaction.atomic():
        _bound_lock_time()
        # OF self: a FOR UPDATE over the join would also lock the project and organization rows and
        # deadlock with a fine-tune submission, which locks the organization first (seen under load).
        locked = _fenced(job_pk, attempt).select_for_update(of=("self",))
        if on_finished is not None:  # it reads the project and organization; others need only ids
            locked = locked.select_related("project__organization")
        job = locked.first()
        if job is None:
            return None
        if status == JobStatus.PAUSED and job.stop_requested == STOP_CANCEL:
            # Cancelled while it was pausing, after its worker had read the pause: the cancel wins,
            # as it would have at the next step. The attempt is billed the same either way.
            status, message = JobStatus.CANCELLED, "Job cancelled."
        job.status = status
        job.result = result
        job.error = error
        job.status_reason = status_reason
        job.finished_at = None if status == JobStatus.PAUSED else now
        job.lease_owner = ""
        job.stop_requested = ""
        changed = {
            "status",
            "result",
            "error",
            "status_reason",
            "finished_at",
            "lease_owner",
            "stop_requested",
        }
        for name, value in (fields or {}).items():
            setattr(job, name, value)
            changed.add(name)
        if on_finished is not None:
            for name, value in (on_finished(job) or {}).items():
                setattr(job, name, value)
                changed.add(name)
        # Every attempt that ends bills what it added, a pause too: the pause checkpoint is a model.
        changed.update(bill(job, usage or {}, usage_models))
        # A finished or paused job holds none of the spend cap (a resume is admitted again).
        job.reserved_cost = 0
        changed.add("reserved_cost")
        job.save(update_fields=sorted(changed))  # not the request and the other big columns again
        # An inference request's success is its response: no event row for each of them.
        if job.kind in (JobKind.FINE_TUNE, JobKind.BATCH, JobKind.EVAL_RUN) or status == JobStatus.FAILED:
            level = "error" if status == JobStatus.FAILED else "info"
            JobEvent.objects.create(job=job, level=level, message=message or f"Job {status}.")
        announce(job)
    return job


# `finish` of an inference request that succeeded, as one statement: the job's result and its
# first bill, and the usage records of that bill, fenced on the attempt like `finish`. The records
# are inserted only for a row the UPDATE changed, so neither can be written without the other.
_FINISH_REQUEST = f"""
WITH done AS (
    UPDATE {Job._meta.db_table}
    SET status = %s, result = %s::jsonb, error = NULL, status_reason = '', finished_at = %s,
        lease_owner = '', stop_requested = '', billed_usage = %s::jsonb, billed_cost = %s,
        reserved_cost = 0
    WHERE id = %s AND attempt = %s AND status = %s AND billed_cost = 0 AND billed_usage = '{{}}'::jsonb
    RETURNING id, organization_id, project_id, api_key_id, model_name
)
INSERT INTO {UsageRecord._meta.db_table}
    (job_id, organization_id, project_id, api_key_id, model_name, unit, start, quantity, cost, created_at)
SELECT done.id, done.organization_id, done.project_id, done.api_key_id, done.model_name,
       billed.unit, 0, billed.quantity, billed.cost, %s
FROM done CROSS JOIN jsonb_to_recordset(%s::jsonb) AS billed(unit text, quantity bigint, cost bigint)
RETURNING job_id
"""  # noqa: S608  (the only names formatted in are our own tables')


def finish_request(job: Job, result: dict[str, Any], usage: dict[str, int]) -> bool:
    """running → succeeded for an inference request, with its usage billed: what
    `finish(..., SUCCEEDED, result=..., usage=...)` does, in one round trip instead of six. False
    (and nothing written) for a stale attempt.

    A request is billed once, when it succeeds, so its job has no earlier bill; should one have
    one anyway, or bill nothing, `finish` does the general work."""
    records = [
        (unit, total, cost_of(job.model_name, unit, total)) for unit, total in usage.items() if total > 0
    ]
    if not records:
        return finish(job.pk, job.attempt, JobStatus.SUCCEEDED, result=result, usage=usage) is not None
    now = timezone.now()
    params: tuple[str | int | datetime, ...] = (
        JobStatus.SUCCEEDED,
        json.dumps(result),
        now,
        json.dumps({unit: quantity for unit, quantity, _ in records}),
        sum(cost for _, _, cost in records),
        job.pk,
        job.attempt,
        JobStatus.RUNNING,
        now,
        json.dumps([{"unit": unit, "quantity": quantity, "cost": cost} for unit, quantity, cost in records]),
    )
    with connection.cursor() as cursor:
        cursor.execute(_FINISH_REQUEST, params)
        if cursor.fetchall():
            return True
    return finish(job.pk, job.attempt, JobStatus.SUCCEEDED, result=result, usage=usage) is not None


def usage_key(unit: str, model_name: str) -> str:
    """The key of a job's running count of `unit` used by another model than the job's own (an eval
    run's judges): each model's count starts at 0 and is billed at that model's price."""
    return f"{unit}@{model_name}"


def split_usage_key(key: str) -> tuple[str, str]:
    """`input_tokens@judge` → ("input_tokens", "judge"); a plain unit → (unit, "")."""
    unit, _, model_name = key.partition("@")
    return unit, model_name


def bill(job: Job, usage: dict[str, int], models: dict[str, str] | None = None) -> list[str]:
    """Bills what the job's running counts in `usage` ({unit: count so far, over all attempts})
    added since its last bill; returns the job fields it changed, for the caller to save.

    The caller holds the job's row lock, so bills of one job are strictly one after another: each
    record starts where the last one of its unit ended, and the unique (job, unit, start) makes a
    second record for the same units impossible (a conflicting insert is skipped, not raised). A
    count lower than what is billed (a batch re-run from its first line after a lost attempt) bills
    nothing until it passes it: the same work is never paid twice. A unit in `models` is priced as
    that model rather than the job's (a distillation's teacher). The cost of each record is the
    difference of the rounded costs of the two counts, so the records of a job add up to exactly the
    cost of its total, never a micro-dollar more per record. A key made by `usage_key` counts one
    unit of one other model (unique per job, unit, model and start)."""
    models = models or {}
    billed = dict(job.billed_usage or {})
    records, spent = [], 0
    for key, total in usage.items():
        start = int(billed.get(key, 0))
        if total <= start:
            continue
        unit, name = split_usage_key(key)
        name = name or models.get(unit, job.model_name)
        cost = cost_of(name, unit, total) - cost_of(name, unit, start)
        records.append(
            UsageRecord(
                job=job,
                unit=unit,
                organization_id=job.organization_id,
                project_id=job.project_id,
                api_key_id=job.api_key_id,
                model_name=name,
                start=start,
                quantity=total - start,
                cost=cost,
            )
        )
        billed[key] = total
        spent += cost
    if not records:
        return []
    UsageRecord.objects.bulk_create(records, ignore_conflicts=True)  # one statement for all units
    job.billed_usage = billed
    job.billed_cost += spent
    job.reserved_cost = max(job.reserved_cost - spent, 0)  # what is billed is no longer reserved
    return ["billed_usage", "billed_cost", "reserved_cost"]


def fail_lost(job_pk: int, attempt: int) -> bool:
    job = Job.objects.filter(pk=job_pk).first()
    if job is None:
        return False
    message = (
        f"The worker running this job died {attempt} times (killed or out of memory). "
        "It will not be retried; check the data and hyperparameters, then start a new job."
    )
    return _fail_running(job_pk, attempt, "worker_lost", message)


def _fail_running(job_pk: int, attempt: int, code: str, message: str) -> bool:
    """running (this attempt) → failed with `code`, and the event that says why; for attempts whose
    process is gone, so nothing else will finish them."""
    with transaction.atomic():
        updated = Job.objects.filter(pk=job_pk, attempt=attempt, status=JobStatus.RUNNING).update(
            status=JobStatus.FAILED,
            error={"code": code, "message": message, "param": None},
            finished_at=timezone.now(),
            lease_owner="",
            reserved_cost=0,
        )
        if updated:
            JobEvent.objects.create(job_id=job_pk, level="error", message=message)
            _announce(job_pk)
    return bool(updated)


def time_limit_message(limit: float | None, has_checkpoint: bool) -> str:
    """What the customer reads when a job ran out of time, by the soft limit or the hard one."""
    of = f" of {round(limit)} seconds" if limit else ""
    return f"The job ran past its time limit{of} and was stopped." + (
        " Its checkpoints so far are kept." if has_checkpoint else ""
    )


def fail_time_limit(job_pk: int, attempt: int) -> bool:
    """The pool's hard time limit killed this attempt (its code ignored the soft limit, or was stuck
    in a C call). Celery acks the message of a timed-out task, so nothing redelivers it: the job
    fails with `time_limit` at once, keeping its checkpoints, and is never re-queued."""
    job = Job.objects.filter(pk=job_pk).only("checkpoint_ref", "attempt_started_at", "time_limit_at").first()
    if job is None:
        return False
    limit = None
    if job.time_limit_at is not None and job.attempt_started_at is not None:
        limit = (job.time_limit_at - job.attempt_started_at).total_seconds()
    return _fail_running(job_pk, attempt, "time_limit", time_limit_message(limit, bool(job.checkpoint_ref)))


def _timed_out(now: datetime, *, owner_dead: bool = False) -> QuerySet[Job]:
    """Running jobs whose attempt the hard time limit killed: it beat until its deadline, the deadline
    has passed, and the beats stopped there (or have gone stale since, or the lease holder is gone).

    An attempt whose beats stopped well before its deadline died of something else: a lost worker,
    re-queued as usual. One that keeps beating past its deadline runs on a pool that does not enforce
    time limits: it is alive, and left alone."""
    # A killed attempt's last beat is at most an interval (or two, on a busy machine) before the kill.
    beat_window = timedelta(seconds=2 * settings.JOB_HEARTBEAT_SECONDS) + TIME_LIMIT_GRACE
    beat_until_deadline = Q(status=JobStatus.RUNNING, heartbeat_at__gte=F("time_limit_at") - beat_window)
    if owner_dead:
        return Job.objects.filter(beat_until_deadline, time_limit_at__lte=now)
    stale = now - timedelta(seconds=settings.JOB_STALE_SECONDS)
    stopped = Q(heartbeat_at__lte=F("time_limit_at") + TIME_LIMIT_GRACE) | Q(heartbeat_at__lt=stale)
    return Job.objects.filter(beat_until_deadline, stopped, time_limit_at__lt=now - TIME_LIMIT_GRACE)


# --- Customer side: cancel, pause, resume -------------------------------------------------------
STOP_REFUSAL = "Only owners and admins, and the member who started it, can {verb} this {noun}."


def require_may_stop(actor: User | None, job: Job, verb: str) -> None:
    """Cancelling or pausing stops someone's work: for owners and admins, and for the member who
    started it (its API key's creator, through the API). Members still start and follow jobs."""
    from apps.accounts.actions import require_manager_or_creator

    noun = {JobKind.BATCH: "batch", JobKind.EVAL_RUN: "eval run"}.get(JobKind(job.kind), "job")
    require_manager_or_creator(
        actor, job.organization, job.created_by_id, STOP_REFUSAL.format(verb=verb, noun=noun)
    )


def cancel(job: Job) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    now = timezone.now()
    with transaction.atomic():
        if Job.objects.filter(
            pk=job.pk, status__in=[JobStatus.QUEUED, JobStatus.VALIDATING_FILES, JobStatus.PAUSED]
        ).update(status=JobStatus.CANCELLED, finished_at=now, stop_requested="", reserved_cost=0):
            JobEvent.objects.create(job=job, message="Job cancelled.")
            _announce(job.pk)
        elif Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(stop_requested=STOP_CANCEL):
            JobEvent.objects.create(job=job, message="Cancellation requested; stopping at the next step.")
    # A request whose project was deleted while it waited has no row left to read back.
    return Job.objects.filter(pk=job.pk).first() or job


def request_pause(job: Job) -> bool:
    """Asks a running fine-tune to checkpoint and stop: it reads `pausing` until its worker has
    saved the checkpoint and ended the attempt `paused`. A cancellation already asked for wins: a
    pause over it would keep the job, and its reserved share of the cap, for a later resume. A
    second request while pausing changes nothing (True, and no second event)."""
    if Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, stop_requested=STOP_PAUSE).exists():
        return True
    updated = (
        Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, kind=JobKind.FINE_TUNE)
        .exclude(stop_requested=STOP_CANCEL)
        .update(stop_requested=STOP_PAUSE)
    )
    if updated:
        JobEvent.objects.create(job=job, message="Pause requested; checkpointing at the next step.")
    return bool(updated)


def resume(job: Job, *, reserved_cost: int = 0) -> bool:
    """paused → queued; `apps.jobs.fine_tuning.resume` has admitted it (and reserved its share)."""
    now = timezone.now()
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, status=JobStatus.PAUSED).update(
            # The attempt number only ever grows (it fences writes); a resumed job gets a fresh
            # allowance of attempts on top of the ones it used.
            status=JobStatus.QUEUED,
            queued_at=now,
            published_at=now,
            status_reason="",
            max_attempts=F("attempt") + settings.JOB_MAX_ATTEMPTS,
            reserved_cost=reserved_cost,
        )
        if updated:
            JobEvent.objects.create(job=job, message="Job resumed; continuing from the last checkpoint.")
            job.refresh_from_db()
            transaction.on_commit(lambda: publish(job))
    return bool(updated)


def queue_position(job: Job) -> int | None:
    """1 = next to start. Counted among queued jobs of every tenant on the same queue."""
    if job.status != JobStatus.QUEUED or job.queued_at is None:
        return None
    same_queue_kinds = [JobKind.FINE_TUNE] if job.kind == JobKind.FINE_TUNE else [job.kind]
    ahead = Job.objects.filter(
        status=JobStatus.QUEUED, kind__in=same_queue_kinds, queued_at__lt=job.queued_at
    ).count()
    return ahead + 1


# --- The reaper -------------------------------------------------------------------------------------
REAPER_LAST_RUN_KEY = "reaper:last-run"
REAPER_RESUMED_KEY = "reaper:resumed-at"


def _reaper_watching(now: float) -> bool:
    """Whether the reaper has watched the heartbeats long enough to call a silent job lost.

    A stale heartbeat means a dead worker only if the worker had the time to beat. When the reaper
    itself has not run for longer than a worker may stay silent (the machine or VM was frozen, a
    laptop slept, beat was down), the workers may have been frozen with it: after a freeze, every
    heartbeat is old and the reaper, whose timer is due first, would take every running job from its
    healthy worker. So after such a gap the reaper leaves running jobs alone for that same silence
    allowance, and the workers have the time to beat again. Without Redis it cannot tell, and
    reaps as usual: a broker outage must not stop the recovery of lost jobs."""
    from django.core.cache import cache
    from redis.exceptions import RedisError

    allowance = settings.JOB_STALE_SECONDS - settings.JOB_HEARTBEAT_SECONDS
    try:
        last_run = cache.get(REAPER_LAST_RUN_KEY)
        cache.set(REAPER_LAST_RUN_KEY, now, timeout=None)
        if last_run is not None and now - last_run > settings.JOB_REAPER_INTERVAL_SECONDS + allowance:
            logger.warning(
                "the reaper last ran %.0fs ago; no job is called lost for %gs", now - last_run, allowance
            )
            cache.set(REAPER_RESUMED_KEY, now, timeout=None)
            return False
        resumed = cache.get(REAPER_RESUMED_KEY)
    except RedisError:
        return True
    return resumed is None or now - resumed >= allowance


def reap() -> dict[str, int]:
    """Runs every JOB_REAPER_INTERVAL_SECONDS from beat. Concurrent reapers never handle the same
    job twice (SKIP LOCKED). A dead worker is noticed within stale + interval seconds (plus, right
    after the reaper itself was stopped or frozen, the silence allowance: `_reaper_watching`)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.JOB_STALE_SECONDS)
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "republished": 0, "timed_out": 0}
    watching = _reaper_watching(now.timestamp())
    with transaction.atomic():
        # First the attempts the hard time limit killed: re-queuing them would only hit the limit
        # again, attempt after attempt, and end as `worker_lost`. A cancelled one ends cancelled below.
        for job in _timed_out(now).select_for_update(skip_locked=True).exclude(stop_requested=STOP_CANCEL):
            counts["timed_out"] += fail_time_limit(job.pk, job.attempt)
        lost = (
            Job.objects.select_for_update(skip_locked=True)
            .filter(status=JobStatus.RUNNING)
            .filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, started_at__lt=stale))
        )
        if not watching:
            lost = lost.none()
        for job in lost:
            if job.stop_requested == STOP_CANCEL:
                job.status, job.finished_at, job.reserved_cost = JobStatus.CANCELLED, now, 0
                job.save(update_fields=["status", "finished_at", "reserved_cost"])
                JobEvent.objects.create(job=job, message="Job cancelled (its worker had stopped).")
                _announce(job.pk)
                counts["cancelled"] += 1
            elif job.attempt >= job.max_attempts:
                fail_lost(job.pk, job.attempt)
                counts["failed"] += 1
            else:
                job.status, job.queued_at, job.published_at, job.lease_owner = JobStatus.QUEUED, now, now, ""
                job.save(update_fields=["status", "queued_at", "published_at", "lease_owner"])
                JobEvent.objects.create(
                    job=job,
                    level="warn",
                    message=f"Worker lost during attempt {job.attempt}; re-queued"
                    + (", resuming from the last checkpoint." if job.checkpoint_ref else "."),
                )
                transaction.on_commit(lambda job=job: publish(job))  # type: ignore[misc]
                counts["requeued"] += 1
        queued_cutoff = now - timedelta(seconds=settings.JOB_QUEUED_STALE_SECONDS)
        waiting = Job.objects.select_for_update(skip_locked=True).filter(
            status=JobStatus.QUEUED, published_at__lt=queued_cutoff
        )
        for job in waiting:
            # A queued job that has not started for a while may have lost its message (a broker
            # restart, a failed publish): publish it again. Claiming makes a duplicate harmless.
            Job.objects.filter(pk=job.pk).update(published_at=now)
            transaction.on_commit(lambda job=job: publish(job))  # type: ignore[misc]
            counts["republished"] += 1
    counts["files"] = _republish_stuck_validations(queued_cutoff)
    return counts


def _republish_stuck_validations(cutoff: datetime) -> int:
    """An upload whose validation message was lost (a broker restart) is validated again; the
    validator stores only the first report, so a duplicate is harmless."""
    from django.core.cache import cache

    from apps.projects.actions import queue_validation
    from apps.projects.models import File, FileStatus

    sent = 0
    for file in File.objects.filter(status=FileStatus.UPLOADED, created_at__lt=cutoff)[:100]:
        # At most once per stale period, so a long validation is not started again and again.
        if not cache.add(f"revalidate:{file.public_id}", 1, timeout=int(settings.JOB_QUEUED_STALE_SECONDS)):
            continue
        sent += queue_validation(file)
    return sent
