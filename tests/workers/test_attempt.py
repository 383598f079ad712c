"""The worker process's heartbeat thread (workers/runners/attempt.py), against real PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

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
