"""T2 with production timings (docs/reliability.md, T2): a worker node is lost mid-job and the job is
back in a new attempt within 120 s, found by the reaper that beat schedules, as in production.

Every other chaos test runs on scaled-down timings (tests/pytest_env.py). Here the worker and beat
get the settings' own defaults: heartbeat 15 s, stale after 90 s, reaper every 30 s. About 2 min.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import WORKER_ENV, job_row, submit_fine_tune
from tests.conftest import ROOT, Worker, billed, purge_queues, wait_for, worker_env
from tests.pytest_env import SCALED_ENV

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.slow]

# The promise: heartbeat stale after 90 s, found by a reaper that runs every 30 s.
RECOVERY_BOUND_SECONDS = 120


def production_env() -> dict[str, str]:
    """A worker's environment with the job timings left to the settings' defaults."""
    env = worker_env(WORKER_ENV)
    for name in SCALED_ENV:
        if name.startswith(("JOB_", "WORKER_HEARTBEAT")):
            env.pop(name, None)
    return env


class Beat:
    """`celery beat` with its schedule in a temporary directory."""

    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.log = ROOT / "var" / "test-logs" / f"beat-{time.monotonic_ns()}.log"
        self._out = self.log.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "saas",
            "beat",
            "-l",
            "info",
            "-s",
            str(directory / "schedule"),
            "--pidfile",
            str(directory / "beat.pid"),
        ]
        self.process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        self._out.close()


@pytest.fixture
def production_processes(transactional_db: None, tmp_path: Path) -> Iterator[list[Any]]:
    started: list[Any] = []
    purge_queues()
    yield started
    for item in started:
        if isinstance(item, Worker):
            from tests.chaos.conftest import kill_worker

            kill_worker(item)
        else:
            item.stop()


def test_t2_prod_a_lost_node_is_reaped_within_the_production_bound(
    api: Any, tiny_base: Any, production_processes: list[Any], tmp_path: Path
) -> None:
    env = production_env()
    first = Worker(env=env, log=ROOT / "var" / "test-logs" / f"t2prod-{time.monotonic_ns()}.log")
    production_processes.append(first)
    job_id = submit_fine_tune(api, rows=60, epochs=30)
    wait_for(lambda: job_row(job_id).checkpoints.exists(), timeout=120, message="no checkpoint")

    # the node is lost: main process and child together, so Celery redelivers nothing for hours
    for pid in (first.process.pid, *first.child_pids()):
        os.kill(pid, signal.SIGKILL)
    first.process.wait()
    killed = time.monotonic()
    time.sleep(2)
    production_processes.append(
        Worker(env=env, log=ROOT / "var" / "test-logs" / f"t2prod-{time.monotonic_ns()}.log")
    )
    production_processes.append(Beat(env, tmp_path))

    resumed = wait_for(
        lambda: (job := job_row(job_id)).attempt >= 2 and job,
        timeout=RECOVERY_BOUND_SECONDS - (time.monotonic() - killed),
        interval=1.0,
        message=f"no new attempt within {RECOVERY_BOUND_SECONDS} s of the node loss",
    )
    recovered_after = time.monotonic() - killed

    done = wait_for(lambda: (job := job_row(job_id)).is_finished and job, timeout=180, interval=1.0)
    assert done.status == "succeeded", done.error
    assert done.attempt == 2  # no third attempt
    assert billed(done) == {"trained_tokens": done.trained_tokens}
    assert resumed.events.filter(message__contains="resuming from the last checkpoint").exists()
    # and the production timings were in force: with the scaled ones the reaper takes ~5 s
    assert recovered_after > 60, recovered_after
