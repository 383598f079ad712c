"""The job page: where the job is (queue and wait, step, percent and time left), its milestones a
page at a time, its whole training curve, and scores flagged when they rest on a handful of rows."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from django.utils import timezone

from apps.jobs.models import Job, JobEvent, JobStatus
from tests.dashboard.test_fine_tuning import METRICS, make_file, make_job, pages


def progress_text(page: str) -> str:
    match = re.search(r'<p class="help" id="job-progress">([^<]*)</p>', page)
    assert match, "no progress line"
    return html.unescape(match.group(1))


def metrics_event(job: Job, step: int, **data: Any) -> JobEvent:
    return JobEvent.objects.create(
        job=job,
        type="metrics",
        message=f"Step {step}/90",
        data={"step": step, "total_steps": 90, "epoch": 1, **data},
    )


# --- Step, percent and time left -------------------------------------------------------------------
def test_a_succeeded_job_shows_its_last_step_of_total_and_100_percent(
    alice_client: Any, alice_project: Any
) -> None:
    job = make_job(
        alice_project,
        JobStatus.SUCCEEDED,
        finished_at=timezone.now(),
        progress={"step": 90, "total_steps": 90, "epoch": 10, "percent": 100.0, "eta_seconds": 0},
    )

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    assert progress_text(page) == "Step 90 of 90 · epoch 10 · 100.0%"
    assert 'max="100" value="100.0" aria-label="Training progress"' in page


def test_a_job_that_stopped_early_says_so_beside_its_100_percent(
    alice_client: Any, alice_project: Any
) -> None:
    job = make_job(
        alice_project,
        JobStatus.SUCCEEDED,
        finished_at=timezone.now(),
        progress={"step": 54, "total_steps": 90, "epoch": 6, "percent": 100.0, "eta_seconds": 0},
        result={
            "metrics": {**METRICS, "early_stopped": True},
            "labels": ["negative", "positive"],
            "steps": 54,
        },
    )

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    assert progress_text(page) == (
        "Step 54 of 90 · epoch 6 · 100.0% · stopped early: the validation loss stopped improving"
    )


def test_the_time_left_is_never_negative_nor_absurd(alice_client: Any, alice_project: Any) -> None:
    def shown(eta: Any) -> str:
        job = make_job(
            alice_project,
            JobStatus.RUNNING,
            progress={"step": 30, "total_steps": 90, "epoch": 4, "percent": 33.3, "eta_seconds": eta},
        )
        return progress_text(alice_client.get(pages(alice_project, job)["detail"]).content.decode())

    assert shown(200) == "Step 30 of 90 · epoch 4 · 33.3% · about 3 min 20 s left"
    assert shown(None) == "Step 30 of 90 · epoch 4 · 33.3% · estimating the time left…"
    assert shown(-40) == "Step 30 of 90 · epoch 4 · 33.3% · finishing…"
    assert shown(9_000_000) == "Step 30 of 90 · epoch 4 · 33.3% · more than 2 days left"


def test_a_queued_job_shows_its_position_and_the_wait_until_it_starts(
    alice_client: Any, alice_project: Any, carol_project: Any
) -> None:
    # given another tenant's job running with 300 s left, and one queued ahead: 80 rows, 10 epochs at
    # batch 8 is 720 examples at 130 a second (5.5 s) and 90 steps at 0.32 s each (28.8 s): 34 s
    make_job(carol_project, JobStatus.RUNNING, progress={"step": 1, "total_steps": 90, "eta_seconds": 300})
    make_job(carol_project, training_file=make_file(carol_project))
    job = make_job(alice_project, training_file=make_file(alice_project))

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    queue = html.unescape(page.split('id="queue-position">')[1].split("</span>")[0])
    assert queue == "Position 2 in the queue · starts in about 5 min 34 s · then about 34 s of training"


def test_the_first_queued_job_with_free_workers_starts_as_soon_as_one_is_free(
    alice_client: Any, alice_project: Any
) -> None:
    job = make_job(alice_project)

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    assert (
        '<span id="queue-position">Position 1 in the queue · starts as soon as a worker is free</span>'
        in page
    )


# --- Milestones, a page at a time ------------------------------------------------------------------
def test_the_events_are_milestones_a_page_at_a_time(alice_client: Any, alice_project: Any) -> None:
    # given a job's events: 30 milestones, and a metrics event for each of 90 steps
    job = make_job(alice_project, JobStatus.RUNNING)
    JobEvent.objects.create(job=job, message="Created fine-tuning job.")
    for step in range(1, 91):
        metrics_event(job, step, train_loss=1 / step)
        if step % 10 == 0:
            metrics_event(job, step, valid_loss=0.5, accuracy=0.8)
            JobEvent.objects.create(job=job, message=f"Checkpoint saved at step {step}.")
    for number in range(11):
        JobEvent.objects.create(job=job, level="warn", message=f"Warning {number}.")
    detail = pages(alice_project, job)["detail"]

    # when
    first = alice_client.get(detail).content.decode()
    second = alice_client.get(f"{detail}?page=2").content.decode()
    fragment = alice_client.get(f"{pages(alice_project, job)['status']}?page=2").content.decode()

    # then
    events = first.split('id="job-events"')[1]
    assert "Milestones, newest first (30 in all)." in events
    assert events.count('<td class="mono muted">') == 25
    assert "Warning 10." in events and "Created fine-tuning job." not in events
    assert "Step 5/90" not in first  # steps are in the curve and the results file, not the list
    assert "Page 1 of 2" in events and 'href="?page=2" rel="next"' in events
    assert "Created fine-tuning job." in second.split('id="job-events"')[1] and "Page 2 of 2" in second
    assert "Created fine-tuning job." in fragment  # the polled fragment keeps the page shown
    assert f'hx-get="{pages(alice_project, job)["status"]}?page=2"' in second


# --- The whole training curve ----------------------------------------------------------------------
def test_the_page_carries_its_curve_so_a_finished_job_draws_it_at_once(
    alice_client: Any, alice_project: Any
) -> None:
    job = make_job(alice_project, JobStatus.SUCCEEDED, finished_at=timezone.now())
    for step in range(1, 4):
        metrics_event(job, step, train_loss=1.0 / step)
    last = metrics_event(job, 3, valid_loss=0.4)

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    data = json.loads(
        html.unescape(page.split('id="loss-chart-data" type="application/json">')[1].split("</script>")[0])
    )
    assert data["is_finished"] is True and data["cursor"] == last.public_id
    assert [point["step"] for point in data["points"]] == [1, 2, 3]
    assert data["points"][2] == {
        "step": 3,
        "total_steps": 90,
        "epoch": 1,
        "train_loss": 1 / 3,
        "valid_loss": 0.4,
    }
    assert '<p class="help" id="loss-chart-empty" hidden>' in page


def test_the_metrics_json_sends_only_what_was_written_after_the_cursor(
    alice_client: Any, alice_project: Any
) -> None:
    job = make_job(alice_project)
    url = pages(alice_project, job)["metrics"]
    metrics_event(job, 1, train_loss=0.9)
    first = alice_client.get(url).json()
    metrics_event(job, 2, train_loss=0.8)
    metrics_event(job, 1, train_loss=0.85)  # a retried attempt re-logs step 1

    later = alice_client.get(f"{url}?after={first['cursor']}").json()

    assert [p["step"] for p in first["data"]] == [1]
    assert [(p["step"], p["train_loss"]) for p in later["data"]] == [(1, 0.85), (2, 0.8)]
    assert later["cursor"] != first["cursor"]
    assert alice_client.get(f"{url}?after={later['cursor']}").json()["data"] == []


# --- Scores on a handful of rows -------------------------------------------------------------------
def test_scores_on_a_handful_of_validation_rows_are_flagged_too_few_to_trust(
    alice_client: Any, alice_project: Any
) -> None:
    def note(rows: int | None, **result: Any) -> str:
        job = make_job(
            alice_project,
            JobStatus.SUCCEEDED,
            finished_at=timezone.now(),
            result={
                "metrics": METRICS,
                "labels": ["negative", "positive"],
                "steps": 9,
                "validation_examples": rows,
                **result,
            },
        )
        page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()
        found = re.search(r'id="too-few-to-trust" role="note">([^<]*)<', page)
        return html.unescape(found.group(1)) if found else ""

    assert note(8) == (
        "Scored on only 8 validation rows: too few to trust. One row more or less right moves the accuracy by "
        "12.5 points. A validation set of at least 30 rows gives scores you can rely on."
    )
    assert note(None).startswith("Scored on only 16 validation rows")  # older jobs: the per-class supports
    assert note(30) == ""
