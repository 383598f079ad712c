"""Celery tasks: thin adapters between job rows and the ML runtime (docs/architecture.md,
"The Django ↔ ML boundary").

Tasks take primitive ids, re-fetch, return quietly if the row is gone or already handled, call
one function, and record the outcome. Heavy imports (torch, transformers) happen inside task
bodies, so importing this module stays cheap and torch-free.
"""

from __future__ import annotations

import math
import socket
from typing import Any

from celery import shared_task
from celery.signals import task_postrun, task_prerun, worker_process_init
from django.conf import settings
from django.db import close_old_connections

from apps.billing.stripe_api import BillingUnavailable
from apps.core import tasks


@task_prerun.connect
@task_postrun.connect
def close_old_database_connections(**_: Any) -> None:
    """What Django does around each web request, around each task: a connection that is broken,
    left inside a transaction, or older than CONN_MAX_AGE is closed; the others are reused (and
    health-checked before their next use). See `CELERY_DB_REUSE_MAX` in saas/celery.py."""
    close_old_connections()


@worker_process_init.connect
def limit_torch_threads(**_: Any) -> None:
    """CPU workers that share a host run better with few threads each (WORKER_TORCH_THREADS)."""
    if settings.WORKER_TORCH_THREADS:
        import torch

        torch.set_num_threads(settings.WORKER_TORCH_THREADS)


@shared_task(
    name=tasks.PING, queue=tasks.QUEUE_OF[tasks.PING], ignore_result=False, soft_time_limit=10, time_limit=20
)
def ping(payload: Any = None) -> dict[str, Any]:
    """Answers with the host and the payload: proves a real worker consumed the message."""
    return {"pong": payload, "host": socket.gethostname()}


@shared_task(
    name=tasks.VALIDATE_FILE,
    queue=tasks.QUEUE_OF[tasks.VALIDATE_FILE],
    soft_time_limit=30 * 60,
    time_limit=32 * 60,
)
def validate_file(file_id: str) -> None:
    """Streams an upload through the validator and stores the report (first report wins)."""
    from apps.projects.actions import record_validation
    from apps.projects.models import File, FileStatus, Project
    from apps.projects.validation import validate_stream

    file = File.objects.filter(public_id=file_id, status=FileStatus.UPLOADED).first()
    if file is None:
        return  # deleted, or a redelivery after the report was stored
    with file.content.open("rb") as handle:
        report = validate_stream(
            handle.chunks(), file.purpose, filename=file.filename, column_mapping=file.column_mapping
        )
    from django.db import transaction

    from apps.webhooks.actions import announce_file

    with transaction.atomic():  # the outcome and its webhook event commit together
        # The project first, as deleting a project locks it and then its files: taking the file
        # first and the project (the event's key) second deadlocked with a deletion.
        Project.objects.select_for_update(no_key=True).filter(pk=file.project_id).first()
        recorded = record_validation(file_id, dict(report))
        if recorded:
            announce_file(file.project_id, file_id, processed=report["valid"])
    if recorded:
        from apps.jobs.fine_tuning import on_file_validated

        file.refresh_from_db()
        on_file_validated(file)


