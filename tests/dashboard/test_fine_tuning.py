from __future__ import annotations

import html
import re
from typing import Any

import pytest
from django.utils import timezone

from apps.dashboard.templatetags.money import usd
from apps.jobs import fine_tuning
from apps.jobs.models import Job, JobEvent, JobKind, JobStatus
from apps.projects.models import File
from apps.registry.models import Model
from tests.conftest import login, use_plan

METRICS = {
    "valid_loss": 0.4123,
    "accuracy": 0.8125,
    "f1_macro": 0.8095,
    "f1_micro": 0.8125,
    "f1_weighted": 0.8095,
    "labels": ["negative", "positive"],
    "confusion_matrix": [[7, 1], [2, 6]],
    "per_class": {
        "negative": {"precision": 0.7778, "recall": 0.875, "f1": 0.8235, "support": 8},
        "positive": {"precision": 0.8571, "recall": 0.75, "f1": 0.8, "support": 8},
    },
}


def make_file(project: Any, filename: str = "train.csv", **fields: Any) -> File:
    """A fine-tune file whose validation has finished, as the validator leaves it."""
    values: dict[str, Any] = {
        "purpose": "fine-tune",
        "status": "processed",
        "format": "classification_csv",
        "validation": {"valid": True, "rows": 80, "stats": {"tokens": {"mean": 8}}},
        **fields,
    }
    return File.objects.create(project=project, filename=filename, content=f"files/test/{filename}", **values)


def make_job(project: Any, status: str = JobStatus.QUEUED, **fields: Any) -> Job:
    return Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=project.organization,
        project=project,
        model=Model.objects.get(name="minilm-l6"),
        model_name="minilm-l6",
        status=status,
        queued_at=timezone.now(),
        hyperparameters={"n_epochs": 10, "batch_size": 8, "learning_rate": 5e-5},
        **fields,
    )


def form(file: File, **overrides: str) -> dict[str, str]:
    """The new fine-tune form as the page fills it in, with one file chosen."""
    return {
        "training_file": file.public_id,
        "validation_file": "",
        "model": "minilm-l6",
        "suffix": "",
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "warmup_ratio": "0.1",
        "weight_decay": "0.01",
        "max_seq_length": "128",
        "early_stopping_patience": "3",
        "seed": "auto",
        "max_cost": "",
        **overrides,
    }


def field_error(page: str, name: str) -> str:
    match = re.search(rf'id="error-{name}"[^>]*>([^<]*)<', page)
    assert match, f"no error slot for {name}"
    return html.unescape(match.group(1))


@pytest.fixture
def train_file(alice_project: Any) -> File:
    return make_file(alice_project)


@pytest.fixture
def job(alice_project: Any) -> Job:
    return make_job(alice_project)


def pages(project: Any, job: Job) -> dict[str, str]:
    base = f"/projects/{project.public_id}/fine-tuning/"
    return {
        "list": base,
        "new": f"{base}new",
        "detail": f"{base}{job.public_id}/",
        "status": f"{base}{job.public_id}/status",
        "metrics": f"{base}{job.public_id}/metrics.json",
    }


# --- The form and its estimate --------------------------------------------------------------------
def test_the_form_lists_only_this_projects_processed_fine_tune_files(
    alice_client: Any, alice_project: Any, carol_project: Any
) -> None:
    ready = make_file(alice_project, "ready.csv")
    pending = make_file(alice_project, "pending.csv", status="uploaded", format="", validation=None)
    broken = make_file(alice_project, "broken.csv", status="error")
    batch = make_file(alice_project, "batch.jsonl", purpose="batch", format="batch_jsonl")
    foreign = make_file(carol_project, "carols.csv")

    page = alice_client.get(f"/projects/{alice_project.public_id}/fine-tuning/new").content.decode()

    assert ready.public_id in page
    assert "ready.csv · 80 rows · classification CSV" in page
    for other in (pending, broken, batch, foreign):
        assert other.public_id not in page
    assert 'value="minilm-l6"' in page and 'value="smollm2-135m-instruct"' in page
    base_models = page.split('id="id_model"')[1].split("</select>")[0]
    assert "openai:gpt-4o-mini" not in base_models  # not fine-tunable (it can teach, below)
    assert 'hx-post="/projects/' in page and 'hx-trigger="load, change"' in page


