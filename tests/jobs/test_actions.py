"""The job state machine: claims, fencing, the reaper (against real PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from apps.billing.models import UsageRecord
from apps.billing.pricing import cost_of
from apps.jobs import actions
from apps.jobs.models import Job, JobKind, JobStatus


@pytest.fixture
def job(alice_project: Any, django_capture_on_commit_callbacks: Any) -> Job:
    with django_capture_on_commit_callbacks(execute=False):
        return actions.create_job(
            kind=JobKind.FINE_TUNE,
            project=alice_project,
            model_name="tiny-bert",
            request={},
            message="Created.",
        )


def test_a_job_is_published_only_after_commit(
    alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = actions.create_job(kind=JobKind.FINE_TUNE, project=alice_project, model_name="m", request={})
    assert job.status == JobStatus.QUEUED and job.public_id.startswith("ftjob-")
    assert len(callbacks) == 1


def test_claim_is_exclusive(job: Job) -> None:
    first = actions.claim(job.public_id, owner="host-a:1")
    second = actions.claim(job.public_id, owner="host-b:2")
    assert first is not None and first.attempt == 1 and first.status == JobStatus.RUNNING
    assert second is None


def test_a_stale_running_job_can_be_claimed_again(job: Job, settings: Any) -> None:
    actions.claim(job.public_id, owner="host-a:1")
    Job.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 1)
    )
    again = actions.claim(job.public_id, owner="host-b:2")
    assert again is not None and again.attempt == 2


def test_a_zombie_attempt_writes_nothing(job: Job) -> None:
    # given attempt 1 was taken over by attempt 2
    actions.claim(job.public_id, owner="host-a:1")
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    actions.claim(job.public_id, owner="host-b:2")
    # when attempt 1 wakes up and writes
    assert actions.heartbeat(job.pk, 1, {"step": 99}) is None
    assert actions.add_event(job.pk, 1, "late") is False
    assert actions.add_checkpoint(job.pk, 1, step=5, epoch=1, metrics={}, artifact_key="x") is False
    assert actions.finish(job.pk, 1, JobStatus.SUCCEEDED, usage={"trained_tokens": 10}) is None
    # then nothing changed
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.attempt == 2 and job.progress == {}
    assert not UsageRecord.objects.exists()
    assert not job.checkpoints.exists()


def test_finish_bills_once_whatever_the_repeats(job: Job) -> None:
    claimed = actions.claim(job.public_id)
    assert claimed is not None
    assert actions.finish(job.pk, 1, JobStatus.SUCCEEDED, usage={"trained_tokens": 1000}) is not None
    assert actions.finish(job.pk, 1, JobStatus.SUCCEEDED, usage={"trained_tokens": 1000}) is None
    assert list(UsageRecord.objects.values_list("unit", "quantity", "cost")) == [
        ("trained_tokens", 1000, 2000)
    ]


def test_cancel_a_queued_job_at_once_and_a_running_one_by_request(job: Job, alice_project: Any) -> None:
    assert actions.cancel(job).status == JobStatus.CANCELLED
    other = Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=alice_project.organization,
        project=alice_project,
        model_name="m",
        status=JobStatus.QUEUED,
        queued_at=timezone.now(),
    )
    claimed = actions.claim(other.public_id)
    assert claimed is not None
    assert actions.cancel(other).status == JobStatus.RUNNING
    assert actions.heartbeat(other.pk, 1) == "cancel"


def test_the_reaper_requeues_then_fails_at_the_attempt_cap(
    job: Job, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 5)
    for attempt in range(1, settings.JOB_MAX_ATTEMPTS + 1):
        claimed = actions.claim(job.public_id, owner=f"host:{attempt}")
        assert claimed is not None and claimed.attempt == attempt
        Job.objects.filter(pk=job.pk).update(heartbeat_at=stale)
        with django_capture_on_commit_callbacks(execute=False) as published:
            counts = actions.reap()
        if attempt < settings.JOB_MAX_ATTEMPTS:
            assert counts["requeued"] == 1 and len(published) == 1
            assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error["code"] == "worker_lost"
    assert "died 3 times" in job.error["message"]


def test_the_reaper_handles_a_null_heartbeat(job: Job, django_capture_on_commit_callbacks: Any) -> None:
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        attempt=1,
        heartbeat_at=None,
        started_at=timezone.now() - timedelta(minutes=10),
    )
    with django_capture_on_commit_callbacks(execute=False):
        assert actions.reap()["requeued"] == 1


def test_the_reaper_republishes_a_long_queued_job_once(
    job: Job, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    Job.objects.filter(pk=job.pk).update(
        published_at=timezone.now() - timedelta(seconds=settings.JOB_QUEUED_STALE_SECONDS + 1)
    )
    with django_capture_on_commit_callbacks(execute=False) as published:
        assert actions.reap()["republished"] == 1
        assert actions.reap()["republished"] == 0
    assert len(published) == 1


def lost_job(job: Job, settings: Any) -> None:
    """`job` running, its heartbeat a minute past the stale threshold."""
    actions.claim(job.public_id, owner="host-a:1")
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 60)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=stale)


def test_after_the_reaper_itself_was_frozen_it_gives_the_workers_time_to_beat(
    job: Job, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.core.cache import cache

    allowance = settings.JOB_STALE_SECONDS - settings.JOB_HEARTBEAT_SECONDS
    lost_job(job, settings)
    now = timezone.now().timestamp()
    # the reaper's last run was longer ago than a worker may stay silent: the machine was frozen
    cache.set(actions.REAPER_LAST_RUN_KEY, now - settings.JOB_REAPER_INTERVAL_SECONDS - allowance - 1)
    with django_capture_on_commit_callbacks(execute=False) as published:
        assert actions.reap()["requeued"] == 0
        assert actions.reap()["requeued"] == 0  # and not at its next run either
        # once it has been running again for the allowance, a job still silent is lost
        cache.set(actions.REAPER_RESUMED_KEY, timezone.now().timestamp() - allowance)
        assert actions.reap()["requeued"] == 1
    assert len(published) == 1
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


def test_a_reaper_that_ran_on_time_reaps_at_once(
    job: Job, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.core.cache import cache

    lost_job(job, settings)
    cache.set(actions.REAPER_LAST_RUN_KEY, timezone.now().timestamp() - settings.JOB_REAPER_INTERVAL_SECONDS)
    with django_capture_on_commit_callbacks(execute=False):
        assert actions.reap()["requeued"] == 1


def test_without_redis_the_reaper_does_not_hold_back(settings: Any) -> None:
    # nothing listens on port 1: every cache call fails at once
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    assert actions._reaper_watching(timezone.now().timestamp()) is True


def test_a_cancelled_job_whose_worker_died_ends_cancelled(
    job: Job, django_capture_on_commit_callbacks: Any
) -> None:
    actions.claim(job.public_id)
    actions.cancel(job)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=False):
        assert actions.reap()["cancelled"] == 1
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED


# --- The hard time limit (docs/reliability.md, T6): the pool killed the attempt, the reaper fails it
def claim_with_limit(job: Job, seconds: float, *, ago: float, owner: str = "host-a:1") -> Job:
    """Attempt 1 claimed `ago` seconds ago under a hard limit of `seconds`, heartbeating until then."""
    claimed = actions.claim(job.public_id, owner=owner, time_limit=seconds)
    assert (
        claimed is not None and claimed.time_limit_at is not None and claimed.attempt_started_at is not None
    )
    assert (claimed.time_limit_at - claimed.attempt_started_at).total_seconds() == seconds
    shift = timedelta(seconds=ago)
    Job.objects.filter(pk=job.pk).update(
        attempt_started_at=claimed.attempt_started_at - shift,
        time_limit_at=claimed.time_limit_at - shift,
        heartbeat_at=claimed.time_limit_at - shift,
    )
    return claimed


def test_the_reaper_fails_a_job_the_hard_time_limit_killed_instead_of_requeueing_it(
    job: Job, django_capture_on_commit_callbacks: Any
) -> None:
    claim_with_limit(job, 600, ago=610)  # its last beat came just before the deadline, 10 s ago
    Job.objects.filter(pk=job.pk).update(checkpoint_ref="checkpoints/x/step-40")
    with django_capture_on_commit_callbacks(execute=False) as published:
        counts = actions.reap()
    assert counts["timed_out"] == 1 and counts["requeued"] == 0 and not published
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempt == 1 and job.finished_at is not None
    message = (
        "The job ran past its time limit of 600 seconds and was stopped. Its checkpoints so far are kept."
    )
    assert job.error == {"code": "time_limit", "message": message, "param": None}
    assert job.events.filter(level="error", message=message).exists()
    assert actions.reap()["timed_out"] == 0


def test_a_job_that_still_beats_past_its_time_limit_is_left_alone(
    job: Job, django_capture_on_commit_callbacks: Any
) -> None:
    # A pool that does not enforce time limits: the attempt is alive, so it is neither failed nor reaped.
    claim_with_limit(job, 600, ago=610)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=False):
        counts = actions.reap()
    assert counts["timed_out"] == counts["requeued"] == 0
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING


def test_a_stale_job_past_its_time_limit_fails_with_time_limit_not_worker_lost(
    job: Job, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # Its last beat came after the deadline (a slow kill), but it has been silent for the stale period.
    claim_with_limit(job, 60, ago=300)
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 1)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=stale)
    with django_capture_on_commit_callbacks(execute=False):
        assert actions.reap()["timed_out"] == 1
    job.refresh_from_db()
    assert job.error["code"] == "time_limit"
    assert job.error["message"] == "The job ran past its time limit of 60 seconds and was stopped."


def test_a_redelivered_message_of_a_timed_out_attempt_fails_the_job_instead_of_running_it(job: Job) -> None:
    claim_with_limit(job, 60, ago=70, owner="elsewhere:1")  # silent for 10 s: stale
    assert actions.claim(job.public_id, owner="host-b:2") is None
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error["code"] == "time_limit" and job.attempt == 1


def test_a_job_that_died_well_before_its_time_limit_is_requeued_as_a_lost_worker(
    job: Job, django_capture_on_commit_callbacks: Any
) -> None:
    claim_with_limit(job, 60, ago=70)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=50))
    with django_capture_on_commit_callbacks(execute=False) as published:
        counts = actions.reap()
    assert counts["timed_out"] == 0 and counts["requeued"] == 1 and len(published) == 1
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


def test_a_claim_without_a_time_limit_has_no_deadline(job: Job) -> None:
    claimed = actions.claim(job.public_id)
    assert claimed is not None and claimed.time_limit_at is None and claimed.attempt_started_at is not None


@pytest.mark.django_db(transaction=True)
def test_concurrent_reapers_requeue_each_job_once(alice_project: Any, settings: Any) -> None:
    stale = timezone.now() - timedelta(minutes=10)
    jobs = [
        Job.objects.create(
            kind=JobKind.FINE_TUNE,
            organization=alice_project.organization,
            project=alice_project,
            model_name="m",
            status=JobStatus.RUNNING,
            attempt=1,
            heartbeat_at=stale,
        )
        for _ in range(30)
    ]
    results: list[dict[str, int]] = []
    published: list[str] = []
    import apps.jobs.actions as module

    original = module.publish
    module.publish = lambda job: published.append(job.public_id) or True  # type: ignore[assignment]
    try:

        def reap_once() -> None:
            from django.db import connection

            try:
                results.append(actions.reap())
            finally:
                connection.close()

        threads = [threading.Thread(target=reap_once) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        module.publish = original  # type: ignore[assignment]
    assert sum(r["requeued"] for r in results) == len(jobs)
    assert sorted(published) == sorted(j.public_id for j in jobs)


def queued_messages(queue: str) -> list[dict[str, Any]]:
    """The messages waiting in a Celery queue on the test Redis (kombu keeps a list per queue)."""
    import base64
    import json

    from apps.core.redis import client

    raw = client().lrange(queue, 0, -1)
    return [json.loads(base64.b64decode(json.loads(item)["body"])) for item in raw]


def test_the_reaper_validates_again_an_upload_whose_message_was_lost(
    alice_project: Any, settings: Any
) -> None:
    from django.core.cache import cache

    from tests.api.test_fine_tuning import make_file
    from tests.conftest import purge_queues

    purge_queues()
    stuck = make_file(alice_project, status="uploaded")
    type(stuck).objects.filter(pk=stuck.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.JOB_QUEUED_STALE_SECONDS + 1)
    )
    cache.delete(f"revalidate:{stuck.public_id}")
    assert actions.reap()["files"] == 1
    assert actions.reap()["files"] == 0  # not again within the stale period
    assert [m[0] for m in queued_messages("default")] == [[stuck.public_id]]
    purge_queues()


@pytest.fixture
def request_job(alice_project: Any, tiny_classifier: Any, alice_key: str) -> Job:
    """An inference request's job, as `apps.jobs.inference.submit` makes it."""
    return actions.create_job(
        kind=JobKind.CLASSIFICATION,
        project=alice_project,
        model=tiny_classifier,
        model_name=tiny_classifier.name,
        request={"endpoint": "classifications", "texts": ["crash"]},
        api_key=alice_project.api_keys.get(),
    )


