"""A fine-tune that fails blames the customer's data only when the data is at fault: the runtime's
TrainingDataError fails the job as `invalid_training_data` with its message; any other error (a
broken base model, a bug) fails it as `internal_error`, without the customer's file being named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import sentiment_csv
from workers.tasks import run_fine_tune, validate_file

INTERNAL_ERROR = {
    "code": "internal_error",
    "message": "The job failed because of an internal error. Retry, and contact us with the job id if it persists.",
    "param": None,
}


def uploaded(api: Any, name: str, content: bytes) -> str:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post("/v1/files", {"file": SimpleUploadedFile(name, content), "purpose": "fine-tune"})
    assert response.status_code == 200, response.content
    file_id = str(response.json()["id"])
    validate_file(file_id)
    assert api.get(f"/v1/files/{file_id}").json()["status"] == "processed"
    return file_id


def submitted(api: Any, body: dict[str, Any], capture: Any) -> str:
    with capture(execute=False):  # no worker: the test runs the task itself
        response = api.post("/v1/fine_tuning/jobs", body, format="json")
    assert response.status_code == 200, response.content
    return str(response.json()["id"])


def test_labels_the_training_data_lacks_fail_the_job_as_invalid_training_data(
    api: Any, tiny_base: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given a validation file with a label the training file never has
    training = uploaded(api, "train.csv", sentiment_csv(40))
    validation = uploaded(api, "valid.csv", b"text,label\nwhat a day,neutral\na good day,positive\n")
    job_id = submitted(
        api,
        {"model": "tiny-bert", "training_file": training, "validation_file": validation},
        django_capture_on_commit_callbacks,
    )

    # when a worker runs it
    run_fine_tune(job_id)

    # then the job failed with the runtime's message about the data
    job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "invalid_training_data",
        "message": "the validation data has labels that never occur in the training data: 'neutral'",
        "param": "training_file",
    }


def test_a_lora_module_the_model_lacks_fails_the_job_as_invalid_training_data(
    api: Any, tiny_gpt2_dir: Path, django_capture_on_commit_callbacks: Any
) -> None:
    # given a supervised fine-tune of GPT-2 whose LoRA names a module GPT-2 does not have
    from apps.registry.models import Model

    Model.objects.create(
        name="tiny-gpt2-base",
        task="generation",
        artifact_key=f"local:{tiny_gpt2_dir}",
        context_length=256,
        is_fine_tunable=True,
    )
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": f"good day {i}"},
            ]
        }
        for i in range(12)
    ]
    training = uploaded(api, "chat.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())
    job_id = submitted(
        api,
        {
            "model": "tiny-gpt2-base",
            "training_file": training,
            "method": {"type": "supervised", "supervised": {"lora": {"target_modules": ["q_proj"]}}},
        },
        django_capture_on_commit_callbacks,
    )

    # when a worker runs it
    run_fine_tune(job_id)

    # then the job failed saying which module is missing and which the model has
    job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "invalid_training_data",
        "message": "lora.target_modules: this model has no module named 'q_proj'; "
        "its linear layers are: c_attn, c_fc, c_proj, lm_head",
        "param": "training_file",
    }


def test_a_value_error_that_is_not_about_the_data_fails_the_job_as_an_internal_error(
    api: Any, tiny_bert_dir: Path, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    # given a base model whose files are broken (transformers raises a ValueError loading them)
    from apps.registry.models import Model

    broken = tmp_path / "broken-bert"
    shutil.copytree(tiny_bert_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    Model.objects.create(
        name="broken-bert",
        task="classification",
        artifact_key=f"local:{broken}",
        context_length=128,
        is_fine_tunable=True,
    )
    training = uploaded(api, "train.csv", sentiment_csv(40))
    job_id = submitted(
        api, {"model": "broken-bert", "training_file": training}, django_capture_on_commit_callbacks
    )

    # when a worker runs it, the error reaches the task (and the worker's log)
    with pytest.raises(ValueError, match="no-such-architecture"):
        run_fine_tune(job_id)

    # then the job failed as ours, not as the customer's training data
    job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"] == INTERNAL_ERROR
