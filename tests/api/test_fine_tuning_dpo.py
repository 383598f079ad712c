"""DPO requests: method.dpo parsed and checked completely, its data format required, the job
read back as OpenAI shows it, and another organization's job a 404."""

from __future__ import annotations

from typing import Any

import pytest

from apps.jobs.models import Job
from apps.projects.models import File
from tests.api.test_fine_tuning import error, make_file, post


@pytest.fixture
def preference_file(alice_project: Any) -> File:
    return make_file(alice_project, fmt="preference_jsonl")


def dpo(file: File, hyperparameters: dict[str, Any] | None = None, **section: Any) -> dict[str, Any]:
    return {
        "model": "smollm2-135m-instruct",
        "training_file": file.public_id,
        "method": {"type": "dpo", "dpo": {"hyperparameters": hyperparameters or {}, **section}},
    }


@pytest.mark.parametrize(
    ("hyperparameters", "message", "param"),
    [
        (
            {"beta": 0},
            'beta must be a number greater than 0 and at most 10 or "auto"',
            "hyperparameters.beta",
        ),
        (
            {"beta": 10.5},
            'beta must be a number greater than 0 and at most 10 or "auto"',
            "hyperparameters.beta",
        ),
        (
            {"beta": "high"},
            'beta must be a number greater than 0 and at most 10 or "auto"',
            "hyperparameters.beta",
        ),
        (
            {"beta": True},
            'beta must be a number greater than 0 and at most 10 or "auto"',
            "hyperparameters.beta",
        ),
        (
            {"n_epochs": 0},
            'n_epochs must be an integer between 1 and 50 or "auto"',
            "hyperparameters.n_epochs",
        ),
        (
            {"learning_rate_multiplier": -1},
            'learning_rate_multiplier must be a number greater than 0 or "auto"',
            "hyperparameters.learning_rate_multiplier",
        ),
    ],
)
def test_bad_dpo_hyperparameters_are_refused(
    api: Any, catalog: None, preference_file: File, hyperparameters: dict[str, Any], message: str, param: str
) -> None:
    response = post(api, dpo(preference_file, hyperparameters))

    assert response.status_code == 400
    assert error(response)["message"] == message
    assert error(response)["param"] == param
    assert not Job.objects.exists()


def test_beta_is_refused_outside_dpo(api: Any, catalog: None, alice_project: Any) -> None:
    chat = make_file(alice_project, fmt="chat_jsonl")
    body = {
        "model": "smollm2-135m-instruct",
        "training_file": chat.public_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.2}}},
    }

    response = post(api, body)

    assert response.status_code == 400
    assert error(response)["message"] == (
        'unknown hyperparameter "beta"; expected one of: n_epochs, batch_size, learning_rate_multiplier, '
        "learning_rate, warmup_ratio, weight_decay, max_seq_length, early_stopping_patience, seed, max_grad_norm"
    )
    assert error(response)["param"] == "hyperparameters.beta"


def test_dpo_needs_a_preference_file_and_supervised_refuses_one(
    api: Any, catalog: None, alice_project: Any, preference_file: File
) -> None:
    chat = make_file(alice_project, fmt="chat_jsonl")

    as_dpo = post(api, dpo(chat))
    as_supervised = post(
        api,
        {
            "model": "smollm2-135m-instruct",
            "training_file": preference_file.public_id,
            "method": {"type": "supervised"},
        },
    )

    assert as_dpo.status_code == 400
    assert error(as_dpo) == {
        "message": f"File {chat.public_id} is chat JSONL, but dpo needs preference JSONL.",
        "type": "invalid_request_error",
        "param": "training_file",
        "code": "invalid_request",
    }
    assert as_supervised.status_code == 400
    assert error(as_supervised)["message"] == (
        f"File {preference_file.public_id} is preference JSONL, but supervised needs chat JSONL or "
        "prompt/completion JSONL."
    )
    assert not Job.objects.exists()


def test_dpo_is_refused_on_a_classifier_and_its_fine_tunes(
    api: Any, catalog: None, tiny_base: Any, tiny_classifier: Any, preference_file: File
) -> None:
    from apps.registry.models import Model

    on_classifier = post(api, {**dpo(preference_file), "model": "tiny-bert"})
    Model.objects.filter(pk=tiny_classifier.pk).update(base=tiny_base)
    on_fine_tune = post(api, {**dpo(preference_file), "model": tiny_classifier.name})

    assert on_classifier.status_code == 400
    assert error(on_classifier)["message"] == (
        "Method 'dpo' is not available for tiny-bert (a classification model); use: classification."
    )
    assert on_fine_tune.status_code == 400
    assert error(on_fine_tune) == {
        "message": f"Model '{tiny_classifier.name}' cannot be fine-tuned further: only a fine-tuned generation "
        "model whose base takes fine-tunes can be (with method 'dpo'). Use a base model from GET /v1/models.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "invalid_request",
    }


