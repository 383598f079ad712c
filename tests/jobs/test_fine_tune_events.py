"""What a fine-tune tells its customer, with a real worker: every step's metrics (for the curve and
the results file), milestones, a final step and percent that agree, and no path of the worker in
any event or error."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile

from apps.jobs.models import Job
from apps.projects.models import File
from tests.conftest import sentiment_csv, wait_for
from tests.jobs.test_fine_tune_flow import upload
from workers.runners.progress import StepRate, without_paths

# A path as an error or event would quote it: a slash that starts a word, then a folder.
PATH = re.compile(r"(?:^|[\s(:'\"=])/[\w.@-]+/")


def paths_in(text: str) -> list[str]:
    roots = [str(settings.VAR_DIR), str(settings.MEDIA_ROOT), str(settings.MODEL_CACHE_DIR), "/tmp"]
    return [root for root in roots if root in text] + PATH.findall(text)


def processed(api: Any, data: bytes, name: str = "train.csv") -> str:
    file_id = upload(api, data, name)
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=60)
    return file_id


def start(api: Any, file_id: str) -> Job:
    hyperparameters = {"n_epochs": 3, "batch_size": 8, "learning_rate": 0.001}
    body = {
        "model": "tiny-bert",
        "training_file": file_id,
        "method": {"type": "classification", "classification": {"hyperparameters": hyperparameters}},
    }
    response = api.post("/v1/fine_tuning/jobs", body, format="json")
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]
    return wait_for(lambda: (job := Job.objects.get(public_id=job_id)).is_finished and job, timeout=180)


@pytest.mark.integration
def test_a_fine_tune_reports_every_step_and_milestones_and_names_no_path(
    api: Any, celery_worker: Any, tiny_base: Any
) -> None:
    # given 80 rows: 72 to train on in batches of 8, 3 epochs = 27 steps; 8 held out
    job = start(api, processed(api, sentiment_csv(80)))

    # then it succeeded, at its last step and 100%
    assert job.status == "succeeded", job.error
    assert (job.progress["step"], job.progress["total_steps"], job.progress["percent"]) == (27, 27, 100.0)
    assert job.result["validation_examples"] == 8
    # every step's metrics are recorded, once each
    steps = [
        e.data["step"] for e in job.events.filter(type="metrics").order_by("id") if "valid_loss" not in e.data
    ]
    assert steps == sorted(steps) and steps == list(range(1, 28))
    # and the results file has them all
    results = File.objects.get(public_id=job.result_files[0])
    rows = list(csv.DictReader(io.StringIO(results.content.open("rb").read().decode())))
    assert [int(row["step"]) for row in rows] == list(range(1, 28))
    assert all(row["train_loss"] for row in rows)
    assert [row["step"] for row in rows if row["valid_loss"]] == ["9", "18", "27"]
    # milestones: queued, started, each evaluation, checkpoints, the end
    messages = [e.message for e in job.events.order_by("id")]
    assert messages[0] == "Created fine-tuning job." and messages[-1] == "The job has successfully completed."
    assert "Attempt 1 started." in messages
    assert sum(message.startswith("Epoch ") and " evaluated: " in message for message in messages) == 3
    assert sum(message.startswith("Checkpoint saved at step ") for message in messages) == 3
    assert any(
        re.fullmatch(r"Saved the model from step \d+, the best by validation loss\.", m) for m in messages
    )
    # and nothing the customer reads names a path of the worker
    assert not [(m, paths_in(m)) for m in messages if paths_in(m)]


@pytest.mark.integration
def test_a_failing_fine_tune_says_why_without_a_path(api: Any, celery_worker: Any, tiny_base: Any) -> None:
    # given a training file that passed validation, then lost a row's text in storage
    file_id = processed(api, sentiment_csv(80))
    file = File.objects.get(public_id=file_id)
    lines = file.content.open("rb").read().decode().splitlines()
    lines[2] = ",positive"  # line 3
    name = file.content.name
    file.content.storage.delete(name)
    assert file.content.storage.save(name, ContentFile(("\n".join(lines) + "\n").encode())) == name

    # when
    job = start(api, file_id)

    # then
    assert job.status == "failed"
    assert job.error == {
        "code": "invalid_training_data",
        "message": 'training file, line 3: "text" is missing or empty',
        "param": "training_file",
    }
    assert job.events.filter(
        message='Training failed: training file, line 3: "text" is missing or empty'
    ).exists()
    assert not [(e.message, paths_in(e.message)) for e in job.events.all() if paths_in(e.message)]


@pytest.mark.integration
@pytest.mark.parametrize(("name", "delimiter"), [("reviews.csv", ";"), ("reviews.tsv", "\t")])
def test_a_file_validated_with_another_delimiter_trains_with_it(
    api: Any, celery_worker: Any, tiny_base: Any, name: str, delimiter: str
) -> None:
    # a spreadsheet's export: texts with commas, in columns split by ";" (or tabs, in a .tsv)
    rows = sentiment_csv(40).decode().splitlines()
    data = "\n".join(line.replace(",", delimiter).replace(" the ", ", the ") for line in rows) + "\n"

    job = start(api, processed(api, data.encode(), name))

    assert job.status == "succeeded", job.error
    assert job.result["labels"] == ["negative", "positive"]


def test_a_librarys_message_that_quotes_a_worker_path_keeps_only_the_file_name() -> None:
    work = f"{settings.VAR_DIR}/work/ftjob-abc-1"

    assert without_paths(f"Can't load tokenizer from '{work}/model/tokenizer.json'") == (
        "Can't load tokenizer from 'tokenizer.json'"
    )
    assert without_paths(f"no safetensors weights in {work}/model") == "no safetensors weights in model"
    assert without_paths("/tmp/pytest-1/x/train.csv: bad") == "train.csv: bad"
    assert without_paths('training file, line 3: "text" is missing or empty') == (
        'training file, line 3: "text" is missing or empty'
    )  # nothing to cut
    assert without_paths("Step 3/27 of prompt/completion JSONL") == "Step 3/27 of prompt/completion JSONL"


def test_the_step_rate_settles_rather_than_jumping() -> None:
    rate = StepRate()

    # no rate from the first steps alone
    assert rate.update(0.0, 1) is None
    assert rate.update(0.5, 6) is None  # a window lasts at least a second
    # 10 steps a second for a while
    for second in range(1, 6):
        assert rate.update(float(second), 1 + 10 * second) == pytest.approx(10.0)
    # a window of one slow step (an evaluation) moves it by a fifth of the difference, not all of it
    assert rate.update(9.0, 52) == pytest.approx(10.0 + 0.2 * (1 / 4 - 10.0))
    # and steady steps bring it back
    value = rate.update(10.0, 62)
    assert value is not None and 8 < value < 10
