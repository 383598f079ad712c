"""Jobs survive their workers: cancel mid-run, a killed child, a killed worker node."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from apps.jobs import actions
from apps.jobs.models import Job, JobStatus
from tests.conftest import Worker, sentiment_csv, wait_for
from tests.jobs.test_fine_tune_flow import upload

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SLOW_JOB = {"n_epochs": 6, "batch_size": 2, "learning_rate": 0.001, "early_stopping_patience": 0}


def start_job(api: Any, rows: int = 160) -> str:
    file_id = upload(api, sentiment_csv(rows))
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    response = api.post(
        "/v1/fine_tuning/jobs",
        {"model": "tiny-bert", "training_file": file_id,
         "method": {"type": "classification", "classification": {"hyperparameters": SLOW_JOB}}},
        format="json",
    )  # fmt: skip
    assert response.status_code == 200, response.content
    return str(response.json()["id"])


def job_row(job_id: str) -> Job:
    return Job.objects.get(public_id=job_id)


def reaping_until(job_id: str, statuses: tuple[str, ...], timeout: float) -> Job:
    """Runs the reaper as beat would (every second) until the job reaches one of `statuses`."""

    def check() -> Job | None:
        actions.reap()
        job = job_row(job_id)
        return job if job.status in statuses else None

    return wait_for(check, timeout=timeout, interval=1.0, message=f"{job_id} never reached {statuses}")


def test_cancel_stops_a_running_job_within_seconds(api: Any, celery_worker: Worker, tiny_base: Any) -> None:
    job_id = start_job(api)
    wait_for(lambda: (job_row(job_id).progress or {}).get("step", 0) >= 5, timeout=60)
    response = api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert response.status_code == 200
    job = wait_for(lambda: (j := job_row(job_id)).status == JobStatus.CANCELLED and j, timeout=10)
    # what ran is billed, once
    assert job.trained_tokens and job.trained_tokens > 0
    assert list(job.usage.values_list("unit", flat=True)) == ["trained_tokens"]
    again = api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert again.status_code == 400
    assert again.json()["error"]["message"] == f"Job {job_id} has already cancelled; it cannot be cancelled."


def test_a_killed_child_is_redelivered_and_the_job_resumes(
    api: Any, celery_worker: Worker, tiny_base: Any
) -> None:
    job_id = start_job(api)
    wait_for(lambda: job_row(job_id).checkpoints.exists(), timeout=60, message="no checkpoint")
    children = celery_worker.child_pids()
    assert children
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    job = reaping_until(job_id, (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=120)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempt == 2
    events = list(job.events.order_by("id").values_list("message", flat=True))
    assert any("Attempt 2 started" in m for m in events)
    assert job.usage.count() == 1


def test_a_killed_worker_node_is_reaped_and_a_new_worker_finishes(
    api: Any, celery_worker: Worker, tiny_base: Any
) -> None:
    job_id = start_job(api)
    wait_for(lambda: job_row(job_id).checkpoints.exists(), timeout=60, message="no checkpoint")
    # kill the main process and its children together: no redelivery until the visibility timeout
    pids = [celery_worker.process.pid, *celery_worker.child_pids()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    celery_worker.process.wait()
    replacement = Worker()
    try:
        job = reaping_until(job_id, (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=150)
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.attempt == 2
        assert job.usage.count() == 1
        resumed = job.events.filter(message__contains="resuming from the last checkpoint").exists()
        assert resumed
    finally:
        replacement.stop()


def test_a_poison_job_stops_at_the_attempt_cap(api: Any, celery_worker: Worker, tiny_base: Any) -> None:
    job_id = start_job(api)
    for attempt in range(1, 4):
        wait_for(lambda a=attempt: job_row(job_id).attempt >= a and job_row(job_id).status == JobStatus.RUNNING,
                 timeout=60)  # fmt: skip
        for pid in celery_worker.child_pids():
            os.kill(pid, signal.SIGKILL)
        if attempt < 3:
            reaping_until(job_id, (JobStatus.RUNNING,), timeout=60)
    job = reaping_until(job_id, (JobStatus.FAILED,), timeout=60)
    assert job.error["code"] == "worker_lost"
    assert job.attempt == 3
    assert not job.usage.exists()
