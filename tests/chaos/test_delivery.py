"""Message delivery under faults (docs/reliability.md, T3, T5–T8, T10, T11): PostgreSQL decides who runs
a job, so a lost, duplicated or late message never loses a job, runs it twice or bills it twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import transaction

from apps.jobs import actions
from apps.jobs.models import Job, JobKind, JobStatus
from apps.jobs.queue import publish
from tests.chaos.conftest import (
    WORKER_ENV,
    clear_test_broker,
    fine_tune_body,
    finished,
    free_port,
    job_row,
    queue_depth,
    reap_until,
    received,
    signal_worker,
    step_of,
    submit_fine_tune,
    task_runs,
    unacked_count,
    upload,
    use_broker,
)
from tests.conftest import billed, paced, sentiment_csv, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STALE = settings.JOB_STALE_SECONDS
REAPER = settings.JOB_REAPER_INTERVAL_SECONDS


@pytest.fixture(autouse=True)
def _empty_broker() -> None:
    clear_test_broker()


def broker_client() -> Any:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


def attempts_started(job: Job) -> int:
    return job.events.filter(message__startswith="Attempt ").count()


def assert_billed_once(job: Job) -> None:
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert billed(job) == {"trained_tokens": job.trained_tokens}


def assert_billed_for_checkpoints(job: Job) -> None:
    """A job that ended without finishing its work (time limit, lost) is billed for what its saved
    checkpoints hold (each a callable model, billed when saved), never for the work after them."""
    kept = max(job.checkpoints.values_list("trained_tokens", flat=True), default=0)
    assert billed(job).get("trained_tokens", 0) == kept


# --- T3: the negative control -------------------------------------------------------------------
def test_t3_without_reject_on_worker_lost_the_broker_loses_the_job_but_the_reaper_finishes_it(
    api: Any, tiny_base: Any, start_worker: Any
) -> None:
    worker = start_worker({"CELERY_TASK_REJECT_ON_WORKER_LOST": "false"})
    job_id = submit_fine_tune(api, rows=40, epochs=6)
    wait_for(lambda: job_row(job_id).checkpoints.exists(), timeout=90, message="no checkpoint")
    for pid in worker.child_pids():
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    # Celery acks the message of a lost child when reject_on_worker_lost is off: it is gone (M2).
    broker = broker_client()
    wait_for(lambda: "WorkerLostError" in worker.log.read_text(errors="replace"), timeout=10)
    wait_for(
        lambda: queue_depth(broker) == 0 and unacked_count(broker) == 0,
        timeout=5,
        message="the message was not acked",
    )
    time.sleep(1.5)
    assert received(worker) == 1, "the broker redelivered the message"
    assert job_row(job_id).status == JobStatus.RUNNING and job_row(job_id).attempt == 1
    # Only the reaper brings the job back, within the stale bound.
    reap_until(lambda: job_row(job_id).attempt == 2, timeout=STALE + 2 * REAPER + 15)
    recovered_after = time.monotonic() - killed
    job = reap_until(lambda: finished(job_id), timeout=120)
    assert_billed_once(job)
    assert job.attempt == 2
    assert job.events.filter(message__contains="resuming from the last checkpoint").exists()
    assert recovered_after <= STALE + 2 * REAPER + 10, recovered_after
    print(f"T3: message lost with the child; attempt 2 started {recovered_after:.1f}s after the kill")


# Workers whose training steps take at least 0.05 s each (tests/paced.py): a job sized to outlast a
# deadline does so however fast the machine.
PACED = {**paced(train=0.05), "CELERY_WORKER_INCLUDE": f"{WORKER_ENV['CELERY_WORKER_INCLUDE']},tests.paced"}


# --- T5: a job longer than the visibility timeout -------------------------------------------------
def test_t5_a_job_longer_than_the_visibility_timeout_runs_once(
    api: Any, tiny_base: Any, start_workers: Any
) -> None:
    # Misconfigured on purpose: the broker redelivers every unacked message after 2 s.
    env = {"CELERY_VISIBILITY_TIMEOUT": "2", "CELERY_UNACKED_RESTORE_INTERVAL": "1", **PACED}
    first, second = start_workers(2, env)
    job_id = submit_fine_tune(api, rows=120, epochs=3)  # 3 x 54 steps (batch 2) of 0.05 s or more: 8 s
    job = reap_until(lambda: finished(job_id), timeout=150)
    # Celery alone would have run the job again (M4); here every later delivery acks and exits.
    wait_for(
        lambda: received(first) + received(second) == len(task_runs(first) + task_runs(second)), timeout=10
    )
    runs = sorted(task_runs(first) + task_runs(second))
    assert len(runs) >= 2, f"the broker never redelivered the message: {runs}"
    assert all(seconds < 1.0 for seconds in runs[:-1]), runs
    print(f"T5: {len(runs)} deliveries, runs took {runs}")
    started = job.started_at
    assert started is not None and job.finished_at is not None
    assert (job.finished_at - started).total_seconds() > 2 * 2, (
        "the job was shorter than the visibility timeout"
    )
    assert job.attempt == 1 and attempts_started(job) == 1
    assert_billed_once(job)


# --- T6: the soft time limit ---------------------------------------------------------------------
def test_t6_a_job_past_its_soft_time_limit_fails_cleanly_and_the_next_job_runs(
    api: Any, tiny_base: Any, start_worker: Any
) -> None:
    soft = 12
    start_worker({"GPU_TASK_SOFT_TIME_LIMIT": str(soft), **PACED})  # the long job lasts minutes
    long_file, short_file = upload(api, sentiment_csv(400)), upload(api, sentiment_csv(40))
    long_id = submit_fine_tune(api, epochs=50, file_id=long_file)
    job = reap_until(lambda: finished(long_id), timeout=soft + 60)
    assert job.status == JobStatus.FAILED
    assert job.error["code"] == "time_limit"
    assert f"time limit of {soft} seconds" in job.error["message"]
    assert job.started_at is not None and job.finished_at is not None
    assert (job.finished_at - job.started_at).total_seconds() < soft + 5
    if job.checkpoint_ref:
        assert "checkpoints so far are kept" in job.error["message"]
        assert job.checkpoints.exists()
    assert_billed_for_checkpoints(job)
    next_id = submit_fine_tune(api, epochs=1, file_id=short_file)  # the free plan runs one at a time
    following = reap_until(lambda: finished(next_id), timeout=90)
    assert_billed_once(following)
    # a timeout is terminal: never redelivered, never re-queued by the reaper
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempt == 1


def test_t6_a_job_past_its_hard_time_limit_fails_at_once_and_the_next_job_runs(
    api: Any, tiny_base: Any, start_worker: Any
) -> None:
    soft, hard = 4, 12
    # This worker's children ignore the soft limit: only the hard limit can stop the job.
    include = f"{PACED['CELERY_WORKER_INCLUDE']},tests.chaos.ignore_soft_limit"
    worker = start_worker(
        {
            **PACED,
            "GPU_TASK_SOFT_TIME_LIMIT": str(soft),
            "GPU_TASK_TIME_LIMIT": str(hard),
            "CELERY_WORKER_INCLUDE": include,
        }
    )
    long_file, short_file = upload(api, sentiment_csv(120)), upload(api, sentiment_csv(40))
    long_id = submit_fine_tune(api, epochs=50, file_id=long_file)  # 50 x 54 paced steps: minutes
    job = reap_until(lambda: finished(long_id), timeout=hard + 60)
    assert f"Hard time limit ({hard}s) exceeded for jobs.run_fine_tune" in worker.log.read_text(
        errors="replace"
    )
    assert job.status == JobStatus.FAILED, job.error
    assert job.error["code"] == "time_limit"
    assert f"time limit of {hard} seconds" in job.error["message"]
    assert "checkpoints so far are kept" in job.error["message"] and job.checkpoints.exists()
    # failed in its first attempt: never re-queued by the reaper, never redelivered by the broker
    assert job.attempt == 1 and attempts_started(job) == 1
    assert_billed_for_checkpoints(job)
    broker = broker_client()
    assert queue_depth(broker) == 0 and unacked_count(broker) == 0
    # the pool replaced the killed child, and the replacement serves the next job
    next_id = submit_fine_tune(api, epochs=1, file_id=short_file)
    assert_billed_once(reap_until(lambda: finished(next_id), timeout=90))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempt == 1
    assert received(worker) == 2


# --- T7: deploy signals --------------------------------------------------------------------------
def test_t7_sigterm_then_a_new_worker_the_job_resumes_and_is_billed_once(
    api: Any, tiny_base: Any, start_worker: Any
) -> None:
    old = start_worker()
    job_id = submit_fine_tune(api, rows=40, epochs=8)
    wait_for(lambda: job_row(job_id).checkpoints.exists(), timeout=90, message="no checkpoint")
    os.kill(old.process.pid, signal.SIGTERM)  # warm shutdown: the running task may finish...
    # ...within an orchestrator's grace period (docker stop -t 3); then the old node is killed.
    grace = threading.Timer(3, lambda: old.process.poll() is None and signal_worker(old, signal.SIGKILL))
    grace.start()
    time.sleep(2)
    new = start_worker()
    grace.join()
    ready = time.monotonic()
    job = reap_until(lambda: finished(job_id), timeout=150)
    assert_billed_once(job)
    if job.attempt == 2:  # not finished within the grace period: resumed on the new worker
        assert job.events.filter(message__contains="resuming from the last checkpoint").exists()
        assert received(new) >= 1
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()
    assert time.monotonic() - ready < 150


def test_t7_sigquit_restores_the_message_and_the_new_worker_resumes_at_once(
    api: Any, tiny_base: Any, start_worker: Any
) -> None:
    old = start_worker({"CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "0"})
    job_id = submit_fine_tune(api, rows=40, epochs=8)
    wait_for(lambda: job_row(job_id).checkpoints.exists(), timeout=90, message="no checkpoint")
    checkpoint_steps = set(job_row(job_id).checkpoints.values_list("step", flat=True))
    os.kill(old.process.pid, signal.SIGQUIT)  # cold shutdown
    old.process.wait(timeout=30)
    assert "Restoring 1 unacknowledged message" in old.log.read_text(errors="replace")
    time.sleep(2)
    new = start_worker()
    ready = time.monotonic()
    # the restored message and the dead child's lease let the new worker take over at once
    wait_for(lambda: job_row(job_id).attempt == 2, timeout=10, message="the job did not resume within 10 s")
    resumed_after = time.monotonic() - ready
    print(f"T7 SIGQUIT: resumed {resumed_after:.1f}s after the new worker was ready")
    job = reap_until(lambda: finished(job_id), timeout=150)
    assert_billed_once(job)
    assert job.attempt == 2 and received(new) >= 1
    assert resumed_after < 10
    # it resumed from the last checkpoint: at most one checkpoint interval is repeated
    first_step_after = min(
        (e.data or {}).get("step", 10**9)
        for e in job.events.filter(type="metrics", id__gt=job.events.get(message__startswith="Attempt 2").id)
    )
    assert first_step_after > max(checkpoint_steps)
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()


# --- T8: a zombie worker ---------------------------------------------------------------------------
def snapshot(job_id: str) -> dict[str, Any]:
    job = job_row(job_id)
    return {
        "row": {
            f: getattr(job, f)
            for f in (
                "status",
                "attempt",
                "progress",
                "checkpoint_ref",
                "heartbeat_at",
                "result",
                "error",
                "trained_tokens",
                "fine_tuned_model_id",
            )
        },
        "checkpoints": list(job.checkpoints.order_by("step").values_list("step", "artifact_key", "metrics")),
        "events": job.events.count(),
        "usage": list(job.usage.values_list("unit", "quantity", "cost")),
    }


def test_t8_a_zombie_worker_changes_nothing_when_it_wakes_up(
    api: Any, tiny_base: Any, start_workers: Any
) -> None:
    workers = start_workers(2)
    job_id = submit_fine_tune(api, rows=40, epochs=8)
    wait_for(lambda: job_row(job_id).checkpoints.exists(), timeout=90, message="no checkpoint")
    owner_pid = int(job_row(job_id).lease_owner.rpartition(":")[2])
    zombie = next(w for w in workers if owner_pid in w.child_pids())
    other = next(w for w in workers if w is not zombie)
    signal_worker(zombie, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # the reaper gives the job to the other worker, which finishes it
        reap_until(lambda: job_row(job_id).attempt == 2, timeout=STALE + 2 * REAPER + 15)
        job = reap_until(lambda: finished(job_id), timeout=150)
        assert_billed_once(job)
        time.sleep(max(0.0, STALE + 5 - (time.monotonic() - stopped)))  # stopped for stale + 5 s at least
        before = snapshot(job_id)
    finally:
        signal_worker(zombie, signal.SIGCONT)
    woke = time.monotonic()
    # attempt 1 wakes up: fenced (or its next write fails), it stops and ends its task
    wait_for(lambda: len(task_runs(zombie)) == 1, timeout=30, message="the zombie never ended its task")
    assert time.monotonic() - woke < 10
    time.sleep(1)
    assert snapshot(job_id) == before
    assert received(other) >= 1
    job = job_row(job_id)
    assert job.attempt == 2
    assert job.fine_tuned_model is not None
    assert_billed_once(job)


# --- T10: publish atomicity ----------------------------------------------------------------------
def test_t10a_a_job_created_in_a_rolled_back_transaction_leaves_no_row_and_no_message(
    alice_project: Any,
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        actions.create_job(kind=JobKind.FINE_TUNE, project=alice_project, model_name="tiny-bert", request={})
        raise RuntimeError("the request failed after creating the job")
    assert not Job.objects.exists()
    broker = broker_client()
    assert queue_depth(broker, "gpu") == 0 and queue_depth(broker, "default") == 0


def test_t10b_a_job_submitted_while_the_broker_is_down_runs_once_it_is_back(
    api: Any, tiny_base: Any, start_worker: Any
) -> None:
    start_worker()
    file_id = upload(api, sentiment_csv(40))
    broker = broker_client()
    with use_broker(f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens there
        began = time.monotonic()
        response = api.post("/v1/fine_tuning/jobs", fine_tune_body(file_id, epochs=1), format="json")
        took = time.monotonic() - began
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "queued"
    assert took < 3, f"the request waited {took:.1f}s for the broker"
    job_id = response.json()["id"]
    assert queue_depth(broker) == 0
    back = time.monotonic()
    reap_until(
        lambda: job_row(job_id).status != JobStatus.QUEUED, timeout=settings.JOB_QUEUED_STALE_SECONDS + 15
    )
    published_after = time.monotonic() - back
    assert published_after <= settings.JOB_QUEUED_STALE_SECONDS + 2 * REAPER + 8
    print(
        f"T10b: POST answered in {took:.2f}s with the broker down; started {published_after:.1f}s after it was back"
    )
    job = reap_until(lambda: finished(job_id), timeout=90)
    assert_billed_once(job)
    assert job.attempt == 1


# --- T11: duplicates --------------------------------------------------------------------------------
def test_t11_duplicate_submissions_and_duplicate_messages_run_once(
    alice_key: str, api: Any, tiny_base: Any, live_server: Any, start_worker: Any
) -> None:
    worker = start_worker(concurrency=2)
    file_id = upload(api, sentiment_csv(40))
    body = fine_tune_body(file_id, epochs=2)
    headers = {"Authorization": f"Bearer {alice_key}", "Idempotency-Key": "chaos-t11"}
    responses: list[httpx.Response] = []
    lock = threading.Lock()
    gate = threading.Barrier(5)

    def post() -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            gate.wait()
            response = client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=post) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert all(r.json() == responses[0].json() for r in responses)  # the first, then four replays
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 4
    assert Job.objects.count() == 1
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        other = client.post("/v1/fine_tuning/jobs", json=fine_tune_body(file_id, epochs=3), headers=headers)
    assert other.status_code in (400, 409, 422) and other.json()["error"]["code"] == "idempotency_key_reused"
    # the same (job_id, attempt) message published a second time: both copies run at once on two
    # children, one claims the job and the other acks and exits
    job = Job.objects.get()
    assert publish(job)
    done = reap_until(lambda: finished(job.public_id), timeout=120)
    assert_billed_once(done)
    assert done.attempt == 1 and attempts_started(done) == 1
    wait_for(lambda: len(task_runs(worker)) == 2, timeout=10)
    assert received(worker) == 2
    assert min(task_runs(worker)) < 1.0
    assert step_of(done.public_id) > 0