@shared_task(
    name=tasks.RUN_FINE_TUNE,
    queue=tasks.QUEUE_OF[tasks.RUN_FINE_TUNE],
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def run_fine_tune(job_id: str, attempt: int | None = None) -> None:
    """Claims the job (a duplicate delivery claims nothing and exits) and runs it."""
    from workers.runners.attempt import run_claimed
    from workers.runners.finetune import run_fine_tune as run

    run_claimed(job_id, run)


@shared_task(name=tasks.REAP, queue=tasks.QUEUE_OF[tasks.REAP], soft_time_limit=60, time_limit=90)
def reap() -> dict[str, int]:
    """Everything whose message may have been lost: jobs, file validations, Stripe events."""
    from apps.billing.webhooks import resend_unprocessed_events
    from apps.jobs.actions import reap as reap_jobs

    counts = reap_jobs()
    counts["stripe_events"] = resend_unprocessed_events()
    return counts


@shared_task(
    name=tasks.RUN_INFERENCE, queue=tasks.QUEUE_OF[tasks.RUN_INFERENCE], soft_time_limit=600, time_limit=660
)
def run_inference(job_id: str, attempt: int | None = None) -> None:
    """A chat, completion, classification or embedding request (a generation request with any
    same-model ones waiting)."""
    from workers.runners.attempt import run_claimed
    from workers.runners.inference import run_inference as run

    run_claimed(job_id, run, with_files=False)


@shared_task(name=tasks.RUN_PROXY, queue=tasks.QUEUE_OF[tasks.RUN_PROXY], soft_time_limit=300, time_limit=330)
def run_proxy(job_id: str, attempt: int | None = None) -> None:
    from workers.runners.attempt import run_claimed
    from workers.runners.inference import run_proxy as run

    run_claimed(job_id, run)


@shared_task(
    name=tasks.RUN_BATCH,
    queue=tasks.QUEUE_OF[tasks.RUN_BATCH],
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def run_batch(job_id: str, attempt: int | None = None) -> None:
    from workers.runners.attempt import run_claimed
    from workers.runners.batch import run_batch as run

    run_claimed(job_id, run)


@shared_task(
    name=tasks.RUN_PROXY_BATCH,
    queue=tasks.QUEUE_OF[tasks.RUN_PROXY_BATCH],
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def run_proxy_batch(job_id: str, attempt: int | None = None) -> None:
    """A batch of `openai:*` requests: the same runner, on a worker that does not hold a GPU."""
    from workers.runners.attempt import run_claimed
    from workers.runners.batch import run_batch as run

    run_claimed(job_id, run)


@shared_task(
    name=tasks.RUN_EVAL,
    queue=tasks.QUEUE_OF[tasks.RUN_EVAL],
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def run_eval(job_id: str, attempt: int | None = None) -> None:
    """An eval run: samples (a completions run) and grades each item."""
    from workers.runners.attempt import run_claimed
    from workers.runners.evals import run_eval as run

    run_claimed(job_id, run)


@shared_task(
    name=tasks.RUN_PROXY_EVAL,
    queue=tasks.QUEUE_OF[tasks.RUN_PROXY_EVAL],
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def run_proxy_eval(job_id: str, attempt: int | None = None) -> None:
    """An eval run that calls only `openai:*` models, or none: the same runner, on a worker that
    does not hold a GPU."""
    from workers.runners.attempt import run_claimed
    from workers.runners.evals import run_eval as run

    run_claimed(job_id, run)


@shared_task(
    name=tasks.START_PARITY_RUN,
    queue=tasks.QUEUE_OF[tasks.START_PARITY_RUN],
    bind=True,
    max_retries=tasks.PARITY_WAIT_TRIES,
    soft_time_limit=60,
    time_limit=90,
)
def start_parity_run(self: Any, job_id: str) -> str:
    """An imported job's parity run, tried again every settings.PARITY_RETRY_SECONDS while the plan's places
    for batches and eval runs are all taken (a day at most)."""
    from apps.evals import parity
    from apps.jobs.models import Job

    job = Job.objects.select_related("fine_tuned_model").filter(public_id=job_id).first()
    outcome = parity.start_new_model_run(job, waited=True) if job is not None else "none"
    if outcome == "waiting":
        if self.request.retries >= tasks.PARITY_WAIT_TRIES:
            assert job is not None
            parity.gave_up(job)
            return "refused"
        raise self.retry(countdown=settings.PARITY_RETRY_SECONDS)
    return outcome


# --- Billing (apps/billing) --------------------------------------------------------------------------
@shared_task(
    name=tasks.PROCESS_STRIPE_EVENT,
    queue=tasks.QUEUE_OF[tasks.PROCESS_STRIPE_EVENT],
    # Two Stripe calls at most, each 10 s and two SDK retries: well inside these.
    soft_time_limit=120,
    time_limit=150,
    # Only Stripe being unreachable or failing can succeed on retry: 1, 2, 4 ... s apart (jittered,
    # at most 2 min). Any other error is kept on the event, and the reaper sends it again later.
    autoretry_for=(BillingUnavailable,),
    retry_backoff=True,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=6,
)
def process_stripe_event(event_id: str) -> str:
    """Re-fetches and applies a recorded webhook event; a repeat applies nothing."""
    from apps.billing.webhooks import process_recorded_event

    return process_recorded_event(event_id)


# The periodic ones: no retries here; each run picks up what the last one left.
@shared_task(
    name=tasks.REPORT_USAGE, queue=tasks.QUEUE_OF[tasks.REPORT_USAGE], soft_time_limit=240, time_limit=300
)
def report_usage() -> dict[str, int]:
    """Fills the meter-event outbox from closed hours of usage and sends the unsent rows to Stripe."""
    from apps.billing.meters import report_usage as run

    return run()


@shared_task(
    name=tasks.RECONCILE_STRIPE_EVENTS,
    queue=tasks.QUEUE_OF[tasks.RECONCILE_STRIPE_EVENTS],
    soft_time_limit=600,
    time_limit=660,
)
def reconcile_stripe_events() -> dict[str, int]:
    """Processes the Stripe events of the last 30 days that were never delivered to the webhook."""
    from apps.billing.webhooks import reconcile_missed_events

    return reconcile_missed_events()


@shared_task(
    name=tasks.CHECK_SPEND_ALERTS,
    queue=tasks.QUEUE_OF[tasks.CHECK_SPEND_ALERTS],
    soft_time_limit=120,
    time_limit=150,
)
def check_spend_alerts() -> int:
    """Emails owners and admins of organizations whose month spend passed their alert threshold."""
    from apps.billing.actions import check_spend_alerts as run

    return run()


# The soft limit stops an answer that trickles in past the delivery timeout (each read has its own
# timeout, the whole does not); the attempt is then recorded as failed. Its lease outlasts the hard
# limit (apps.webhooks.actions.lease_seconds).
@shared_task(
    name=tasks.DELIVER_WEBHOOK,
    queue=tasks.QUEUE_OF[tasks.DELIVER_WEBHOOK],
    soft_time_limit=math.ceil(settings.WEBHOOK_TIMEOUT_SECONDS) + 5,
    time_limit=math.ceil(settings.WEBHOOK_TIMEOUT_SECONDS) + 10,
)
def deliver_webhook(delivery_id: int) -> str:
    """One attempt of one webhook delivery; a failure is retried by the sweep at its backoff time,
    not by Celery (whose countdowns a Redis broker can lose or run twice)."""
    from apps.webhooks.actions import deliver

    return deliver(delivery_id)


@shared_task(
    name=tasks.SEND_DUE_WEBHOOKS,
    queue=tasks.QUEUE_OF[tasks.SEND_DUE_WEBHOOKS],
    soft_time_limit=60,
    time_limit=90,
)
def send_due_webhooks() -> int:
    """Queues the webhook deliveries whose retry is due, and any whose message was lost."""
    from apps.webhooks.actions import send_due

    return send_due()