def test_a_requests_claim_is_one_statement_that_brings_the_rows_the_worker_reads(
    request_job: Job, django_assert_max_num_queries: Any
) -> None:
    # given the rows the worker reads through a job are known to this process
    actions.claim(request_job.public_id, owner="host-a:1", with_files=False)
    Job.objects.filter(pk=request_job.pk).update(status=JobStatus.QUEUED)

    # when the next request is claimed
    with django_assert_max_num_queries(1):
        claimed = actions.claim(request_job.public_id, owner="host-a:1", time_limit=60, with_files=False)
        assert claimed is not None
        assert (claimed.project.organization_id, claimed.model.artifact_key) == (
            request_job.organization_id,
            request_job.model.artifact_key,
        )
        assert claimed.api_key.project_id == request_job.project_id

    # then it holds the lease a claim gives
    claimed.refresh_from_db()
    assert (claimed.status, claimed.attempt, claimed.lease_owner) == (JobStatus.RUNNING, 2, "host-a:1")
    assert claimed.time_limit_at is not None and claimed.started_at is not None
    # and a duplicate delivery claims nothing
    assert actions.claim(request_job.public_id, owner="host-b:2", with_files=False) is None


def test_a_requests_finish_bills_once_in_one_statement(
    request_job: Job, django_assert_num_queries: Any
) -> None:
    claimed = actions.claim(request_job.public_id, with_files=False)
    assert claimed is not None
    usage = {"classified_texts": 1, "input_tokens": 3}
    cost_of(
        claimed.model_name, "input_tokens", 1
    )  # the prices are known to this process (re-read every 30 s)

    with django_assert_num_queries(1):
        assert actions.finish_request(claimed, {"data": []}, usage)

    # a repeat (a redelivered message of the same attempt) writes nothing, whichever way it goes
    assert not actions.finish_request(claimed, {"data": ["again"]}, usage)
    request_job.refresh_from_db()
    records = list(UsageRecord.objects.values_list("unit", "quantity", "start", "job_id", "api_key_id"))
    assert sorted(records) == [
        ("classified_texts", 1, 0, request_job.pk, request_job.api_key_id),
        ("input_tokens", 3, 0, request_job.pk, request_job.api_key_id),
    ]
    assert request_job.status == JobStatus.SUCCEEDED and request_job.result == {"data": []}
    assert request_job.billed_usage == usage and request_job.reserved_cost == 0
    assert request_job.billed_cost == sum(UsageRecord.objects.values_list("cost", flat=True)) > 0
    assert request_job.lease_owner == "" and request_job.finished_at is not None


