"""A fine-tune end to end, with a real worker: upload, submit, run, model, events, checkpoints."""

from __future__ import annotations

import io
from typing import Any

import pytest

from apps.jobs.models import Job
from tests.conftest import billed, sentiment_csv, wait_for

pytestmark = pytest.mark.integration


def upload(api: Any, data: bytes, name: str = "train.csv") -> str:
    handle = io.BytesIO(data)
    handle.name = name
    response = api.post("/v1/files", {"file": handle, "purpose": "fine-tune"}, format="multipart")
    assert response.status_code == 200, response.content
    return response.json()["id"]


def assert_loadable(archive: bytes, tmp_path: Any) -> None:
    import tarfile

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = tar.getnames()
        assert all(".." not in name and not name.startswith("/") for name in names)
        assert not any(name.endswith("trainer_state.pt") for name in names)
        tar.extractall(tmp_path, filter="data")
    [root] = [p for p in tmp_path.iterdir() if p.is_dir()]
    model = AutoModelForSequenceClassification.from_pretrained(root)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    AutoTokenizer.from_pretrained(root)


def test_a_fine_tune_runs_to_a_model(api: Any, celery_worker: Any, tiny_base: Any, tmp_path: Any) -> None:
    # given a validated training file
    file_id = upload(api, sentiment_csv(80))
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    # when a job is created
    response = api.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "tiny-bert",
            "training_file": file_id,
            "suffix": "sent",
            "method": {
                "type": "classification",
                "classification": {
                    "hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate": 0.001}
                },
            },
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]
    # then it succeeds with a model, events, checkpoints and usage
    done = wait_for(
        lambda: (
            (body := api.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"] in ("succeeded", "failed")
            and body
        ),
        timeout=120,
    )
    assert done["status"] == "succeeded", done
    assert done["fine_tuned_model"].startswith("ft:tiny-bert:acme:sent:ftjob-")
    assert done["trained_tokens"] > 0
    assert done["error"] is None
    model = api.get(f"/v1/models/{done['fine_tuned_model']}").json()
    assert model["labels"] == ["negative", "positive"]
    events = api.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=200").json()["data"]
    assert any(e["type"] == "metrics" and "valid_loss" in (e["data"] or {}) for e in events)
    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert checkpoints and checkpoints[0]["step_number"] > 0
    job = Job.objects.get(public_id=job_id)
    assert billed(job) == {"trained_tokens": done["trained_tokens"]}
    # the results file holds the per-step metrics, as OpenAI's does
    results_id, rows_id = done["result_files"]
    rows_csv = b"".join(api.get(f"/v1/files/{rows_id}/content").streaming_content).decode().splitlines()
    assert rows_csv[0] == "line,label,predicted,label_probability,loss,likely_mislabelled,text"
    assert len(rows_csv) - 1 == 8  # the 10% stratified validation split of 80 rows
    losses = [float(r.split(",")[4]) for r in rows_csv[1:]]
    assert losses == sorted(losses, reverse=True)
    results = api.get(f"/v1/files/{results_id}").json()
    assert results["purpose"] == "fine-tune-results" and results["status"] == "processed"
    csv_text = b"".join(api.get(f"/v1/files/{results_id}/content").streaming_content).decode()
    header, *rows = csv_text.splitlines()
    assert (
        header
        == "step,epoch,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,accuracy,f1_macro"
    )
    assert rows and any(row.split(",")[4] for row in rows)  # valid_loss at the evaluated steps
    # the kept checkpoints are callable as models
    names = {m["id"] for m in api.get("/v1/models").json()["data"]}
    assert {c["fine_tuned_model_checkpoint"] for c in checkpoints} <= names
    assert len(checkpoints) <= 2
    # the weights download as a standard transformers directory
    archive = api.get(f"/v1/models/{done['fine_tuned_model']}/content")
    assert archive["Content-Type"] == "application/gzip"
    assert_loadable(b"".join(archive.streaming_content), tmp_path)
