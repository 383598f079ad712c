"""Broker failures (docs/reliability.md, T12), each against a private Redis the test kills and restarts:
PostgreSQL keeps the jobs, so an emptied broker costs a re-publish, never a job."""

from __future__ import annotations

import time
from typing import Any

import pytest

from apps.jobs.models import Job, JobStatus
from apps.jobs.queue import publish
from tests.chaos.conftest import (
    RedisServer,
    finished,
    job_row,
    queue_depth,
    reap_until,
    received,
    submit_fine_tune,
    unacked_count,
    use_broker,
)
from tests.conftest import billed, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def classify_job(project: Any, model: Any, text: str) -> Job:
    """A small classification job on the gpu queue, as /v1/classifications creates it (without
    waiting for the result)."""
    from apps.jobs import inference

    parsed_model, request = inference.parse_classification(project, {"model": model.name, "input": [text]})
    return inference.submit(project, parsed_model, request)


def test_t12a_redis_killed_during_a_job_restarts_empty_and_the_reaper_republishes(
    api: Any, tiny_base: Any, private_redis: RedisServer, start_worker: Any
) -> None:
    with use_broker(private_redis.url()):
        worker = start_worker({"REDIS_URL": private_redis.url()})
        job_id = submit_fine_tune(api, rows=40, epochs=8)
        wait_for(lambda: job_row(job_id).checkpoints.exists(), timeout=90, message="no checkpoint")
        private_redis.kill()  # no persistence: the message (queued or unacked) is gone
        time.sleep(3)
        private_redis.start()
        back = time.monotonic()
        broker = private_redis.client()
        assert queue_depth(broker) == 0 and unacked_count(broker) == 0
        # Celery alone loses the job here (M8); the reaper re-publishes it from PostgreSQL.
        job = reap_until(lambda: finished(job_id), timeout=120)
        took = time.monotonic() - back
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert billed(job) == {"trained_tokens": job.trained_tokens}
    assert job.attempt <= 2
    if job.attempt == 2:
        assert job.events.filter(message__contains="resuming from the last checkpoint").exists()
    assert received(worker) >= 1
    print(f"T12a: job finished {took:.1f}s after Redis came back empty (attempt {job.attempt})")


def test_t12b_queued_jobs_survive_a_clean_redis_restart_and_run_exactly_once(
    alice_project: Any, tiny_classifier: Any, persistent_redis: RedisServer, start_worker: Any
) -> None:
    count = 20
    with use_broker(persistent_redis.url()):
        jobs = [
            classify_job(alice_project, tiny_classifier, f"the app crashed again #{i}") for i in range(count)
        ]
        broker = persistent_redis.client()
        assert queue_depth(broker) == count
        persistent_redis.shutdown()  # `redis-cli shutdown`: the append-only file is flushed
        persistent_redis.start()
        broker = persistent_redis.client()
        assert queue_depth(broker) == count
        worker = start_worker({"REDIS_URL": persistent_redis.url()})
        # no reaper here: every job runs from the message the broker kept
        wait_for(
            lambda: Job.objects.filter(status=JobStatus.SUCCEEDED).count() == count,
            timeout=120,
            message="not every queued job ran",
        )
    done = Job.objects.filter(pk__in=[j.pk for j in jobs])
    assert sorted(done.values_list("attempt", flat=True)) == [1] * count
    assert received(worker, "jobs.run_inference") == count
    for job in done:
        assert sorted(job.usage.values_list("unit", flat=True)) == ["classified_texts", "input_tokens"]


def test_t12c_an_idle_worker_consumes_again_soon_after_redis_restarts(
    alice_project: Any, tiny_classifier: Any, private_redis: RedisServer, start_worker: Any
) -> None:
    with use_broker(private_redis.url()):
        start_worker({"REDIS_URL": private_redis.url()})
        first = classify_job(alice_project, tiny_classifier, "warm the model cache")
        wait_for(lambda: job_row(first.public_id).status == JobStatus.SUCCEEDED, timeout=60)
        private_redis.kill()
        time.sleep(3)
        private_redis.start()
        back = time.monotonic()
        job = classify_job(alice_project, tiny_classifier, "is anyone listening?")
        # our own publish may meet a stale connection once: the job waits in PostgreSQL, so retry
        wait_for(
            lambda: (
                queue_depth(private_redis.client()) > 0
                or job_row(job.public_id).status != "queued"
                or publish(job_row(job.public_id))
            ),
            timeout=10,
        )
        wait_for(
            lambda: job_row(job.public_id).status == JobStatus.SUCCEEDED,
            timeout=15,
            message="the worker did not consume within 15 s of Redis returning",
        )
        took = time.monotonic() - back
    assert took <= 15
    print(f"T12c: task consumed and done {took:.1f}s after Redis returned")