def test_a_requests_finish_from_a_stale_attempt_writes_nothing(request_job: Job) -> None:
    stale = actions.claim(request_job.public_id, with_files=False)
    assert stale is not None
    Job.objects.filter(pk=request_job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert actions.claim(request_job.public_id, owner="host-b:2", with_files=False) is not None

    assert not actions.finish_request(stale, {"data": []}, {"classified_texts": 1})

    request_job.refresh_from_db()
    assert request_job.status == JobStatus.RUNNING and request_job.attempt == 2
    assert not UsageRecord.objects.exists()


def test_a_request_billed_before_finishes_through_the_general_path(request_job: Job) -> None:
    # given an attempt that already billed part of its usage (no request does today: the general path
    # exists so that one never could be billed twice)
    claimed = actions.claim(request_job.public_id, with_files=False)
    assert claimed is not None
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=claimed.pk)
        fields = actions.bill(locked, {"input_tokens": 2})
        locked.save(update_fields=fields)

    assert actions.finish_request(claimed, {"data": []}, {"classified_texts": 1, "input_tokens": 3})

    assert sorted(UsageRecord.objects.values_list("unit", "start", "quantity")) == [
        ("classified_texts", 0, 1),
        ("input_tokens", 0, 2),
        ("input_tokens", 2, 1),
    ]
