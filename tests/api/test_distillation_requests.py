"""Distillation requests: every refusal is a clear 4xx naming its parameter, and nothing is queued;
a good request stores the resolved teacher, labels and temperature, and its estimate counts the
teacher's labelling."""

from __future__ import annotations

from typing import Any

import pytest

from apps.jobs.models import Job
from apps.projects.models import File
from apps.registry.models import Model
from tests.api.test_fine_tuning import error, make_file, post


@pytest.fixture
def texts(alice_project: Any) -> File:
    return make_file(alice_project, fmt="text_csv", rows=200)


def distil(file: File | str, **section: Any) -> dict[str, Any]:
    file_id = file if isinstance(file, str) else file.public_id
    return {
        "model": "tiny-bert",
        "training_file": file_id,
        "method": {"type": "distillation", "distillation": section},
    }


TEACHER = "ft:tiny-bert:acme:tickets:ftjob-1"  # the tiny_classifier fixture: billing, bug, praise


@pytest.mark.parametrize(
    ("section", "status", "message", "param"),
    [
        (
            {},
            400,
            "Missing required parameter: 'method.distillation.teacher'.",
            "method.distillation.teacher",
        ),
        (
            {"teacher": "nope"},
            404,
            "The model 'nope' does not exist or you do not have access to it.",
            "method.distillation.teacher",
        ),
        (
            {"teacher": "tiny-bert"},
            400,
            "'tiny-bert' is a base model and cannot label texts; the teacher must be a fine-tuned classifier or a "
            "generation model.",
            "method.distillation.teacher",
        ),
        (
            {"teacher": TEACHER, "labels": ["billing", "bug"]},
            400,
            "labels must be the teacher's own labels (billing, bug, praise), or be left out: a classifier teacher "
            "can only give those.",
            "method.distillation.labels",
        ),
        (
            {"teacher": TEACHER, "temperature": 0},
            400,
            "temperature must be a number greater than 0 and at most 20.",
            "method.distillation.temperature",
        ),
        (
            {"teacher": "tiny-gpt2"},
            400,
            "Missing required parameter: 'method.distillation.labels' (the classes a generation teacher chooses "
            "from).",
            "method.distillation.labels",
        ),
        (
            {"teacher": "tiny-gpt2", "labels": ["a", "b"], "temperature": 2},
            400,
            "temperature applies to a classifier teacher's probabilities; a generation teacher gives one label per "
            "text.",
            "method.distillation.temperature",
        ),
        (
            {"teacher": "tiny-gpt2", "labels": ["only"]},
            400,
            "labels must be a list of 2 to 100 class names.",
            "method.distillation.labels",
        ),
        (
            {"teacher": "tiny-gpt2", "labels": "a,b"},
            400,
            "labels must be a list of 2 to 100 class names.",
            "method.distillation.labels",
        ),
        (
            {"teacher": "tiny-gpt2", "labels": ["spam", " "]},
            400,
            "labels: ' ' is not a class name (a non-blank string of at most 200 characters on one line).",
            "method.distillation.labels",
        ),
        (
            {"teacher": "tiny-gpt2", "labels": ["Spam", "spam "]},
            400,
            "labels lists a class twice (names are compared ignoring case and surrounding spaces).",
            "method.distillation.labels",
        ),
        (
            {"teacher": "tiny-gpt2", "labels": ["a", "b"], "prompt": "x"},
            400,
            "Unknown distillation option 'prompt'; expected one of: teacher, unlabeled_file, labels, temperature, "
            "hyperparameters.",
            "method.distillation.prompt",
        ),
        (
            {"teacher": TEACHER, "unlabeled_file": "file-other"},
            400,
            "training_file and method.distillation.unlabeled_file name different files; give the texts to label "
            "once, as unlabeled_file (training_file may repeat it).",
            "method.distillation.unlabeled_file",
        ),
    ],
)
def test_bad_distillations_are_refused_and_queue_nothing(
    api: Any,
    student_base: Model,
    tiny_classifier: Model,
    tiny_chat: Model,
    texts: File,
    section: dict[str, Any],
    status: int,
    message: str,
    param: str,
) -> None:
    response = post(api, distil(texts, **section))

    assert response.status_code == status, response.content
    assert error(response)["message"] == message
    assert error(response)["param"] == param
    assert not Job.objects.exists()


def test_a_chat_file_cannot_be_distilled(
    api: Any, student_base: Model, tiny_classifier: Model, alice_project: Any
) -> None:
    chat = make_file(alice_project, fmt="chat_jsonl")

    response = post(api, distil(chat, teacher=TEACHER))

    assert response.status_code == 400
    assert error(response)["message"] == (
        f"File {chat.public_id} is chat JSONL, but distillation needs unlabelled text CSV or unlabelled text JSONL or "
        "classification CSV or classification JSONL."
    )
    assert error(response)["param"] == "method.distillation.unlabeled_file"