@pytest.fixture
def alice_sft_model(catalog: None, alice_org: Any, alice_project: Any) -> Any:
    """alice's supervised fine-tune of the catalog's generation base."""
    from apps.registry.models import Model

    base = Model.objects.get(name="smollm2-135m-instruct", organization=None)
    return Model.objects.create(
        name=f"ft:smollm2-135m-instruct:{alice_org.slug}:chat:ftjob-sft",
        organization=alice_org,
        project=alice_project,
        task="generation",
        base=base,
        artifact_key="models/sft",
        context_length=2048,
        limits={"servable": True},
    )


def test_a_fine_tuned_generation_model_takes_dpo_only_and_only_from_its_owner(
    api: Any,
    carol_api: Any,
    carol_project: Any,
    alice_project: Any,
    alice_sft_model: Any,
    preference_file: File,
) -> None:
    chat = make_file(alice_project, fmt="chat_jsonl")
    supervised = post(
        api,
        {"model": alice_sft_model.name, "training_file": chat.public_id, "method": {"type": "supervised"}},
    )
    carol_file = make_file(carol_project, fmt="preference_jsonl")
    base = alice_sft_model.base
    base.limits = {**base.limits, "max_seq_length": 64}
    base.save(update_fields=["limits"])
    outsider = post(carol_api, {**dpo(carol_file), "model": alice_sft_model.name})
    accepted = post(api, {**dpo(preference_file, {"max_seq_length": 128}), "model": alice_sft_model.name})

    assert supervised.status_code == 400
    assert error(supervised)["message"] == (
        "A fine-tuned model can be fine-tuned further with method 'dpo' only, not 'supervised'; "
        "fine-tune smollm2-135m-instruct for 'supervised'."
    )
    assert error(supervised)["param"] == "method.type"
    assert outsider.status_code == 404
    assert error(outsider)["message"] == (
        f"The model '{alice_sft_model.name}' does not exist or you do not have access to it."
    )
    # the catalog base's limits apply
    assert accepted.status_code == 400
    assert error(accepted)["message"] == "max_seq_length must be at most 64 for smollm2-135m-instruct."
    assert not Job.objects.exists()


def test_lora_is_refused_outside_the_methods_that_take_it(
    api: Any, student_base: Any, good_file: Any
) -> None:
    body = {
        "model": "tiny-bert",
        "training_file": good_file.public_id,
        "method": {"type": "distillation", "distillation": {"lora": {}}},
    }

    response = post(api, body)

    assert response.status_code == 400
    assert (
        error(response)["message"]
        == "LoRA is only available for methods 'supervised', 'dpo' and 'classification', not 'distillation'."
    )
    assert error(response)["param"] == "method.distillation.lora"
    assert not Job.objects.exists()


@pytest.fixture
def good_file(alice_project: Any) -> File:
    return make_file(alice_project)


def test_a_dpo_job_reads_back_its_method_with_beta_and_is_a_404_to_an_outsider(
    api: Any, carol_api: Any, catalog: None, preference_file: File
) -> None:
    response = post(
        api, dpo(preference_file, {"n_epochs": 2, "learning_rate_multiplier": 0.5}, lora={"r": 4})
    )

    assert response.status_code == 200, response.content
    job = response.json()
    # OpenAI's shape: method.dpo.hyperparameters, "auto" beta resolved to 0.1
    assert job["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "beta": 0.1}
        },
    }
    details = job["method_details"]
    assert details["type"] == "dpo" and details["dpo"]["lora"] == {"r": 4}
    assert details["dpo"]["hyperparameters"]["beta"] == 0.1
    assert details["dpo"]["hyperparameters"]["learning_rate"] == 5e-4  # half the LoRA base rate
    assert "beta" not in details["dpo"]  # only among the hyperparameters
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["method"] == job["method"]

    for path in ("", "/events", "/checkpoints"):
        outsider = carol_api.get(f"/v1/fine_tuning/jobs/{job['id']}{path}")
        assert outsider.status_code == 404
        assert error(outsider)["code"] == "not_found"
    assert carol_api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 404


def test_a_dpo_estimate_counts_each_pair_and_reads_back_beta(
    api: Any, catalog: None, alice_project: Any
) -> None:
    # given 100 pairs of about 300 tokens each (prompt and both replies), cut at 128 tokens a sequence
    pairs = make_file(alice_project, fmt="preference_jsonl")
    pairs.validation = {**pairs.validation, "stats": {"tokens": {"mean": 300}}}
    pairs.save(update_fields=["validation"])

    response = post(
        api,
        dpo(pairs, {"n_epochs": 2, "batch_size": 10, "beta": 0.3, "max_seq_length": 128}),
        "/v1/fine_tuning/jobs/estimate",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    # 90 pairs (10% held out) × at most two sequences of 128 tokens × 2 epochs, at $3 per 1M tokens
    assert body["trained_tokens"] == 90 * 256 * 2
    assert body["estimated_cost"] == 3 * 90 * 256 * 2
    assert body["steps"] == 9 * 2
    assert body["hyperparameters"]["beta"] == 0.3
    # "auto" max_seq_length (512 for a language model) cuts neither sequence of a 300-token pair
    auto = post(api, dpo(pairs, {"n_epochs": 2, "batch_size": 10}), "/v1/fine_tuning/jobs/estimate").json()
    assert auto["hyperparameters"]["max_seq_length"] == 512
    assert auto["trained_tokens"] == 90 * 302 * 2
    assert not Job.objects.exists()
