"""Task names the web side sends by name (it never imports worker code), and publishing."""

from __future__ import annotations

from apps.core.broker import send_now
from apps.jobs.models import Job, JobKind

RUN_FINE_TUNE = "jobs.run_fine_tune"
RUN_INFERENCE = "jobs.run_inference"
RUN_PROXY = "jobs.run_proxy"
RUN_BATCH = "jobs.run_batch"
# A batch whose every request goes to OpenAI waits on the network: it holds no gpu worker.
RUN_PROXY_BATCH = "jobs.run_proxy_batch"


def task_for(job: Job) -> str:
    if job.kind == JobKind.FINE_TUNE:
        return RUN_FINE_TUNE
    if job.kind == JobKind.BATCH:
        return RUN_PROXY_BATCH if job.model_name.startswith("openai:") else RUN_BATCH
    if job.model_name.startswith("openai:"):
        return RUN_PROXY
    return RUN_INFERENCE


def publish(job: Job) -> bool:
    """Sends `(job_id, attempt)` to the job's queue. A broker outage is not an error for the
    caller: the job stays queued in PostgreSQL and the reaper publishes it again later."""
    return send_now(task_for(job), [job.public_id, job.attempt])