def test_unlabelled_texts_cannot_train_a_classifier_directly(
    api: Any, student_base: Model, texts: File
) -> None:
    response = post(api, {"model": "tiny-bert", "training_file": texts.public_id})

    assert response.status_code == 400
    assert error(response)["message"] == (
        f"File {texts.public_id} is unlabelled text CSV, but classification needs classification CSV or "
        "classification JSONL."
    )


def test_a_validation_file_is_refused(
    api: Any, student_base: Model, tiny_classifier: Model, texts: File, alice_project: Any
) -> None:
    other = make_file(alice_project, fmt="text_csv")
    body = distil(texts, teacher=TEACHER) | {"validation_file": other.public_id}

    response = post(api, body)

    assert response.status_code == 400
    assert error(response)["message"] == (
        "validation_file is not used by distillation: teacher and student are compared on a held-out part of the "
        "unlabeled_file."
    )


def test_a_base_without_distillation_says_which_methods_it_has(
    api: Any, tiny_base: Model, tiny_classifier: Model, texts: File
) -> None:
    response = post(api, distil(texts, teacher=TEACHER))

    assert response.status_code == 400
    assert error(response)["message"] == (
        "Method 'distillation' is not available for tiny-bert (a classification model); use: classification."
    )


def test_another_organizations_classifier_cannot_teach(
    carol_api: Any, student_base: Model, tiny_classifier: Model, carol_project: Any
) -> None:
    texts = make_file(carol_project, fmt="text_csv")

    response = post(carol_api, distil(texts, teacher=TEACHER))

    assert response.status_code == 404
    assert error(response)["code"] == "model_not_found"
    assert error(response)["param"] == "method.distillation.teacher"


def test_the_plan_must_include_the_teacher(api: Any, student_base: Model, texts: File, catalog: None) -> None:
    # the Free plan leaves out openai:* models
    response = post(api, distil(texts, teacher="openai:gpt-4o-mini", labels=["neg", "pos"]))

    assert response.status_code == 403
    assert error(response)["code"] == "model_not_allowed"
    assert error(response)["param"] == "method.distillation.teacher"
    assert not Job.objects.exists()


def test_a_distillation_stores_its_resolved_teacher_and_labels(
    api: Any, student_base: Model, tiny_classifier: Model, texts: File
) -> None:
    # the unlabeled_file alone names the texts (training_file may be left to it)
    body = {
        "model": "tiny-bert",
        "method": {
            "type": "distillation",
            "distillation": {
                "teacher": TEACHER,
                "unlabeled_file": texts.public_id,
                "hyperparameters": {"n_epochs": 2},
            },
        },
    }

    response = post(api, body)

    assert response.status_code == 200, response.content
    job = response.json()
    assert job["training_file"] == texts.public_id
    assert "method" not in job  # not one of OpenAI's method types: left out
    details = job["method_details"]["distillation"]
    assert {k: details[k] for k in ("teacher", "unlabeled_file", "labels", "temperature")} == {
        "teacher": TEACHER,
        "unlabeled_file": texts.public_id,
        "labels": ["billing", "bug", "praise"],
        "temperature": 2.0,
    }
    assert details["hyperparameters"]["n_epochs"] == 2
    assert job["distillation"] is None  # the comparison comes when the job finishes


def test_the_estimate_counts_the_teachers_labelling(
    api: Any, student_base: Model, tiny_chat: Model, texts: File
) -> None:
    from apps.billing.pricing import cost_of
    from workers.runtime.distill import answer_max_tokens, prompt_overhead_tokens

    labels = ["negative", "positive"]
    estimate = post(
        api, distil(texts, teacher="tiny-gpt2", labels=labels), "/v1/fine_tuning/jobs/estimate"
    ).json()
    plain = post(
        api,
        distil(texts, teacher="tiny-gpt2", labels=labels) | {"method": {"type": "classification"}},
        "/v1/fine_tuning/jobs/estimate",
    )

    # 200 texts of 10 tokens: prompt = text + instructions and labels; answers half the allowed tokens
    teacher = cost_of("tiny-gpt2", "input_tokens", 200 * (10 + prompt_overhead_tokens(labels))) + cost_of(
        "tiny-gpt2", "output_tokens", 200 * (answer_max_tokens(labels) // 2)
    )
    assert estimate["teacher_cost"] == teacher > 0
    assert plain.status_code == 400  # unlabelled texts cannot train a classifier without a teacher
    assert estimate["estimated_cost"] == teacher + cost_of(
        "tiny-bert", "trained_tokens", estimate["trained_tokens"]
    )
