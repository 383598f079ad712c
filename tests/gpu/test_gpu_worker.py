"""T38 on a machine with a CUDA device: a GPU worker child killed mid-fine-tune leaves no process on
the GPU, the job resumes and is billed once, and five more jobs leak no GPU memory. Skipped when no
GPU is present; T1 covers the same recovery logic on the CPU."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.conftest import WORKER_ENV, job_row, submit_fine_tune, upload
from tests.conftest import Worker, billed, purge_queues, sentiment_csv, wait_for, worker_env


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available()) and shutil.which("nvidia-smi") is not None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(not _cuda(), reason="needs a CUDA device and nvidia-smi"),
]


def smi(query: str, target: str = "--query-gpu") -> list[str]:
    out = subprocess.run(
        ["nvidia-smi", f"{target}={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def memory_used_mib() -> int:
    return int(smi("memory.used")[0].split(",")[0])


def gpu_pids() -> set[int]:
    return {int(line) for line in smi("pid", "--query-compute-apps")}


@pytest.fixture
def gpu_worker(transactional_db: None) -> Iterator[Worker]:
    """A GPU worker as docker-compose runs it: one child, a fresh child for every task."""
    purge_queues()
    worker = Worker(
        env=worker_env({**WORKER_ENV, "CUDA_VISIBLE_DEVICES": "0"}), args=("--max-tasks-per-child", "1")
    )
    try:
        yield worker
    finally:
        worker.stop()


def test_t38_a_killed_gpu_child_frees_the_gpu_and_the_job_resumes_once(
    api: Any, tiny_base: Any, gpu_worker: Worker
) -> None:
    idle = memory_used_mib()
    # 2,000 rows in batches of 2: an epoch is long enough on a GPU to be caught in the middle
    job_id = submit_fine_tune(api, file_id=upload(api, sentiment_csv(2000)), epochs=3)
    wait_for(lambda: (job_row(job_id).progress or {}).get("epoch", 0) >= 2, timeout=240, interval=0.2)
    [child] = gpu_worker.child_pids()
    assert child in gpu_pids()  # the job really trains on the GPU

    os.kill(child, signal.SIGKILL)
    wait_for(
        lambda: child not in gpu_pids(), timeout=5, interval=0.2, message="the killed child stayed on the GPU"
    )

    done = wait_for(lambda: (job := job_row(job_id)).is_finished and job, timeout=300, interval=1.0)
    assert done.status == "succeeded", done.error
    assert done.attempt == 2
    assert billed(done) == {"trained_tokens": done.trained_tokens}
    assert done.events.filter(message__startswith="Resumed from").exists()  # not from scratch

    short = [submit_fine_tune(api, rows=60, epochs=1) for _ in range(5)]
    for other in short:
        finished = wait_for(
            lambda other=other: (job := job_row(other)).is_finished and job, timeout=240, interval=1.0
        )
        assert finished.status == "succeeded", finished.error
    time.sleep(2)  # the last child exits after its task
    assert memory_used_mib() <= idle * 1.05 + 64, (memory_used_mib(), idle)  # + a CUDA context's slack
