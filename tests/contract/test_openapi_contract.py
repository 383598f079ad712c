"""Contract: real /v1/ responses validate against OpenAI's own OpenAPI spec (tests/contract).

Every object here is made through the API of a live server, by a real worker, against the real
database and Redis, then held against the spec's component schema for it. Our extension fields
pass where the spec allows additional properties (all of these schemas do); a schema that forbids
them, a field that is `null` where OpenAI omits it, or a value outside an enum fails with every
violation listed by its JSON path.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.test_sdk_serving import STORY, batch_lines
from tests.conftest import sentiment_csv, wait_for
from tests.contract.openapi import assert_matches, violations

pytestmark = pytest.mark.integration

CHATS = "".join(
    json.dumps(
        {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": f"hi {i}"}]}
    )
    + "\n"
    for i in range(12)
).encode()


def client(live_server: Any, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=live_server.url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def upload(api: httpx.Client, name: str, content: bytes, purpose: str) -> dict[str, Any]:
    created = ok(api.post("/files", files={"file": (name, content)}, data={"purpose": purpose}))
    assert_matches(created, "OpenAIFile")
    return dict(
        wait_for(
            lambda: (f := ok(api.get(f"/files/{created['id']}")))["status"] == "processed" and f, timeout=30
        )
    )


def finished_job(api: Any, job_id: str) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (
                (j := ok(api.get(f"/fine_tuning/jobs/{job_id}")))["status"] in ("succeeded", "failed") and j
            ),
            timeout=120,
        )
    )


def test_the_checker_names_each_violation_by_its_json_path() -> None:
    # A File as we used to send it: `expires_at` and `status_details` null where OpenAI omits them.
    file = {
        "id": "file-1",
        "object": "file",
        "bytes": 3,
        "created_at": 1,
        "expires_at": None,
        "filename": "a.csv",
        "purpose": "fine-tune",
        "status": "processed",
        "status_details": None,
    }
    assert violations(file, "OpenAIFile") == [
        "$.expires_at: None is not of type 'integer'",
        "$.status_details: None is not of type 'string'",
    ]
    # `nullable: true` (OpenAPI 3.0) is read as "or null": a Model's shutdown_date may be null.
    assert (
        violations(
            {"id": "m", "object": "model", "created": 1, "owned_by": "o", "shutdown_date": None}, "Model"
        )
        == []
    )
    # The boolean `exclusiveMinimum` of 3.0: a multiplier of 0.5 passes, 0 does not.
    job_hp = {"n_epochs": "auto", "batch_size": "auto"}
    hp_path = "$.hyperparameters.learning_rate_multiplier"
    body = {"learning_rate_multiplier": 0.5, **job_hp}
    assert not [v for v in violations({"hyperparameters": body}, "FineTuningJob") if v.startswith(hp_path)]
    body = {"learning_rate_multiplier": 0, **job_hp}
    assert [v for v in violations({"hyperparameters": body}, "FineTuningJob") if v.startswith(hp_path)]
    # A missing required field, at the path of the object that lacks it.
    found = violations({"error": {"message": "m", "type": "t", "param": None}}, "ErrorResponse")
    assert found == ["$.error: 'code' is a required property"]


def test_files_fine_tuning_jobs_and_models_match_the_spec(
    live_server: Any, alice_key: str, carol_key: str, celery_worker: Any, tiny_base: Any, tiny_gpt2_dir: Any
) -> None:
    from apps.registry.models import Model

    Model.objects.create(
        name="tiny-gpt2-base",
        task="generation",
        artifact_key=f"local:{tiny_gpt2_dir}",
        context_length=256,
        is_fine_tunable=True,
    )
    api = client(live_server, alice_key)
    # Files: one upload and the list (processed, so with its validation report as an extension)
    csv = upload(api, "train.csv", sentiment_csv(40), "fine-tune")
    assert_matches(csv, "OpenAIFile")
    assert_matches(ok(api.get("/files")), "ListFilesResponse")

    # A classification fine-tune: queued, then finished, with its events and checkpoints
    classifier = ok(
        api.post(
            "/fine_tuning/jobs",
            json={
                "model": "tiny-bert",
                "training_file": csv["id"],
                "metadata": {"team": "search"},
                "method": {"type": "classification", "classification": {"hyperparameters": {"n_epochs": 1}}},
            },
        )
    )
    assert_matches(classifier, "FineTuningJob")
    classifier = finished_job(api, classifier["id"])
    assert classifier["status"] == "succeeded", classifier["error"]
    assert_matches(classifier, "FineTuningJob")
    events = ok(api.get(f"/fine_tuning/jobs/{classifier['id']}/events", params={"limit": 100}))
    assert {e["type"] for e in events["data"]} == {"message", "metrics"}
    assert_matches(events, "ListFineTuningJobEventsResponse")
    for event in events["data"]:
        assert_matches(event, "FineTuningJobEvent")
    checkpoints = ok(api.get(f"/fine_tuning/jobs/{classifier['id']}/checkpoints"))
    assert checkpoints["data"]
    assert_matches(checkpoints, "ListFineTuningJobCheckpointsResponse")
    assert_matches(checkpoints["data"][0], "FineTuningJobCheckpoint")

    # A supervised fine-tune of a causal LM (OpenAI's own kind of job, `method` included)
    chats = upload(api, "chats.jsonl", CHATS, "fine-tune")
    supervised = ok(
        api.post(
            "/fine_tuning/jobs",
            json={
                "model": "tiny-gpt2-base",
                "training_file": chats["id"],
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
            },
        )
    )
    assert supervised["method"]["type"] == "supervised"
    assert_matches(supervised, "FineTuningJob")
    supervised = finished_job(api, supervised["id"])
    assert supervised["status"] == "succeeded", supervised["error"]
    assert_matches(supervised, "FineTuningJob")
    listed = ok(api.get("/fine_tuning/jobs"))
    assert [j["id"] for j in listed["data"]] == [supervised["id"], classifier["id"]]
    assert_matches(listed, "ListPaginatedFineTuningJobsResponse")

    # Models: a fine-tuned one, and the list (catalog and own)
    assert_matches(ok(api.get(f"/models/{classifier['fine_tuned_model']}")), "Model")
    assert_matches(ok(api.get("/models")), "ListModelsResponse")

    # Errors: a missing object, and another organization's
    missing = api.get("/fine_tuning/jobs/ftjob-nope")
    assert missing.status_code == 404
    assert_matches(missing.json(), "ErrorResponse")
    outsider = client(live_server, carol_key).get(f"/fine_tuning/jobs/{classifier['id']}")
    assert outsider.status_code == 404
    assert_matches(outsider.json(), "ErrorResponse")


def stream(api: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """The JSON chunks of a server-sent event stream, up to `data: [DONE]`."""
    chunks: list[Any] = []
    with api.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks


def test_completions_streams_batches_and_errors_match_the_spec(
    live_server: Any, alice_key: str, celery_worker: Any, tiny_chat: Any
) -> None:
    api = client(live_server, alice_key)
    chat = {"model": "tiny-gpt2", "messages": STORY, "max_tokens": 8, "temperature": 0}
    assert_matches(ok(api.post("/chat/completions", json=chat)), "CreateChatCompletionResponse")
    for options in ({}, {"stream_options": {"include_usage": True}}):
        chunks = stream(api, "/chat/completions", {**chat, "stream": True, **options})
        assert len(chunks) > 2
        for chunk in chunks:
            assert_matches(chunk, "CreateChatCompletionStreamResponse")
    completion = {"model": "tiny-gpt2", "prompt": "the movie was", "max_tokens": 8, "temperature": 0}
    assert_matches(ok(api.post("/completions", json=completion)), "CreateCompletionResponse")

    # Batches: one run to the end, one cancelled, and the list
    requests = upload(api, "requests.jsonl", batch_lines(), "batch")
    batch = ok(
        api.post(
            "/batches",
            json={
                "input_file_id": requests["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
    )
    assert_matches(batch, "Batch")
    done = wait_for(
        lambda: (b := ok(api.get(f"/batches/{batch['id']}")))["status"] in ("completed", "failed") and b,
        timeout=90,
    )
    assert done["status"] == "completed"
    assert_matches(done, "Batch")
    many = upload(api, "many.jsonl", batch_lines(64, max_tokens=32), "batch")
    second = ok(
        api.post(
            "/batches",
            json={
                "input_file_id": many["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
    )
    assert_matches(ok(api.post(f"/batches/{second['id']}/cancel")), "Batch")
    cancelled = wait_for(
        lambda: (b := ok(api.get(f"/batches/{second['id']}")))["status"] == "cancelled" and b
    )
    assert "cancelled_at" in cancelled
    assert_matches(cancelled, "Batch")
    assert_matches(ok(api.get("/batches")), "ListBatchesResponse")

    # Errors: a refused request, as the SDK's BadRequestError reads it
    refused = api.post("/chat/completions", json={**chat, "temperature": 3})
    assert refused.status_code == 400
    assert_matches(refused.json(), "ErrorResponse")


def test_evals_runs_and_output_items_match_the_spec(
    live_server: Any, alice_key: str, celery_worker: Any, tiny_chat: Any
) -> None:
    api = client(live_server, alice_key)
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    created = ok(
        api.post(
            "/evals",
            json={
                "name": "contract",
                "data_source_config": {
                    "type": "custom",
                    "item_schema": schema,
                    "include_sample_schema": True,
                },
                "testing_criteria": [
                    {
                        "type": "string_check",
                        "name": "said something",
                        "input": "{{sample.output_text}}",
                        "reference": "",
                        "operation": "ne",
                    },
                    {
                        "type": "text_similarity",
                        "name": "close",
                        "input": "{{sample.output_text}}",
                        "reference": "{{item.q}}",
                        "evaluation_metric": "rouge_l",
                        "pass_threshold": 0.5,
                    },
                ],
                "metadata": {"suite": "contract"},
            },
        )
    )
    assert_matches(created, "Eval")
    assert_matches(ok(api.get("/evals")), "EvalList")
    run = ok(
        api.post(
            f"/evals/{created['id']}/runs",
            json={
                "name": "tiny",
                "data_source": {
                    "type": "completions",
                    "model": "tiny-gpt2",
                    "input_messages": {
                        "type": "template",
                        "template": [{"role": "user", "content": "{{item.q}}"}],
                    },
                    "sampling_params": {"temperature": 0, "max_completion_tokens": 4, "seed": 1},
                    "source": {
                        "type": "file_content",
                        "content": [{"item": {"q": "hello"}}, {"item": {"q": "hi"}}],
                    },
                },
            },
        )
    )
    done = wait_for(
        lambda: (r := ok(api.get(f"/evals/{created['id']}/runs/{run['id']}")))["status"] == "completed" and r,
        timeout=60,
    )
    # `error` is null on a run that did not fail, as OpenAI's own example shows, where the spec types
    # it as an object: the one difference, checked apart.
    assert done["error"] is None
    assert violations({**done, "error": {"code": "", "message": ""}}, "EvalRun") == []
    assert violations({**ok(api.get(f"/evals/{created['id']}/runs")), "data": []}, "EvalRunList") == []
    items = ok(api.get(f"/evals/{created['id']}/runs/{run['id']}/output_items"))
    assert len(items["data"]) == 2
    for item in items["data"]:
        # likewise a sample's `error`, `seed` and `max_completion_tokens` may be null
        sample = {**item["sample"], "error": item["sample"]["error"] or {"code": "", "message": ""}}
        assert violations({**item, "sample": sample}, "EvalRunOutputItem") == []
