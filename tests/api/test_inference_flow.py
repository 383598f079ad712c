"""Serving through real workers: chat, completions, classification, streaming, timeouts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apps.billing.models import UsageRecord
from apps.jobs.models import Job

pytestmark = pytest.mark.integration


def events(response: Any) -> list[Any]:
    raw = b"".join(response.streaming_content).decode()
    assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
    return [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]


def test_chat_completion_and_its_usage(api: Any, celery_worker: Any, tiny_chat: Any) -> None:
    response = api.post(
        "/v1/chat/completions",
        {
            "model": "tiny-gpt2",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 8,
            "temperature": 0,
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] >= 1
    assert response["x-ratelimit-limit-requests"] == "60"  # the Free plan, per key and per organization
    job = Job.objects.get()
    assert job.kind == "generation" and job.status == "succeeded"
    units = dict(UsageRecord.objects.values_list("unit", "quantity"))
    assert units == {
        "input_tokens": body["usage"]["prompt_tokens"],
        "output_tokens": body["usage"]["completion_tokens"],
    }


def test_streaming_joins_to_the_same_text(api: Any, celery_worker: Any, tiny_chat: Any) -> None:
    request = {
        "model": "tiny-gpt2",
        "messages": [{"role": "user", "content": "tell me a story"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    plain = api.post("/v1/chat/completions", request, format="json").json()
    streamed = api.post("/v1/chat/completions", {**request, "stream": True}, format="json")
    assert streamed["Content-Type"] == "text/event-stream"
    chunks = events(streamed)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert final and final[-1]["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]


def test_completions_with_two_prompts(api: Any, celery_worker: Any, tiny_chat: Any) -> None:
    response = api.post(
        "/v1/completions",
        {
            "model": "tiny-gpt2",
            "prompt": ["the movie", "hello"],
            "max_tokens": 5,
            "n": 2,
            "temperature": 0.8,
            "seed": 1,
        },
        format="json",
    )
    body = response.json()
    assert response.status_code == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["object"] == "text_completion"


def test_classification(api: Any, celery_worker: Any, tiny_classifier: Any) -> None:
    response = api.post(
        "/v1/classifications",
        {"model": tiny_classifier.name, "input": ["refund please", "crash"], "top_k": 2},
        format="json",
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["object"] == "classification"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(len(d["labels"]) == 2 for d in body["data"])
    assert dict(UsageRecord.objects.values_list("unit", "quantity"))["classified_texts"] == 2


def test_a_request_that_waits_too_long_gets_504_and_its_job_is_cancelled(
    api: Any, tiny_chat: Any, settings: Any, transactional_db: None
) -> None:
    settings.INFERENCE_TIMEOUT_SECONDS = 1  # no worker is running
    response = api.post(
        "/v1/chat/completions",
        {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}]},
        format="json",
    )
    assert response.status_code == 504
    assert response.json()["error"] == {
        "message": "The model did not answer within 1 seconds. The request was cancelled; retry later.",
        "type": "server_error",
        "param": None,
        "code": "timeout",
    }
    assert Job.objects.get().status == "cancelled"


def generated(raw: bytes) -> bool:
    """Whether a stream so far holds a generated token (not only the role chunk)."""
    chunks = [json.loads(line[6:]) for line in raw.decode().split("\n\n") if line.startswith("data: {")]
    return any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks)


def test_a_project_answering_a_stream_is_not_deleted_before_the_answer_is_billed(
    api: Any, alice: Any, alice_project: Any, celery_worker: Any, tiny_chat: Any
) -> None:
    from apps.core.errors import ActionError
    from apps.jobs.deletion import delete_project

    # given a streamed answer under way
    response = api.post(
        "/v1/chat/completions",
        {
            "model": "tiny-gpt2",
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 200,
            "stream": True,
        },
        format="json",
    )
    assert response.status_code == 200
    chunks = iter(response.streaming_content)
    received = b""
    while not generated(received):
        received += next(chunks)
    # when the owner tries to delete its project (the job, and its bill, would go with it)
    with pytest.raises(ActionError) as refused:
        delete_project(alice, alice_project)
    # then the deletion waits for the answer, which ends as usual and is billed
    assert refused.value.code == "project_in_use" and refused.value.status == 409
    raw = (received + b"".join(chunks)).decode()
    assert raw.endswith("data: [DONE]\n\n"), raw[-300:]
    job = Job.objects.get()
    assert job.status == "succeeded" and job.usage.filter(unit="output_tokens").exists()
    delete_project(alice, alice_project)  # and once it is answered, the project goes


def test_a_request_whose_project_is_deleted_while_it_waits_times_out_without_a_crash(
    api: Any, alice: Any, alice_project: Any, tiny_chat: Any, settings: Any, transactional_db: None
) -> None:
    import threading

    from django.db import connection

    from apps.jobs.deletion import delete_project
    from tests.conftest import wait_for

    settings.INFERENCE_TIMEOUT_SECONDS = 2  # no worker is running

    def delete_once_queued() -> None:
        try:
            wait_for(lambda: Job.objects.exists(), timeout=10)
            delete_project(alice, alice_project)
        finally:
            connection.close()

    deleter = threading.Thread(target=delete_once_queued)
    deleter.start()
    response = api.post(
        "/v1/chat/completions",
        {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}]},
        format="json",
    )
    deleter.join()

    assert response.status_code == 504, response.content
    assert response.json()["error"]["code"] == "timeout"
    assert not Job.objects.exists()
