"""`pausing`: a running fine-tune asked to pause reads `pausing` until its worker has saved the
checkpoint and ended the attempt `paused`. The row stays `running` meanwhile, so the claim, fencing,
the reaper and billing treat it as any running job (docs/architecture.md, "Cancel, pause and
resume"). Each test claims the job as a worker does and ends the attempt as the runner does."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.jobs import actions
from apps.jobs.models import Job, JobKind, JobStatus
from tests.conftest import billed


@pytest.fixture
def running(alice_project: Any, tiny_base: Any, django_capture_on_commit_callbacks: Any) -> Job:
    """A classification fine-tune claimed by attempt 1, as a worker leaves it when it starts."""
    with django_capture_on_commit_callbacks(execute=False):
        job = actions.create_job(
            kind=JobKind.FINE_TUNE,
            project=alice_project,
            model=tiny_base,
            model_name="tiny-bert",
            request={"method": {"type": "classification"}},
            message="Created.",
        )
    Job.objects.filter(pk=job.pk).update(estimated_cost=900)
    claimed = actions.claim(job.public_id, owner="host-a:1")
    assert claimed is not None and claimed.attempt == 1
    return claimed


def url(job: Job, action: str = "") -> str:
    return f"/v1/fine_tuning/jobs/{job.public_id}" + (f"/{action}" if action else "")


def pause_events(job: Job) -> int:
    return job.events.filter(message__startswith="Pause requested").count()


def end_paused(job: Job, trained_tokens: int = 100) -> Job | None:
    """The runner's end of an attempt stopped by a pause (workers/runners/finetune.py)."""
    return actions.finish(
        job.pk, job.attempt, JobStatus.PAUSED, usage={"trained_tokens": trained_tokens}, message="Job paused."
    )


def test_a_pause_reads_pausing_until_the_worker_checkpoints_then_paused(
    api: Any, carol_api: Any, running: Job
) -> None:
    # an outsider cannot pause it (and learns nothing of it)
    assert carol_api.post(url(running, "pause")).status_code == 404
    assert api.get(url(running)).json()["status"] == "running"

    # when alice pauses it, the answer and every read say `pausing` while the worker runs on
    response = api.post(url(running, "pause"))
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pausing"
    assert response.json()["status_reason"] == "pause_requested"
    assert api.get(url(running)).json()["status"] == "pausing"
    assert [j["status"] for j in api.get("/v1/fine_tuning/jobs").json()["data"]] == ["pausing"]
    row = Job.objects.get(pk=running.pk)
    assert row.status == JobStatus.RUNNING  # stored as running: the reaper and fencing see no change
    assert actions.heartbeat(running.pk, 1) == "pause"  # and the worker is told at its next step

    # a second pause answers the job as it is, without a second request
    again = api.post(url(running, "pause"))
    assert again.status_code == 200 and again.json()["status"] == "pausing"
    assert pause_events(running) == 1

    # then the worker saves its checkpoint and ends the attempt: `paused`, billed for what ran
    assert end_paused(running) is not None
    job = api.get(url(running)).json()
    assert job["status"] == "paused" and job["status_reason"] is None and job["finished_at"] is None
    assert billed(Job.objects.get(pk=running.pk)) == {"trained_tokens": 100}


def test_a_resume_while_pausing_is_refused_and_allowed_once_paused(api: Any, running: Job) -> None:
    assert api.post(url(running, "pause")).json()["status"] == "pausing"

    # the checkpoint a resume would start from is still being written
    refused = api.post(url(running, "resume"))
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": f"Job {running.public_id} is pausing; resume it once its checkpoint is saved and it is paused.",
        "type": "invalid_request_error",
        "param": "id",
        "code": "invalid_request",
    }
    assert api.get(url(running)).json()["status"] == "pausing"
    assert Job.objects.get(pk=running.pk).attempt == 1  # no second attempt was queued

    # once paused, the same resume queues it again
    assert end_paused(running) is not None
    resumed = api.post(url(running, "resume"))
    assert resumed.status_code == 200, resumed.content
    assert resumed.json()["status"] == "queued"


def test_a_cancel_while_pausing_wins_even_over_a_worker_that_read_the_pause(api: Any, running: Job) -> None:
    assert api.post(url(running, "pause")).json()["status"] == "pausing"

    # when alice cancels it, it is a running job being cancelled, and can no longer be paused
    cancelled = api.post(url(running, "cancel"))
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "running"
    assert cancelled.json()["status_reason"] == "cancel_requested"
    refused = api.post(url(running, "pause"))
    assert refused.status_code == 400
    assert (
        refused.json()["error"]["message"]
        == f"Job {running.public_id} is being cancelled; it cannot be paused."
    )

    # and when its worker, which had read the pause, ends the attempt paused, the cancel wins:
    # the job is cancelled, finished, billed once for what ran, and holds none of the cap
    ended = end_paused(running, trained_tokens=120)
    assert ended is not None and ended.status == JobStatus.CANCELLED
    job = api.get(url(running)).json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    row = Job.objects.get(pk=running.pk)
    assert billed(row) == {"trained_tokens": 120} and row.reserved_cost == 0
    assert row.events.filter(message="Job cancelled.").exists()
    # a cancelled job stays cancelled: no resume
    assert api.post(url(running, "resume")).status_code == 400


def test_a_pausing_job_whose_worker_died_is_requeued_and_still_pauses(
    api: Any, running: Job, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    assert api.post(url(running, "pause")).json()["status"] == "pausing"
    # given its worker died before it saved the checkpoint (no heartbeat since)
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 5)
    Job.objects.filter(pk=running.pk).update(heartbeat_at=stale)

    # when the reaper runs, it re-queues the job as any lost running job
    with django_capture_on_commit_callbacks(execute=False) as published:
        assert actions.reap()["requeued"] == 1
    assert len(published) == 1
    assert api.get(url(running)).json()["status"] == "queued"

    # then the next attempt is told to pause at once, and ends paused
    second = actions.claim(running.public_id, owner="host-b:2")
    assert second is not None and second.attempt == 2
    assert api.get(url(running)).json()["status"] == "pausing"
    assert actions.heartbeat(running.pk, 2) == "pause"
    assert end_paused(second) is not None
    assert api.get(url(running)).json()["status"] == "paused"


def test_the_job_page_shows_pausing_then_paused(alice_client: Any, api: Any, running: Job) -> None:
    page = reverse("dashboard:job", args=[running.project.public_id, running.public_id])
    api.post(url(running, "pause"))
    html = alice_client.get(page).content.decode()
    assert '<span class="badge pausing" id="job-badge">Pausing</span>' in html
    assert "Pausing: saving a checkpoint at the next step" in html

    end_paused(running)
    html = alice_client.get(page).content.decode()
    assert '<span class="badge paused" id="job-badge">Paused</span>' in html
    assert "Pausing" not in html
