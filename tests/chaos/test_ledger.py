"""Billed exactly once (docs/reliability.md, T14): the usage ledger after faults.

Every chaos test on the test database already ends with the invariant queries (the autouse
`ledger_invariants` fixture in conftest.py, run after its workers are killed; test_database.py
runs them on its private database). Here: one mini-scenario that mixes a duplicate message, a
zombie, a killed child and a job that dies at its attempt cap, then the queries; and a check that
the queries do catch a broken ledger.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from apps.billing.models import Plan, UsageRecord
from apps.jobs.models import Job, JobKind, JobStatus
from apps.jobs.queue import publish
from tests.chaos.conftest import (
    django_execute,
    finished,
    job_row,
    ledger_violations,
    reap_until,
    signal_worker,
    submit_fine_tune,
    task_runs,
    upload,
)
from tests.conftest import billed, sentiment_csv, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def worker_of(workers: list[Any], job_id: str) -> Any:
    pid = int(job_row(job_id).lease_owner.rpartition(":")[2])
    return next(w for w in workers if pid in w.child_pids())


def test_t14_after_a_duplicate_a_zombie_a_killed_child_and_a_lost_job_each_unit_is_billed_once(
    api: Any, tiny_base: Any, settings: Any, start_workers: Any
) -> None:
    Plan.objects.update(concurrent_fine_tunes=5)  # two fine-tunes at once
    workers = start_workers(2)
    file_id = upload(api, sentiment_csv(40))
    # A: its message is published twice
    a = submit_fine_tune(api, epochs=10, file_id=file_id)
    assert publish(job_row(a))
    # B: a job that may run only once, so one lost worker fails it (a poison job in one step)
    settings.JOB_MAX_ATTEMPTS = 1
    b = submit_fine_tune(api, epochs=10, file_id=file_id)
    settings.JOB_MAX_ATTEMPTS = 3
    wait_for(lambda: job_row(a).checkpoints.exists() and job_row(b).checkpoints.exists(), timeout=90)
    zombie, other = worker_of(workers, a), worker_of(workers, b)
    assert zombie is not other
    signal_worker(zombie, signal.SIGSTOP)  # A's worker freezes
    try:
        for pid in other.child_pids():  # B's child is killed: redelivered, and at its cap
            os.kill(pid, signal.SIGKILL)
        lost = reap_until(lambda: finished(b), timeout=60)
        assert lost.status == JobStatus.FAILED and lost.error["code"] == "worker_lost"
        # the reaper gives A to the other worker, which finishes it
        done = reap_until(lambda: finished(a), timeout=150)
        assert done.status == JobStatus.SUCCEEDED, done.error
        assert done.attempt == 2
    finally:
        signal_worker(zombie, signal.SIGCONT)
    wait_for(lambda: len(task_runs(zombie)) == 1, timeout=30, message="the zombie never ended its task")
    time.sleep(1)
    assert ledger_violations(django_execute) == {}
    assert billed(job_row(a)) == {"trained_tokens": job_row(a).trained_tokens}
    # the lost job is billed for what its checkpoints kept (callable models), nothing more
    kept = max(job_row(b).checkpoints.values_list("trained_tokens", flat=True), default=0)
    assert billed(job_row(b)).get("trained_tokens", 0) == kept


def test_the_ledger_queries_catch_double_billing_and_billed_lost_jobs(alice_project: Any) -> None:
    def job(status: str, error: dict[str, Any] | None = None) -> Job:
        return Job.objects.create(
            kind=JobKind.FINE_TUNE,
            organization=alice_project.organization,
            project=alice_project,
            model_name="tiny-bert",
            status=status,
            error=error,
            trained_tokens=100,
            max_attempts=settings.JOB_MAX_ATTEMPTS,
        )

    def record(job: Job, start: int, quantity: int) -> None:
        UsageRecord.objects.create(
            organization=job.organization,
            job=job,
            model_name="tiny-bert",
            unit="trained_tokens",
            start=start,
            quantity=quantity,
            cost=quantity,
        )
        Job.objects.filter(pk=job.pk).update(billed_cost=F("billed_cost") + quantity)

    assert ledger_violations(django_execute) == {}
    unbilled = job(JobStatus.SUCCEEDED)
    lost = job(JobStatus.FAILED, {"code": "worker_lost", "message": "", "param": None})
    record(lost, 0, 100)  # no checkpoint kept any of it
    short = job(JobStatus.SUCCEEDED)
    record(short, 0, 99)
    twice = job(JobStatus.SUCCEEDED)
    record(twice, 0, 60)
    record(twice, 50, 50)  # units 50 to 60 billed twice
    Job.objects.filter(pk=short.pk).update(billed_cost=1)  # and a running total that disagrees
    found = ledger_violations(django_execute)
    assert set(found) == {
        "a (job, unit) billed twice for the same units, or with a gap",
        "a job whose billed totals disagree with its records",
        "a succeeded fine-tune billed for other tokens than it trained",
        "a failed worker_lost or time_limit job billed beyond its last checkpoint",
    }
    assert {row[0] for row in found["a succeeded fine-tune billed for other tokens than it trained"]} == {
        unbilled.public_id,
        short.public_id,
        twice.public_id,
    }
    assert [
        row[0] for row in found["a failed worker_lost or time_limit job billed beyond its last checkpoint"]
    ] == [lost.public_id]
    # the same units of a job cannot even be written twice
    with pytest.raises(IntegrityError), transaction.atomic():
        record(short, 0, 1)
    # leave a clean ledger for the autouse check
    UsageRecord.objects.all().delete()
    Job.objects.all().delete()
