"""The worker process's heartbeat thread (workers/runners/attempt.py), against real PostgreSQL."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from apps.jobs import actions
from apps.jobs.models import Job, JobKind, JobStatus
from workers.runners.attempt import AttemptGuard


def running_job(project: Any) -> Job:
    job = Job.objects.create(
        kind=JobKind.FINE_TUNE, organization=project.organization, project=project, model_name="tiny-bert"
    )
    claimed = actions.claim(job.public_id)
    assert claimed is not None
    return claimed


def wait_for(check: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_an_attempt_whose_poll_fails_does_not_stop_the_others_being_kept(
    transactional_db: None, alice_project: Any, settings: Any
) -> None:
    settings.JOB_HEARTBEAT_SECONDS = 0.2
    settings.JOB_PROGRESS_INTERVAL_SECONDS = 0.2
    broken, cancelled = running_job(alice_project), running_job(alice_project)
    with (
        AttemptGuard(broken.pk, broken.attempt) as first,
        AttemptGuard(cancelled.pk, cancelled.attempt) as second,
    ):
        # given one attempt whose heartbeat cannot be written (a bug: progress that is not JSON)
        first.set_progress({"step": object()})
        time.sleep(0.6)

        # when the other is cancelled by its customer
        assert actions.cancel(Job.objects.get(pk=cancelled.pk)).stop_requested == "cancel"

        # then the heartbeat thread still sees it, and keeps the lease of both
        assert wait_for(lambda: second.stop_reason == "cancel")
        assert first.stop_reason == ""
    assert Job.objects.get(pk=cancelled.pk).heartbeat_at > cancelled.heartbeat_at


def test_a_cancel_made_before_an_attempt_starts_is_seen_at_its_first_poll(
    transactional_db: None, alice_project: Any, settings: Any
) -> None:
    # given polls every second, and an attempt already kept (the thread is asleep when the next starts)
    settings.JOB_HEARTBEAT_SECONDS = 1
    settings.JOB_PROGRESS_INTERVAL_SECONDS = 1
    other, job = running_job(alice_project), running_job(alice_project)
    with AttemptGuard(other.pk, other.attempt):
        time.sleep(0.4)
        actions.cancel(Job.objects.get(pk=job.pk))  # cancelled before its attempt starts

        # when the attempt starts
        with AttemptGuard(job.pk, job.attempt) as guard:
            started = time.monotonic()
            assert wait_for(lambda: guard.stop_reason == "cancel", seconds=3)
            seen = time.monotonic() - started

    # then the cancel is seen at its first poll, a second in: not sooner (its claim has just written
    # its heartbeat), and not a poll later
    assert 0.95 <= seen <= 1.6, seen


def test_a_short_attempt_writes_nothing(transactional_db: None, alice_project: Any) -> None:
    job = running_job(alice_project)
    with AttemptGuard(job.pk, job.attempt):
        pass  # a request answered in milliseconds
    after = Job.objects.get(pk=job.pk)
    assert after.heartbeat_at == job.heartbeat_at and after.status == JobStatus.RUNNING


def test_a_session_postgresql_ended_is_an_outage_and_a_bad_write_is_not(
    transactional_db: None, alice_project: Any
) -> None:
    from django.db import DatabaseError, IntegrityError, connection, transaction

    from workers.runners.attempt import is_outage

    # a worker frozen inside a transaction: PostgreSQL ends its session (the idle-in-transaction
    # timeout the fenced writes set), and the next statement raises an InternalError
    ended: DatabaseError | None = None
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL idle_in_transaction_session_timeout = '100ms'")
            time.sleep(0.5)
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
    except DatabaseError as exc:
        ended = exc
    assert ended is not None and is_outage(ended)
    connection.close()

    # a write PostgreSQL refuses is no outage: waiting would not make it pass
    refused: DatabaseError | None = None
    try:
        with transaction.atomic():
            Job.objects.create(
                kind=JobKind.FINE_TUNE,
                organization=alice_project.organization,
                project=alice_project,
                model_name="m",
                public_id=running_job(alice_project).public_id,
            )
    except IntegrityError as exc:
        refused = exc
    assert refused is not None and not is_outage(refused)


def interrupted_inside_a_query(raised: BaseException) -> None:
    """Raises `raised` from a signal handler while a query waits on PostgreSQL, the way Celery's
    soft time limit lands: whatever bytecode runs when the signal comes."""
    from django.db import connection

    def handler(signum: int, frame: Any) -> None:
        raise raised

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(type(raised)), connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_soft_time_limit_that_lands_inside_a_query_still_fails_the_job_for_its_time(
    transactional_db: None, alice_project: Any
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    from workers.runners.finetune import _fail_time_limit

    job = running_job(alice_project)
    # given a training loop whose progress write the soft limit's signal interrupted
    interrupted_inside_a_query(SoftTimeLimitExceeded())

    # when the runner records the timeout
    _fail_time_limit(job)

    # then it is recorded: a timeout is terminal, not a lost worker the reaper re-runs
    failed = Job.objects.get(pk=job.pk)
    assert failed.status == JobStatus.FAILED and failed.error["code"] == "time_limit"
    assert failed.attempt == 1


def test_a_run_that_raises_inside_a_query_fails_its_job_at_once(
    transactional_db: None, alice_project: Any
) -> None:
    from workers.runners.attempt import run_claimed

    job = Job.objects.create(
        kind=JobKind.FINE_TUNE, organization=alice_project.organization, project=alice_project, model_name="m"
    )

    def run(claimed: Job) -> None:
        interrupted_inside_a_query(RuntimeError("a bug, raised from a signal handler"))
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_claimed(job.public_id, run, with_files=False)
    failed = Job.objects.get(pk=job.pk)
    assert failed.status == JobStatus.FAILED and failed.error["code"] == "internal_error"
