"""Fine-tuning requests: every refusal is a clear 400/404 and nothing is queued."""

from __future__ import annotations

from typing import Any

import pytest

from apps.jobs.models import Job, JobStatus
from apps.projects.models import File, FileStatus
from tests.conftest import use_plan


def make_file(
    project: Any,
    *,
    fmt: str = "classification_csv",
    status: str = FileStatus.PROCESSED,
    rows: int = 100,
    purpose: str = "fine-tune",
) -> File:
    from django.core.files.base import ContentFile

    file = File(
        project=project,
        filename="data.csv",
        purpose=purpose,
        status=status,
        format=fmt,
        status_details="2 errors (first: line 3: label is empty)" if status == FileStatus.ERROR else "",
        validation={"valid": status != FileStatus.ERROR, "rows": rows, "stats": {"tokens": {"mean": 10}}},
    )
    file.content.save("data.csv", ContentFile(b"text,label\n"), save=False)
    file.save()
    return file


@pytest.fixture
def good_file(alice_project: Any) -> File:
    return make_file(alice_project)


def post(api: Any, body: dict[str, Any], path: str = "/v1/fine_tuning/jobs") -> Any:
    return api.post(path, body, format="json")


def error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message", "param"),
    [
        ({"training_file": "F"}, 400, "Missing required parameter: 'model'.", "model"),
        (
            {"model": "nope", "training_file": "F"},
            404,
            "The model 'nope' does not exist or you do not have access to it.",
            "model",
        ),
        ({"model": "tiny-bert"}, 400, "Missing required parameter: 'training_file'.", "training_file"),
        (
            {"model": "tiny-bert", "training_file": "file-missing"},
            400,
            "Invalid file id 'file-missing': no such file in this project.",
            "training_file",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "suffix": "no spaces"},
            400,
            "suffix must be 1 to 64 letters, digits, '-' or '_'.",
            "suffix",
        ),
        # `$` would match before a final newline; the suffix becomes part of the model's name.
        (
            {"model": "tiny-bert", "training_file": "F", "suffix": "abc\n"},
            400,
            "suffix must be 1 to 64 letters, digits, '-' or '_'.",
            "suffix",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "seed": -1},
            400,
            "seed must be an integer between 0 and 2147483647.",
            "seed",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "hyperparameters": {"n_epochs": 0}},
            400,
            'n_epochs must be an integer between 1 and 50 or "auto"',
            "hyperparameters.n_epochs",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "hyperparameters": {"batch_size": "big"}},
            400,
            'batch_size must be an integer between 1 and 256 or "auto"',
            "hyperparameters.batch_size",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "method": {"type": "supervised"}},
            400,
            "Method 'supervised' is not available for tiny-bert (a classification model); use: classification.",
            "method.type",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "status": "succeeded"},
            400,
            "Unrecognized request argument supplied: status",
            "status",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "metadata": {"k": 1}},
            400,
            "metadata keys must be strings of at most 64 characters, values strings of at most 512.",
            "metadata",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "max_cost": -1},
            400,
            "max_cost must be a whole number of micro-dollars, 0 or more.",
            "max_cost",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "integrations": {"type": "wandb"}},
            400,
            "integrations must be a list.",
            "integrations",
        ),
        (
            {
                "model": "tiny-bert",
                "training_file": "F",
                "integrations": [{"type": "wandb", "wandb": {"project": "my-wandb-project"}}],
            },
            400,
            "Weights & Biases integrations are not available here; remove the entry. Every step's metrics are "
            "in the job's events and in its results file (result_files), which you can log to W&B yourself.",
            "integrations[0]",
        ),
        (
            {"model": "tiny-bert", "training_file": "F", "integrations": [{"type": "mlflow"}]},
            400,
            'integrations[0].type must be "wandb", and Weights & Biases integrations are not available here.',
            "integrations[0].type",
        ),
    ],
)
def test_bad_requests_are_refused_and_queue_nothing(
    api: Any, tiny_base: Any, good_file: File, body: dict[str, Any], status: int, message: str, param: str
) -> None:
    body = {k: (good_file.public_id if v == "F" else v) for k, v in body.items()}
    response = post(api, body)
    assert response.status_code == status, response.content
    assert error(response)["message"] == message
    assert error(response)["param"] == param
    assert not Job.objects.exists()


