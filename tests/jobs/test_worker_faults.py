"""Jobs survive their workers: cancel mid-run, a killed child, a killed worker node, a job that
runs out of memory."""

from __future__ import annotations

import os
import re
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.jobs import actions
from apps.jobs.models import Job, JobStatus
from tests.conftest import TINY_DIR, Worker, billed, purge_queues, sentiment_csv, wait_for, worker_env
from tests.jobs.test_fine_tune_flow import upload

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SLOW_JOB = {"n_epochs": 6, "batch_size": 2, "learning_rate": 0.001, "early_stopping_patience": 0}


def start_job(api: Any, rows: int = 160, model: str = "tiny-bert", hyperparameters: Any = None) -> str:
    file_id = upload(api, sentiment_csv(rows))
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    hp = hyperparameters or SLOW_JOB
    response = api.post(
        "/v1/fine_tuning/jobs",
        {
            "model": model,
            "training_file": file_id,
            "method": {"type": "classification", "classification": {"hyperparameters": hp}},
        },
        format="json",
    )
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
    assert billed(job) == {"trained_tokens": job.trained_tokens}
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
    assert billed(job) == {"trained_tokens": job.trained_tokens}  # the resumed work is not billed twice


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
        assert billed(job) == {"trained_tokens": job.trained_tokens}
        resumed = job.events.filter(message__contains="resuming from the last checkpoint").exists()
        assert resumed
    finally:
        replacement.stop()


def test_a_poison_job_stops_at_the_attempt_cap(api: Any, celery_worker: Worker, tiny_base: Any) -> None:
    job_id = start_job(api)
    for attempt in range(1, 4):
        wait_for(
            lambda a=attempt: job_row(job_id).attempt >= a and job_row(job_id).status == JobStatus.RUNNING,
            timeout=60,
        )
        for pid in celery_worker.child_pids():
            os.kill(pid, signal.SIGKILL)
        if attempt < 3:
            reaping_until(job_id, (JobStatus.RUNNING,), timeout=60)
    job = reaping_until(job_id, (JobStatus.FAILED,), timeout=60)
    assert job.error["code"] == "worker_lost"
    assert job.attempt == 3
    # billed for what its checkpoints kept (they are callable models), never for the lost work
    kept = max(job.checkpoints.values_list("trained_tokens", flat=True), default=0)
    assert billed(job).get("trained_tokens", 0) == kept


# --- T4, the memory variant: a job larger than the worker's address space -------------------------
MiB = 1024 * 1024
# 1M embedding rows of 32 floats: 128 MiB of weights. Training needs about three times that again
# (gradients and the optimizer's two moments), more than the 512 MiB the worker child may add.
WIDE_VOCAB = 1_000_000


@pytest.fixture(scope="session")
def wide_bert_dir() -> Path:
    pytest.importorskip("torch")
    from tests.tiny_models import build_tiny_bert

    path = TINY_DIR / "wide-bert"
    if not (path / "model.safetensors").exists():
        build_tiny_bert(path, vocab_size=WIDE_VOCAB)
    return path


@pytest.fixture
def wide_base(db: None, wide_bert_dir: Path) -> Any:
    from apps.registry.models import Model

    return Model.objects.create(
        name="wide-bert",
        task="classification",
        artifact_key=f"local:{wide_bert_dir}",
        context_length=128,
        is_fine_tunable=True,
        limits={"max_seq_length": 128, "methods": ["classification"], "servable": False},
    )


@pytest.fixture
def torch_worker(transactional_db: None) -> Iterator[Worker]:
    """A worker whose main process imports torch before forking, so its child's address space
    already holds torch when the test caps it."""
    purge_queues()
    worker = Worker(
        env=worker_env({"CELERY_WORKER_INCLUDE": "workers.runtime.training", "MKL_NUM_THREADS": "1"})
    )
    try:
        yield worker
    finally:
        worker.stop()


def cap_address_space(pid: int, headroom: int) -> None:
    """RLIMIT_AS of a running process (ours): what it maps now plus `headroom` bytes."""
    mapped_kib = re.search(r"VmSize:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert mapped_kib is not None
    limit = int(mapped_kib[1]) * 1024 + headroom
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


def test_a_job_past_the_workers_memory_limit_fails_once_with_a_clear_error(
    api: Any, torch_worker: Worker, tiny_base: Any, wide_base: Any
) -> None:
    (child,) = torch_worker.child_pids()
    cap_address_space(child, 512 * MiB)
    job_id = start_job(api, rows=40, model="wide-bert", hyperparameters={"n_epochs": 1, "batch_size": 8})
    job = reaping_until(job_id, (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=120)
    # The allocation fails inside the child (MemoryError or torch's allocator error): the job fails at
    # once with a message that says why, and is not retried (the same job would run out again).
    assert job.status == JobStatus.FAILED, job.error
    assert job.error["code"] == "out_of_memory"
    assert "ran out of memory" in job.error["message"]
    assert job.attempt == 1
    assert not job.usage.exists()
    assert job.events.filter(level="error", message=job.error["message"]).exists()
    # The same capped child then runs a normal job.
    assert torch_worker.child_pids() == [child]
    next_id = start_job(api, rows=40, hyperparameters={"n_epochs": 1, "batch_size": 2})
    following = reaping_until(next_id, (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=90)
    assert following.status == JobStatus.SUCCEEDED, following.error
    assert following.attempt == 1 and billed(following) == {"trained_tokens": following.trained_tokens}
    assert torch_worker.child_pids() == [child]