def test_the_form_explains_every_hyperparameter(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    page = alice_client.get(f"/projects/{alice_project.public_id}/fine-tuning/new").content.decode()
    for name, initial in [
        ("n_epochs", ""),
        ("batch_size", ""),
        ("learning_rate_multiplier", ""),
        ("warmup_ratio", "0.1"),
        ("weight_decay", "0.01"),
        ("max_seq_length", "128"),
        ("early_stopping_patience", "3"),
        ("seed", ""),
    ]:
        assert re.search(rf'type="number" id="id_{name}" name="{name}" value="{re.escape(initial)}"', page), (
            name
        )
    assert page.count('<p class="help"') >= 12


def test_the_estimate_shows_tokens_steps_time_and_cost(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    # given 80 rows of ~8 tokens: 72 train after the 10% hold-out, 10 epochs (auto), 10 tokens each
    expected = fine_tuning.estimate(
        fine_tuning.parse(alice_project, {"model": "minilm-l6", "training_file": train_file.public_id})
    )
    assert expected["trained_tokens"] == 7_200 and expected["estimated_cost"] == 14_400

    # when
    response = alice_client.post(
        f"/projects/{alice_project.public_id}/fine-tuning/estimate", form(train_file), HTTP_HX_REQUEST="true"
    )

    # then
    page = response.content.decode()
    assert response.status_code == 200
    assert '<div class="stat" id="estimate-tokens">7,200</div>' in page
    assert f'<div class="stat" id="estimate-steps">{expected["steps"]}</div>' in page
    # 720 examples at 130 a second, and 180 steps (batch 4, auto) at 0.32 s each: 63 s
    assert expected["steps"] == 180 and expected["estimated_seconds"] == 63
    assert '<div class="stat" id="estimate-time">1 min 03 s</div>' in page
    assert '<div class="stat" id="estimate-cost">$0.014</div>' in page
    assert field_error(page, "n_epochs") == ""  # every slot is cleared out of band
    assert page.count('hx-swap-oob="true"') == 17  # every field and the form


def test_the_estimate_shows_an_action_error_next_to_its_field(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    url = f"/projects/{alice_project.public_id}/fine-tuning/estimate"

    page = alice_client.post(url, form(train_file, n_epochs="0")).content.decode()
    assert field_error(page, "n_epochs") == "Epochs must be a whole number from 1 to 50, or empty for auto."
    assert 'id="estimate-cost"' not in page

    page = alice_client.post(url, form(train_file, learning_rate_multiplier="fast")).content.decode()
    assert field_error(page, "learning_rate_multiplier") == (
        "Learning rate multiplier must be a number greater than 0, or empty for auto."
    )
    page = alice_client.post(url, form(train_file, max_seq_length="1024")).content.decode()
    assert field_error(page, "max_seq_length") == "Max sequence length must be a whole number from 8 to 512."
    page = alice_client.post(url, form(train_file, suffix="no spaces")).content.decode()
    assert field_error(page, "suffix") == "Suffix must be 1 to 64 letters, digits, - or _ (no spaces)."
    page = alice_client.post(url, form(train_file, model="smollm2-135m-instruct")).content.decode()
    assert field_error(page, "model") == "train.csv holds labelled texts: pick minilm-l6 (a classifier)."


def test_the_estimate_warns_when_it_is_above_max_cost(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    url = f"/projects/{alice_project.public_id}/fine-tuning/estimate"
    page = alice_client.post(url, form(train_file, max_cost="0.01")).content.decode()
    assert '<div class="stat" id="estimate-cost">$0.014</div>' in page
    assert field_error(page, "max_cost") == (
        "The estimated cost ($0.014) is above your max cost ($0.01): "
        "the job will stop there and keep the best model so far."
    )
    page = alice_client.post(url, form(train_file, max_cost="1")).content.decode()
    assert field_error(page, "max_cost") == ""
    page = alice_client.post(url, form(train_file, max_cost="-2")).content.decode()
    assert field_error(page, "max_cost") == "Max cost must be an amount in dollars, e.g. 5 or 2.50."


def test_a_max_cost_too_large_for_micro_dollars_is_refused_not_a_500(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    # 1e999999 dollars is a finite Decimal whose micro-dollars overflow Decimal's exponent
    message = "Max cost must be at most $9,223,372,036,854.78."
    for path in ("estimate", "new"):
        response = alice_client.post(
            f"/projects/{alice_project.public_id}/fine-tuning/{path}", form(train_file, max_cost="1e999999")
        )
        assert response.status_code == 200, path
        assert field_error(response.content.decode(), "max_cost") == message
    assert not Job.objects.exists()


# --- Starting a job -------------------------------------------------------------------------------
def test_start_creates_one_job_exactly_as_the_api_does(
    alice_client: Any,
    api: Any,
    alice: Any,
    alice_project: Any,
    train_file: File,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # given the same choices made in the form and in an API call
    choices = form(train_file, suffix="Sentiment", n_epochs="2", learning_rate_multiplier="0.5", seed="7")
    hyperparameters = {
        "n_epochs": 2,
        "learning_rate_multiplier": 0.5,
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "max_seq_length": 128,
        "early_stopping_patience": 3,
    }
    body = {
        "model": "minilm-l6",
        "training_file": train_file.public_id,
        "suffix": "Sentiment",
        "seed": 7,
        "method": {"type": "classification", "classification": {"hyperparameters": hyperparameters}},
    }

    use_plan(alice_project.organization, "pro")  # two fine-tunes at once

    # when
    with django_capture_on_commit_callbacks() as published:
        response = alice_client.post(f"/projects/{alice_project.public_id}/fine-tuning/new", choices)
    dashboard_job = Job.objects.get()
    api_job = Job.objects.get(public_id=api.post("/v1/fine_tuning/jobs", body, format="json").json()["id"])

    # then
    assert response.status_code == 302
    assert (
        response["Location"] == f"/projects/{alice_project.public_id}/fine-tuning/{dashboard_job.public_id}/"
    )
    assert len(published) == 1  # the job's publish, once the transaction commits
    assert dashboard_job.status == JobStatus.QUEUED
    assert dashboard_job.created_by == alice and dashboard_job.api_key is None
    assert dashboard_job.hyperparameters["n_epochs"] == 2
    assert dashboard_job.hyperparameters["learning_rate"] == pytest.approx(2.5e-5)
    assert dashboard_job.hyperparameters["batch_size"] == 4  # auto, resolved from 80 rows: 16+ steps an epoch
    for name in (
        "kind",
        "status",
        "model_id",
        "model_name",
        "request",
        "training_file_id",
        "validation_file_id",
        "hyperparameters",
        "seed",
        "metadata",
        "max_cost",
        "estimated_cost",
        "project_id",
        "organization_id",
    ):
        assert getattr(dashboard_job, name) == getattr(api_job, name), name
    assert dashboard_job.events.get().message == "Created fine-tuning job."


def test_nothing_is_created_when_start_fails(alice_client: Any, alice_project: Any, train_file: File) -> None:
    url = f"/projects/{alice_project.public_id}/fine-tuning/new"

    response = alice_client.post(url, form(train_file, n_epochs="0", suffix="keep-me"))
    page = response.content.decode()
    assert response.status_code == 200
    assert field_error(page, "n_epochs") == "Epochs must be a whole number from 1 to 50, or empty for auto."
    assert 'name="suffix" value="keep-me"' in page  # the form keeps what was typed

    page = alice_client.post(url, form(train_file, training_file="")).content.decode()
    assert field_error(page, "training_file") == "Choose a training file."
    assert not Job.objects.exists()


def test_a_double_submitted_form_starts_one_job(
    alice_client: Any, alice_project: Any, train_file: File
) -> None:
    url = f"/projects/{alice_project.public_id}/fine-tuning/new"
    token = re.search(r'name="form_token" value="([^"]+)"', alice_client.get(url).content.decode())
    assert token
    data = {**form(train_file), "form_token": token.group(1)}

    first = alice_client.post(url, data)
    second = alice_client.post(url, data)

    assert first["Location"] == second["Location"]
    assert Job.objects.count() == 1


# --- The job page ---------------------------------------------------------------------------------
def test_the_jobs_list_shows_jobs_newest_first(
    alice_client: Any, alice_project: Any, django_assert_max_num_queries: Any
) -> None:
    older = make_job(alice_project, JobStatus.RUNNING, progress={"percent": 42.0})
    newer = make_job(alice_project)
    for _ in range(5):
        make_job(alice_project, JobStatus.FAILED)

    with django_assert_max_num_queries(10):
        page = alice_client.get(f"/projects/{alice_project.public_id}/fine-tuning/").content.decode()

    assert page.index(newer.public_id) < page.index(older.public_id)
    assert "42%" in page and "New fine-tune" in page


def test_a_queued_job_shows_its_queue_position(alice_client: Any, alice_project: Any, job: Job) -> None:
    second = make_job(alice_project)
    JobEvent.objects.create(job=second, message="Created fine-tuning job.")
    JobEvent.objects.create(job=second, message="Files validated; job queued.")

    page = alice_client.get(pages(alice_project, second)["detail"]).content.decode()

    assert '<span class="badge queued" id="job-badge">Queued</span>' in page
    assert "Position 2 in the queue" in page
    assert page.index("Files validated; job queued.") < page.index("Created fine-tuning job.")  # newest first
    assert 'hx-trigger="every 2s"' in page
    assert "Cancel job" in page
    assert "vendor/chartjs/chart.umd.min.js" in page and "js/job.js" in page


def test_a_running_job_shows_progress_and_eta(alice_client: Any, alice_project: Any) -> None:
    job = make_job(
        alice_project,
        JobStatus.RUNNING,
        progress={"step": 30, "total_steps": 90, "epoch": 4, "percent": 33.3, "eta_seconds": 200},
    )

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    assert 'max="100" value="33.3" aria-label="Training progress"' in page
    assert "Step 30 of 90 · epoch 4 · 33.3% · about 3 min 20 s left" in page
    assert "in the queue" not in page


def test_a_failed_job_shows_its_error_and_stops_polling(alice_client: Any, alice_project: Any) -> None:
    job = make_job(
        alice_project,
        JobStatus.FAILED,
        error={"code": "worker_lost", "message": "The worker running this job died 3 times.", "param": None},
        finished_at=timezone.now(),
    )

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    assert '<strong class="mono">worker_lost</strong>: The worker running this job died 3 times.' in page
    assert "hx-trigger" not in page
    assert "Cancel job" not in page


def test_the_status_fragment_polls_until_the_job_is_finished(
    alice_client: Any, alice_project: Any, job: Job
) -> None:
    JobEvent.objects.create(job=job, message="Attempt 1 started on gpu-1.")
    fragment = alice_client.get(pages(alice_project, job)["status"]).content.decode()
    assert 'hx-trigger="every 2s"' in fragment
    assert '<div id="job-events" class="card" hx-swap-oob="true">' in fragment
    assert "Attempt 1 started on gpu-1." in fragment
    assert "<html" not in fragment

    Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELLED, finished_at=timezone.now())
    fragment = alice_client.get(pages(alice_project, job)["status"]).content.decode()
    assert "hx-trigger" not in fragment
    assert "Cancelled" in fragment


def test_the_metrics_json_returns_points_in_step_order(
    alice_client: Any, alice_project: Any, job: Job
) -> None:
    # given metric events written out of step order, an eval at step 10, and a retried step 20
    def metrics(**data: Any) -> None:
        JobEvent.objects.create(
            job=job, type="metrics", message="m", data={"total_steps": 30, "epoch": 1, **data}
        )

    metrics(step=20, train_loss=0.6)
    metrics(step=10, train_loss=0.7)
    metrics(step=10, valid_loss=0.65, accuracy=0.75, f1_macro=0.74)
    JobEvent.objects.create(job=job, message="Checkpoint saved at step 10.", data={"step": 10})
    metrics(step=20, train_loss=0.55)  # the retried attempt's value wins
    metrics(step=5, train_loss=0.9)

    # when
    body = alice_client.get(pages(alice_project, job)["metrics"]).json()

    # then
    assert body["status"] == "queued" and body["is_finished"] is False
    assert [point["step"] for point in body["data"]] == [5, 10, 20]
    assert body["data"][1] == {
        "step": 10,
        "total_steps": 30,
        "epoch": 1,
        "train_loss": 0.7,
        "valid_loss": 0.65,
        "accuracy": 0.75,
        "f1_macro": 0.74,
    }
    assert body["data"][2]["train_loss"] == 0.55


def test_cancel_a_queued_job(alice_client: Any, alice_project: Any, job: Job) -> None:
    response = alice_client.post(f"{pages(alice_project, job)['detail']}cancel", follow=True)

    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    assert job.events.filter(message="Job cancelled.").exists()
    page = response.content.decode()
    assert "Job cancelled." in page and "Cancel job" not in page


def test_cancel_a_running_job_asks_it_to_stop(alice_client: Any, alice_project: Any) -> None:
    job = make_job(alice_project, JobStatus.RUNNING)

    page = alice_client.post(f"{pages(alice_project, job)['detail']}cancel", follow=True).content.decode()

    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.stop_requested == "cancel"
    assert "Cancellation requested" in page and "Cancelling: stopping at the next step" in page


def test_a_finished_job_cannot_be_cancelled(alice_client: Any, alice_project: Any) -> None:
    job = make_job(alice_project, JobStatus.SUCCEEDED, finished_at=timezone.now())

    page = alice_client.post(f"{pages(alice_project, job)['detail']}cancel", follow=True).content.decode()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert "has already succeeded; it cannot be cancelled." in page


def test_a_succeeded_job_shows_its_metrics_confusion_matrix_and_per_class_table(
    alice_client: Any, alice_project: Any
) -> None:
    job = make_job(
        alice_project,
        JobStatus.SUCCEEDED,
        finished_at=timezone.now(),
        progress={"step": 90, "total_steps": 90, "percent": 100.0, "eta_seconds": 0},
        result={"metrics": METRICS, "labels": ["negative", "positive"], "steps": 90},
    )
    model = Model.objects.create(
        name=f"ft:minilm-l6:acme::{job.public_id}",
        organization=alice_project.organization,
        project=alice_project,
        task="classification",
        base=Model.objects.get(name="minilm-l6"),
        labels=["negative", "positive"],
        metrics=METRICS,
    )
    Job.objects.filter(pk=job.pk).update(fine_tuned_model=model)

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    assert '<span class="badge succeeded" id="job-badge">Succeeded</span>' in page
    assert '<div class="muted">Accuracy</div><div class="stat">0.813</div>' in page
    assert '<div class="muted">Macro F1</div><div class="stat">0.810</div>' in page
    assert '<div class="muted">Validation loss</div><div class="stat">0.4123</div>' in page
    matrix = page.split('id="confusion-matrix"')[1].split("</table>")[0]
    assert "<th>negative</th><th>positive</th>" in matrix
    assert '<tr><th>negative</th><td class="hit">7</td><td class="miss">1</td></tr>' in matrix
    assert '<tr><th>positive</th><td class="miss">2</td><td class="hit">6</td></tr>' in matrix
    per_class = page.split('id="per-class"')[1].split("</table>")[0]
    assert "<tr><td>negative</td><td>0.778</td><td>0.875</td><td>0.824</td><td>8</td></tr>" in per_class
    assert f'href="/projects/{alice_project.public_id}/models/{model.name}/"' in page
    assert "hx-trigger" not in page


# --- Who may see what -----------------------------------------------------------------------------
def test_outsiders_get_404_on_every_page_and_action(
    carol_client: Any, alice_project: Any, job: Job, train_file: File
) -> None:
    urls = pages(alice_project, job)
    for name in ("list", "new", "detail", "status", "metrics"):
        assert carol_client.get(urls[name]).status_code == 404, name
    assert carol_client.post(f"{urls['detail']}cancel").status_code == 404
    assert carol_client.post(urls["new"], form(train_file)).status_code == 404
    estimate = f"/projects/{alice_project.public_id}/fine-tuning/estimate"
    assert carol_client.post(estimate, form(train_file)).status_code == 404
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert Job.objects.count() == 1


def test_another_projects_file_is_a_field_error_not_a_leak(
    carol_client: Any, carol_project: Any, train_file: File
) -> None:
    # carol, in her own project, names alice's file
    url = f"/projects/{carol_project.public_id}/fine-tuning/"

    page = carol_client.post(f"{url}estimate", form(train_file)).content.decode()
    assert field_error(page, "training_file") == (
        f"Invalid file id '{train_file.public_id}': no such file in this project."
    )
    assert "train.csv" not in page and "7,200" not in page

    page = carol_client.post(f"{url}new", form(train_file)).content.decode()
    assert "no such file in this project" in field_error(page, "training_file")
    assert not Job.objects.exists()


def test_a_teammate_can_follow_and_start_jobs(
    client: Any, bob: Any, alice_project: Any, job: Job, train_file: File
) -> None:
    login(client, bob)
    use_plan(alice_project.organization, "pro")  # `job` is already queued: allow a second one
    urls = pages(alice_project, job)
    for name in ("list", "new", "detail", "status", "metrics"):
        assert client.get(urls[name]).status_code == 200, name
    assert client.post(urls["new"], form(train_file)).status_code == 302
    assert Job.objects.filter(created_by=bob).count() == 1


def test_usd_shows_micro_dollars_as_dollars() -> None:
    assert usd(1_234_567) == "$1.23"
    assert usd(1_234) == "$0.0012"
    assert usd(14_400) == "$0.014"
    assert usd(0) == "$0.00"
    assert usd(1) == "$0.000001"
    assert usd(1_234_567_890) == "$1,234.57"
    assert usd(None) == ""


# --- Distillation ---------------------------------------------------------------------------------
DISTILLATION = {
    "teacher": "ft:tiny-bert:acme:tickets:ftjob-1",
    "held_out_texts": 20,
    "agreement": 0.95,
    "teacher_accuracy": 0.9,
    "student_accuracy": 0.85,
    "texts_with_labels": 20,
    "teacher_texts_per_second": 12.5,
    "student_texts_per_second": 410.0,
    "teacher_cost_per_1000_texts": 9000,
    "student_cost_per_1000_texts": 2100,
    "labelled_texts": 196,
    "unparseable_answers": 4,
    "teacher_cost": 1764,
    "currency": "usd_micros",
}


def test_a_distillation_started_here_is_the_jobs_api_distillation(
    alice_client: Any,
    api: Any,
    alice_project: Any,
    tiny_classifier: Model,
    carol_project: Any,
) -> None:
    texts = make_file(alice_project, "texts.csv", format="text_csv")
    Model.objects.create(
        name="ft:tiny-bert:other:x:ftjob-2",
        organization=carol_project.organization,
        task="classification",
        labels=["a", "b"],
        limits={"servable": True},
    )
    use_plan(alice_project.organization, "pro")
    new = f"/projects/{alice_project.public_id}/fine-tuning/new"

    page = alice_client.get(new).content.decode()
    response = alice_client.post(new, form(texts, teacher=tiny_classifier.name, temperature="3", seed="7"))
    body = {
        "model": "minilm-l6",
        "training_file": texts.public_id,
        "seed": 7,
        "method": {
            "type": "distillation",
            "distillation": {
                "teacher": tiny_classifier.name,
                "temperature": 3,
                "hyperparameters": {
                    "warmup_ratio": 0.1,
                    "weight_decay": 0.01,
                    "max_seq_length": 128,
                    "early_stopping_patience": 3,
                },
            },
        },
    }
    api_job = Job.objects.get(public_id=api.post("/v1/fine_tuning/jobs", body, format="json").json()["id"])

    assert f'<option value="{tiny_classifier.name}" >' in page  # alice's classifier can teach
    assert "ft:tiny-bert:other" not in page  # another organization's cannot
    assert response.status_code == 302
    dashboard_job = Job.objects.exclude(pk=api_job.pk).get()
    assert dashboard_job.request == api_job.request
    assert dashboard_job.request["method"]["distillation"]["labels"] == ["billing", "bug", "praise"]


def test_a_teachers_error_is_shown_next_to_its_field(
    alice_client: Any, alice_project: Any, tiny_chat: Model
) -> None:
    texts = make_file(alice_project, "texts.csv", format="text_csv")
    url = f"/projects/{alice_project.public_id}/fine-tuning/estimate"

    missing = alice_client.post(url, form(texts, teacher="tiny-gpt2")).content.decode()
    single = alice_client.post(url, form(texts, teacher="tiny-gpt2", labels="spam")).content.decode()
    good = alice_client.post(url, form(texts, teacher="tiny-gpt2", labels="spam, ham")).content.decode()

    assert field_error(missing, "labels") == (
        "Enter the labels a generation teacher chooses from, e.g. billing, bug, praise."
    )
    assert field_error(single, "labels") == "Labels must be a list of 2 to 100 class names."
    assert field_error(good, "labels") == ""
    assert "Includes the teacher's labelling: $" in good


def test_a_finished_distillation_compares_teacher_and_student_and_links_its_files(
    alice_client: Any, alice_project: Any
) -> None:
    files = [
        make_file(alice_project, name, purpose="fine-tune-results", bytes=120)
        for name in ("job_results.csv", "job_teacher_labels.csv")
    ]
    job = make_job(
        alice_project,
        JobStatus.SUCCEEDED,
        finished_at=timezone.now(),
        result={
            "metrics": METRICS,
            "labels": ["negative", "positive"],
            "steps": 90,
            "distillation": DISTILLATION,
        },
        result_files=[f.public_id for f in files] + ["file-deleted"],
        request={"method": {"type": "distillation", "distillation": {"teacher": DISTILLATION["teacher"]}}},
    )

    page = alice_client.get(pages(alice_project, job)["detail"]).content.decode()

    assert '<strong id="distillation-agreement">95%</strong>' in page
    table = page.split('id="distillation-comparison"')[1].split("</table>")[0]
    assert "<tr><th>Accuracy on the file's labels</th>\n      <td>90%</td>\n      <td>85%</td></tr>" in table
    assert "<tr><th>Texts per second</th><td>12.5</td><td>410.0</td></tr>" in table
    assert f"<tr><th>Cost per 1,000 texts</th><td>{usd(9000)}</td><td>{usd(2100)}</td></tr>" in table
    assert "<strong>4 answers named no label</strong>" in page
    links = page.split('id="job-result-files"')[1].split("</ul>")[0]
    assert [f"/projects/{alice_project.public_id}/files/{f.public_id}/content" in links for f in files] == [
        True,
        True,
    ]
    assert "file-deleted" not in links
