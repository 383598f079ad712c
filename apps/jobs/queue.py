"""Task names the web side sends by name (it never imports worker code), and publishing."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from apps.jobs.models import Job, JobKind

logger = logging.getLogger(__name__)

RUN_FINE_TUNE = "jobs.run_fine_tune"
RUN_INFERENCE = "jobs.run_inference"
RUN_PROXY = "jobs.run_proxy"
RUN_BATCH = "jobs.run_batch"
REAP = "jobs.reap"


def task_for(job: Job) -> str:
    if job.kind == JobKind.FINE_TUNE:
        return RUN_FINE_TUNE
    if job.kind == JobKind.BATCH:
        return RUN_BATCH
    if job.model_name.startswith("openai:"):
        return RUN_PROXY
    return RUN_INFERENCE


def publish(job: Job) -> bool:
    """Sends `(job_id, attempt)` to the job's queue. A broker outage is not an error for the
    caller: the job stays queued in PostgreSQL and the reaper publishes it again later."""
    from saas.celery import app

    try:
        with app.producer_or_acquire() as producer:
            # One connection attempt, not kombu's retries: with the broker down they would hold the
            # web request for ~6 s (measured), and every request that creates a job with it.
            producer.connection.ensure_connection(max_retries=0)
            app.send_task(task_for(job), args=[job.public_id, job.attempt], retry=False, producer=producer)
    except (KombuOperationalError, RedisError, OSError):
        logger.warning("could not publish %s; the reaper will retry", job.public_id, exc_info=True)
        return False
    return True