def test_a_file_that_failed_validation_is_refused(api: Any, tiny_base: Any, alice_project: Any) -> None:
    bad = make_file(alice_project, status=FileStatus.ERROR)
    response = post(api, {"model": "tiny-bert", "training_file": bad.public_id})
    assert response.status_code == 400
    assert error(response) == {
        "message": f"File {bad.public_id} failed validation (2 errors (first: line 3: label is empty)). "
        "Fix it and upload it again.",
        "type": "invalid_request_error",
        "param": "training_file",
        "code": "invalid_request",
    }


def test_a_file_of_another_project_is_refused(api: Any, tiny_base: Any, carol_project: Any) -> None:
    theirs = make_file(carol_project)
    response = post(api, {"model": "tiny-bert", "training_file": theirs.public_id})
    assert response.status_code == 400
    assert error(response)["param"] == "training_file"


def test_chat_data_does_not_fit_a_classifier(api: Any, tiny_base: Any, alice_project: Any) -> None:
    chat = make_file(alice_project, fmt="chat_jsonl")
    response = post(api, {"model": "tiny-bert", "training_file": chat.public_id})
    assert response.status_code == 400
    assert error(response)["message"] == (
        f"File {chat.public_id} is chat JSONL, but classification needs classification CSV or classification JSONL."
    )


def test_estimate_starts_nothing(api: Any, tiny_base: Any, good_file: File) -> None:
    response = post(
        api,
        {
            "model": "tiny-bert",
            "training_file": good_file.public_id,
            "hyperparameters": {"n_epochs": 2, "batch_size": 10},
        },
        "/v1/fine_tuning/jobs/estimate",
    )
    assert response.status_code == 200
    body = response.json()
    # 100 rows, 10% held out → 90 examples × (10 + 2 special tokens) × 2 epochs
    assert body["trained_tokens"] == 90 * 12 * 2
    assert body["steps"] == 9 * 2
    assert body["estimated_cost"] == 2 * 90 * 12 * 2  # $2 per 1M tokens = 2 micro-dollars a token
    assert body["allowed_to_proceed"] is True
    assert not Job.objects.exists()


def test_the_estimated_time_counts_each_step_as_well_as_each_example(
    api: Any, tiny_base: Any, good_file: File, settings: Any
) -> None:
    # given a worker that trains 30 examples a second and spends 0.5 s on each optimizer step
    settings.WORKER_THROUGHPUT = {"classification": 30.0}
    settings.WORKER_STEP_SECONDS = {"classification": 0.5}

    def estimated(hyperparameters: dict[str, Any]) -> dict[str, Any]:
        body = {
            "model": "tiny-bert",
            "training_file": good_file.public_id,
            "hyperparameters": hyperparameters,
        }
        response = post(api, body, "/v1/fine_tuning/jobs/estimate")
        assert response.status_code == 200, response.content
        return dict(response.json())

    # when the same 90 training examples × 2 epochs run in batches of 10, and of 1
    big, small = estimated({"n_epochs": 2, "batch_size": 10}), estimated({"n_epochs": 2, "batch_size": 1})
    auto = estimated({"n_epochs": 2})

    # then the examples take 180 / 30 = 6 s either way, and the steps 18 × 0.5 s or 180 × 0.5 s
    assert (big["steps"], big["estimated_seconds"]) == (18, 6 + 9)
    assert (small["steps"], small["estimated_seconds"]) == (180, 6 + 90)
    # and "auto" picks batch 4 for 100 rows: 23 batches an epoch
    assert auto["hyperparameters"]["batch_size"] == 4
    assert (auto["steps"], auto["estimated_seconds"]) == (46, 6 + 23)


