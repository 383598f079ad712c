"""What the runtime's progress becomes on a fine-tune's row, through the attempt's heartbeat."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import pytest
from django.db import connection, transaction

from apps.jobs import actions
from apps.jobs.models import Job
from tests.api.test_fine_tuning import make_file
from tests.conftest import wait_for
from workers.runners import progress as reporting
from workers.runners.attempt import AttemptGuard
from workers.runners.progress import ProgressReporter
from workers.runtime.specs import ProgressEvent


def step(number: int) -> ProgressEvent:
    return ProgressEvent(kind="step", step=number, total_steps=6, epoch=1, trained_tokens=10 * number)


def progress_at(job: Job, number: int) -> dict[str, Any]:
    def written() -> dict[str, Any] | None:
        progress = Job.objects.get(pk=job.pk).progress or {}
        return progress if progress.get("step") == number else None

    found: dict[str, Any] = wait_for(written, timeout=10)
    return found


def test_there_is_no_eta_until_a_step_has_been_timed(
    api: Any,
    alice_project: Any,
    tiny_base: Any,
    transactional_db: None,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a claimed fine-tune whose progress is written as soon as it changes, and whose step
    # rate is measured over any window (in production a window lasts seconds)
    settings.JOB_PROGRESS_INTERVAL_SECONDS = 0.05
    monkeypatch.setattr(reporting, "RATE_WINDOW_SECONDS", 0.0)
    file = make_file(alice_project)
    created = api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-bert", "training_file": file.public_id}, format="json"
    )
    assert created.status_code == 200, created.content
    job = actions.claim(created.json()["id"])
    assert job is not None
    with AttemptGuard(job.pk, job.attempt) as guard:
        reporter = ProgressReporter(job, guard)
        # when the first step ends: nothing says how long a step takes yet
        reporter.on_event(step(1))
        first = progress_at(job, 1)
        # when the second ends, the one step between them is the rate
        reporter.on_event(step(2))
        second = progress_at(job, 2)

    # then
    assert first["eta_seconds"] is None and first["percent"] == 16.7
    assert isinstance(second["eta_seconds"], int)


def test_a_heartbeat_held_up_past_half_the_stale_threshold_is_logged(
    api: Any, alice_project: Any, tiny_base: Any, transactional_db: None, settings: Any, caplog: Any
) -> None:
    # given a running attempt whose job row another transaction holds (2.5 s) for longer than half
    # the stale threshold (1.5 s), while beats come every 0.5 s, so that only the held-up beat is late
    settings.JOB_STALE_SECONDS = 3.0
    file = make_file(alice_project)
    created = api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-bert", "training_file": file.public_id}, format="json"
    )
    job = actions.claim(created.json()["id"])
    assert job is not None
    held = threading.Event()

    def hold_the_row() -> None:
        with transaction.atomic():
            Job.objects.select_for_update().get(pk=job.pk)
            held.set()
            time.sleep(2.5)
        connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    assert held.wait(timeout=10)

    # when the attempt beats while the row is held
    with (
        caplog.at_level(logging.WARNING, logger="workers.runners.attempt"),
        AttemptGuard(job.pk, job.attempt),
    ):
        holder.join()
        wait_for(lambda: "heartbeat" in caplog.text, timeout=10)

    # then one warning says how late the beat was, that the write was the slow part, and the bound
    [line] = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    gap, write = map(float, re.findall(r"(\d+\.\d)s", line)[:2])
    assert gap >= 1.5 and write >= 1.0, line
    assert line.startswith(f"job {job.pk}: heartbeat ") and line.endswith("the job counts as lost at 3s")
