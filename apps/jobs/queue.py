"""Publishing a job to the task that runs it, by name (apps.core.tasks): the web side never
imports worker code."""

from __future__ import annotations

from apps.core.broker import send_now
from apps.core.tasks import (
    RUN_BATCH,
    RUN_EVAL,
    RUN_FINE_TUNE,
    RUN_INFERENCE,
    RUN_PROXY,
    RUN_PROXY_BATCH,
    RUN_PROXY_EVAL,
)
from apps.jobs.models import Job, JobKind


def task_for(job: Job) -> str:
    if job.kind == JobKind.FINE_TUNE:
        return RUN_FINE_TUNE
    if job.kind == JobKind.BATCH:
        return RUN_PROXY_BATCH if job.model_name.startswith("openai:") else RUN_BATCH
    if job.kind == JobKind.EVAL_RUN:
        return RUN_EVAL if job.request.get("local") else RUN_PROXY_EVAL
    if job.model_name.startswith("openai:"):
        return RUN_PROXY
    return RUN_INFERENCE


def publish(job: Job) -> bool:
    """Sends `(job_id, attempt)` to the job's queue. A broker outage is not an error for the
    caller: the job stays queued in PostgreSQL and the reaper publishes it again later."""
    return send_now(task_for(job), [job.public_id, job.attempt])
