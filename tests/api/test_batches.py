"""Batches through a real worker: results, a bad line in the error file, cancel, outsiders."""

from __future__ import annotations

import io
import json
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
        {"input_file_id": fine_tune.public_id, "endpoint": "/v1/embeddings", "completion_window": "24h"},
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