def test_create_returns_the_openai_shape(
    api: Any, tiny_base: Any, good_file: File, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as published:
        response = post(
            api,
            {
                "model": "tiny-bert",
                "training_file": good_file.public_id,
                "seed": 3,
                "hyperparameters": {"n_epochs": 2},
            },
        )
    assert response.status_code == 200
    job = response.json()
    assert len(published) == 1
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued" and job["error"] is None
    assert job["hyperparameters"]["n_epochs"] == 2 and job["seed"] == 3
    # OpenAI's method types have none for a classifier: `method` is left out, not null
    assert "method" not in job and job["method_details"]["type"] == "classification"
    assert job["queue_position"] == 1
    assert job["estimated_cost"] > 0


def test_a_job_waits_for_its_file_validation(
    api: Any, tiny_base: Any, alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    pending = make_file(alice_project, status=FileStatus.UPLOADED)
    with django_capture_on_commit_callbacks(execute=False) as published:
        response = post(api, {"model": "tiny-bert", "training_file": pending.public_id})
    assert response.json()["status"] == "validating_files" and not published
    from apps.jobs.fine_tuning import on_file_validated

    File.objects.filter(pk=pending.pk).update(status=FileStatus.PROCESSED)
    pending.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as published:
        on_file_validated(pending)
    assert Job.objects.get().status == "queued" and len(published) == 1


def test_outsiders_get_404_for_every_job_route(
    api: Any, carol_api: Any, tiny_base: Any, good_file: File, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        job_id = post(api, {"model": "tiny-bert", "training_file": good_file.public_id}).json()["id"]
    for method, path in [
        ("get", f"/v1/fine_tuning/jobs/{job_id}"),
        ("post", f"/v1/fine_tuning/jobs/{job_id}/cancel"),
        ("post", f"/v1/fine_tuning/jobs/{job_id}/pause"),
        ("post", f"/v1/fine_tuning/jobs/{job_id}/resume"),
        ("get", f"/v1/fine_tuning/jobs/{job_id}/events"),
        ("get", f"/v1/fine_tuning/jobs/{job_id}/checkpoints"),
    ]:
        response = getattr(carol_api, method)(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["message"] == f"No such fine-tuning job: '{job_id}'."
    assert carol_api.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert Job.objects.get().status == "queued"


def test_models_list_the_catalog_and_own_models_only(
    api: Any, carol_api: Any, alice_org: Any, alice_project: Any, catalog: None
) -> None:
    from apps.registry.models import Model

    Model.objects.create(
        name="ft:minilm-l6:acme::ftjob-1",
        organization=alice_org,
        project=alice_project,
        task="classification",
    )
    mine = {m["id"] for m in api.get("/v1/models").json()["data"]}
    theirs = {m["id"] for m in carol_api.get("/v1/models").json()["data"]}
    assert {"minilm-l6", "smollm2-135m-instruct", "ft:minilm-l6:acme::ftjob-1"} <= mine
    assert "ft:minilm-l6:acme::ftjob-1" not in theirs
    assert carol_api.get("/v1/models/ft:minilm-l6:acme::ftjob-1").status_code == 404
    assert carol_api.delete("/v1/models/ft:minilm-l6:acme::ftjob-1").status_code == 404
    assert api.delete("/v1/models/minilm-l6").status_code == 400
    assert api.delete("/v1/models/ft:minilm-l6:acme::ftjob-1").json() == {
        "id": "ft:minilm-l6:acme::ftjob-1",
        "object": "model",
        "deleted": True,
    }


@pytest.mark.parametrize(
    ("lora", "message", "param"),
    [
        ({"r": 0}, "lora.r must be an integer between 1 and", "method.supervised.lora.r"),
        (
            {"dropout": 1},
            "lora.dropout must be a number from 0 up to (not including) 1.",
            "method.supervised.lora.dropout",
        ),
        ({"rank": 4}, "Unknown LoRA option 'rank'", "method.supervised.lora.rank"),
        (
            {"target_modules": ["q_proj\n"]},
            "lora.target_modules: 'q_proj\\n' is not a module name (letters, digits, '_' and '.').",
            "method.supervised.lora.target_modules",
        ),
    ],
)
def test_bad_lora_options_are_refused(
    api: Any, catalog: None, alice_project: Any, lora: dict[str, Any], message: str, param: str
) -> None:
    chat = make_file(alice_project, fmt="chat_jsonl")
    body = {
        "model": "smollm2-135m-instruct",
        "training_file": chat.public_id,
        "method": {"type": "supervised", "supervised": {"lora": lora}},
    }
    response = post(api, body)
    assert response.status_code == 400
    assert error(response)["message"].startswith(message)
    assert error(response)["param"] == param
    assert not Job.objects.exists()


def test_a_classifier_takes_lora_at_the_adapter_rate_and_its_options_are_checked(
    api: Any, tiny_base: Any, good_file: File
) -> None:
    def create(lora: Any) -> Any:
        method = {"type": "classification", "classification": {"lora": lora}}
        return post(api, {"model": "tiny-bert", "training_file": good_file.public_id, "method": method})

    refused = create({"r": 4, "target_modules": "query"})
    assert refused.status_code == 400
    assert error(refused)["message"].startswith('lora.target_modules must be "all-linear" or a list of 1 to')
    assert error(refused)["param"] == "method.classification.lora.target_modules"
    assert not Job.objects.exists()

    accepted = create({"r": 4, "target_modules": ["query", "value"]})

    assert accepted.status_code == 200, accepted.content
    job = accepted.json()
    details = job["method_details"]["classification"]
    assert details["hyperparameters"]["learning_rate"] == 1e-3  # the adapter's base rate, not 5e-5
    assert job["hyperparameters"]["learning_rate_multiplier"] == 1
    assert details["lora"] == {"r": 4, "target_modules": ["query", "value"]}
    stored = Job.objects.get(public_id=job["id"]).request["method"]["classification"]
    assert stored["lora"] == {"r": 4, "target_modules": ["query", "value"]}


def test_an_empty_integrations_list_is_stored_and_read_back(
    api: Any, tiny_base: Any, alice_org: Any, good_file: File
) -> None:
    use_plan(alice_org, "pro")  # two jobs at once
    given = post(api, {"model": "tiny-bert", "training_file": good_file.public_id, "integrations": []})
    omitted = post(api, {"model": "tiny-bert", "training_file": good_file.public_id})

    assert given.status_code == 200, given.content
    assert given.json()["integrations"] == []
    assert api.get(f"/v1/fine_tuning/jobs/{given.json()['id']}").json()["integrations"] == []
    assert omitted.json()["integrations"] is None


def test_a_lora_job_reads_back_its_multiplier_against_the_lora_base_rate(
    api: Any, catalog: None, alice_org: Any, alice_project: Any
) -> None:
    # given a chat file of 100 rows, on a plan that runs two jobs at once
    use_plan(alice_org, "pro")
    chat = make_file(alice_project, fmt="chat_jsonl")

    def create(supervised: dict[str, Any]) -> dict[str, Any]:
        body = {
            "model": "smollm2-135m-instruct",
            "training_file": chat.public_id,
            "method": {"type": "supervised", "supervised": supervised},
        }
        response = post(api, body)
        assert response.status_code == 200, response.content
        return dict(response.json())

    # when a LoRA job and a full fine-tune each ask for twice the base rate
    lora = create({"lora": {}, "hyperparameters": {"learning_rate_multiplier": 2}})
    full = create({"hyperparameters": {"learning_rate_multiplier": 2}})

    # then each trains at twice its own base (1e-3 for an adapter, 5e-5 for every weight), each
    # reads back the multiplier it was given, and "auto" gave 100 rows batches of 4
    assert lora["method_details"]["supervised"]["hyperparameters"]["learning_rate"] == 2e-3
    assert full["method_details"]["supervised"]["hyperparameters"]["learning_rate"] == 1e-4
    for job in (lora, full):
        assert job["hyperparameters"]["learning_rate_multiplier"] == 2
        assert job["method"]["supervised"]["hyperparameters"] == job["hyperparameters"]
        assert job["hyperparameters"]["batch_size"] == 4

    # and a job created before the base rate was stored reads its rate against the 5e-5 it used
    Job.objects.filter(public_id=lora["id"]).update(
        request={**Job.objects.get(public_id=lora["id"]).request, "base_learning_rate": None},
        hyperparameters={**Job.objects.get(public_id=lora["id"]).hyperparameters, "learning_rate": 5e-5},
    )
    old = api.get(f"/v1/fine_tuning/jobs/{lora['id']}").json()
    assert old["hyperparameters"]["learning_rate_multiplier"] == 1


def test_a_file_validated_while_its_job_is_being_submitted_does_not_leave_the_job_waiting(
    alice: Any, alice_project: Any, tiny_base: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.core.files.base import ContentFile

    from apps.jobs import fine_tuning
    from tests.conftest import sentiment_csv
    from workers.tasks import validate_file

    # given a file just uploaded, its validation still running
    file = File(project=alice_project, filename="train.csv", purpose="fine-tune", status=FileStatus.UPLOADED)
    file.content.save("train.csv", ContentFile(sentiment_csv(40)), save=False)
    file.save()
    body = {"model": "tiny-bert", "training_file": file.public_id}
    with django_capture_on_commit_callbacks(execute=False) as published:
        # when the request is read while the file is still uploaded (the SDK sends it right after the
        # upload), the validation ends and looks for the jobs waiting on the file (none yet), and then
        # the job is created
        parsed = fine_tuning.parse(alice_project, body)
        validate_file(file.public_id)
        job = fine_tuning.submit(parsed, project=alice_project, user=alice)
    # then the job is queued at once, with the estimate and hyperparameters of the validated file,
    # instead of waiting for a validation that has already ended
    assert job.status == JobStatus.QUEUED and len(published) == 1
    expected = fine_tuning.estimate(fine_tuning.parse(alice_project, {**body, "seed": job.seed}))
    assert job.estimated_cost == expected["estimated_cost"] > 0
    assert job.hyperparameters == expected["hyperparameters"]


@pytest.mark.parametrize(
    ("devices", "method", "message"),
    [
        (0, "classification", "devices must be a whole number, 1 or more."),
        ("2", "classification", "devices must be a whole number, 1 or more."),
        (True, "classification", "devices must be a whole number, 1 or more."),
        (1.5, "classification", "devices must be a whole number, 1 or more."),
        (3, "classification", "devices must be at most 2: the most devices one training worker here has."),
        (2, "dpo", "Method 'dpo' trains on one device: devices must be 1."),
    ],
)
def test_bad_devices_are_refused(
    api: Any,
    catalog: None,
    tiny_base: Any,
    settings: Any,
    good_file: File,
    devices: Any,
    method: str,
    message: str,
) -> None:
    settings.TRAINING_MAX_DEVICES = 2
    body: dict[str, Any] = {"model": "tiny-bert", "training_file": good_file.public_id, "devices": devices}
    if method == "dpo":
        body["model"], body["method"] = "smollm2-135m-instruct", {"type": "dpo"}
    response = post(api, body)
    assert response.status_code == 400
    assert error(response) == {
        "message": message,
        "type": "invalid_request_error",
        "param": "devices",
        "code": "invalid_request",
    }
    assert not Job.objects.exists()


def test_devices_are_stored_and_read_back(
    api: Any, tiny_base: Any, alice_org: Any, settings: Any, good_file: File
) -> None:
    settings.TRAINING_MAX_DEVICES = 2
    use_plan(alice_org, "pro")  # two jobs at once
    two = post(api, {"model": "tiny-bert", "training_file": good_file.public_id, "devices": 2})
    default = post(api, {"model": "tiny-bert", "training_file": good_file.public_id})
    assert two.status_code == 200, two.content
    assert two.json()["devices"] == 2 and default.json()["devices"] == 1
    assert api.get(f"/v1/fine_tuning/jobs/{two.json()['id']}").json()["devices"] == 2
