"""Batches through a real worker: results, a bad line in the error file, cancel, outsiders."""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any

import pytest

from tests.conftest import wait_for


def upload_batch(api: Any, lines: list[dict[str, Any]]) -> str:
    handle = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    handle.name = "batch.jsonl"
    file_id = api.post("/v1/files", {"file": handle, "purpose": "batch"}, format="multipart").json()["id"]
    return str(file_id)


def content(api: Any, file_id: str) -> bytes:
    return b"".join(api.get(f"/v1/files/{file_id}/content").streaming_content)


def chat_line(custom_id: str, content: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "tiny-gpt2",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        **extra,
    }
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


@pytest.mark.integration
def test_a_batch_runs_and_a_bad_line_lands_in_the_error_file(
    api: Any, celery_worker: Any, tiny_chat: Any
) -> None:
    file_id = upload_batch(
        api, [chat_line("a", "hello"), chat_line("b", "hi", temperature=9), chat_line("c", "yo")]
    )
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    created = api.post(
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        format="json",
    )
    assert created.status_code == 200, created.content
    batch_id = created.json()["id"]
    done = wait_for(
        lambda: (b := api.get(f"/v1/batches/{batch_id}").json())["status"] == "completed" and b, timeout=60
    )
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert done["model"] == "tiny-gpt2"
    output = [json.loads(x) for x in content(api, done["output_file_id"]).splitlines()]
    errors = [json.loads(x) for x in content(api, done["error_file_id"]).splitlines()]
    assert [line["custom_id"] for line in output] == ["a", "c"]
    assert output[0]["response"]["status_code"] == 200
    assert output[0]["response"]["body"]["object"] == "chat.completion"
    assert [line["custom_id"] for line in errors] == ["b"]
    assert (
        errors[0]["response"]["body"]["error"]["message"] == "temperature must be a number between 0 and 2."
    )
    assert done["usage"]["output_tokens"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_an_embeddings_batch_runs_on_minilm(api: Any, celery_worker: Any, catalog: None) -> None:
    def line(custom_id: str, value: Any, **extra: Any) -> dict[str, Any]:
        body = {"model": "minilm-l6", "input": value, **extra}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}

    file_id = upload_batch(
        api,
        [
            line("a", ["a cat sleeps", "a dog barks"]),
            line("b", "word " * 300),
            line("c", "a cat sleeps", encoding_format="base64"),
            line("d", "a cat sleeps", dimensions=128),
        ],
    )
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    created = api.post(
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"},
        format="json",
    )
    assert created.status_code == 200, created.content
    batch_id = created.json()["id"]
    done = wait_for(
        lambda: (b := api.get(f"/v1/batches/{batch_id}").json())["status"] == "completed" and b, timeout=90
    )

    assert done["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert done["model"] == "minilm-l6"
    output = {x["custom_id"]: x for x in map(json.loads, content(api, done["output_file_id"]).splitlines())}
    errors = {x["custom_id"]: x for x in map(json.loads, content(api, done["error_file_id"]).splitlines())}
    floats = output["a"]["response"]["body"]
    assert floats["object"] == "list" and floats["model"] == "minilm-l6"
    assert [item["index"] for item in floats["data"]] == [0, 1]
    assert all(len(item["embedding"]) == 384 for item in floats["data"])
    encoded = output["c"]["response"]["body"]["data"][0]["embedding"]
    assert list(struct.unpack("<384f", base64.b64decode(encoded))) == floats["data"][0]["embedding"]
    assert errors["b"]["response"]["status_code"] == 400
    assert errors["b"]["response"]["body"]["error"]["message"] == (
        "input[0] is 302 tokens long; minilm-l6 reads at most 256 tokens per input. Shorten or split it."
    )
    assert errors["d"]["response"]["body"]["error"]["message"] == (
        "dimensions must be 384 for minilm-l6: it makes 384-dimensional embeddings only."
    )
    tokens = sum(output[c]["response"]["body"]["usage"]["prompt_tokens"] for c in ("a", "c"))
    assert done["usage"]["input_tokens"] == tokens > 0


def test_batch_requests_are_checked(api: Any, alice_project: Any) -> None:
    from tests.api.test_fine_tuning import make_file

    fine_tune = make_file(alice_project)
    response = api.post(
        "/v1/batches",
        {
            "input_file_id": fine_tune.public_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"File {fine_tune.public_id} has purpose 'fine-tune'; batches need purpose 'batch'."
    )
    response = api.post(
        "/v1/batches",
        {"input_file_id": fine_tune.public_id, "endpoint": "/v1/moderations", "completion_window": "24h"},
        format="json",
    )
    assert response.json()["error"]["param"] == "endpoint"


def test_outsiders_get_404_for_batches(
    api: Any, carol_api: Any, alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from tests.api.test_fine_tuning import make_file

    batch_file = make_file(alice_project, fmt="batch_jsonl", purpose="batch")
    with django_capture_on_commit_callbacks(execute=False):
        batch_id = api.post(
            "/v1/batches",
            {
                "input_file_id": batch_file.public_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
            format="json",
        ).json()["id"]
    assert carol_api.get(f"/v1/batches/{batch_id}").status_code == 404
    assert carol_api.post(f"/v1/batches/{batch_id}/cancel").status_code == 404
    assert carol_api.get("/v1/batches").json()["data"] == []
    cancelled = api.post(f"/v1/batches/{batch_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
