"""Contract: the official openai SDK, strict, calling our models through a live server and a worker.

`_strict_response_validation=True` makes the SDK validate every response against its own types,
so a missing or mistyped field fails here, as it would in a typed SDK; `max_retries=0` so an
error surfaces at once instead of being retried.
"""

from __future__ import annotations

import io
import json
from typing import Any

import openai
import pytest
from openai.types import Batch, Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.conftest import wait_for

pytestmark = pytest.mark.integration

CLASSIFIER = "ft:tiny-bert:acme:tickets:ftjob-1"
STORY = [{"role": "user", "content": "please tell me a story about a cat"}]


def sdk(live_server: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=live_server.url + "/v1",
        api_key=key,
        max_retries=0,
        timeout=60,
        _strict_response_validation=True,
    )


def test_chat_completions_plain_and_streamed(
    live_server: Any, alice_key: str, celery_worker: Any, tiny_chat: Any
) -> None:
    client = sdk(live_server, alice_key)
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-gpt2", messages=STORY, max_tokens=12, temperature=0
    )
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-request-id"] and raw.headers["x-ratelimit-limit-requests"]
    plain = raw.parse()
    assert isinstance(plain, ChatCompletion)
    assert plain.id.startswith("chatcmpl-") and plain.model == "tiny-gpt2"
    choice = plain.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert plain.usage is not None and plain.usage.completion_tokens >= 1
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="tiny-gpt2", messages=STORY, max_tokens=12, temperature=0, stream=True
        )
    )
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    last = chunks[-1]
    assert last.choices[0].finish_reason == choice.finish_reason
    assert last.usage is not None and last.usage.completion_tokens == plain.usage.completion_tokens

    # stream_options.include_usage: OpenAI's separate usage chunk (no choices) comes last
    chunks = list(
        client.chat.completions.create(
            model="tiny-gpt2",
            messages=STORY,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    # every other chunk says `usage: null`, so a client adding up the usage it sees counts it once
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert sum(c.usage.total_tokens for c in chunks if c.usage) == plain.usage.total_tokens


def test_legacy_completions_plain_and_streamed(
    live_server: Any, alice_key: str, celery_worker: Any, tiny_chat: Any
) -> None:
    client = sdk(live_server, alice_key)
    plain = client.completions.create(model="tiny-gpt2", prompt="the movie was", max_tokens=8, temperature=0)
    assert isinstance(plain, Completion)
    assert plain.id.startswith("cmpl-") and plain.object == "text_completion"
    assert plain.choices[0].text and plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage is not None and plain.usage.completion_tokens >= 1

    # Legacy completion chunks carry `finish_reason: null` until the last, as OpenAI's own do, but the
    # SDK types it as non-null (openai/openai-openapi#100), so strict validation rejects every real
    # stream; this one part uses a lenient client and checks the shape itself.
    lenient = openai.OpenAI(base_url=live_server.url + "/v1", api_key=alice_key, max_retries=0, timeout=60)
    chunks = list(
        lenient.completions.create(
            model="tiny-gpt2", prompt="the movie was", max_tokens=8, temperature=0, stream=True
        )
    )
    assert all(
        isinstance(c, Completion) and c.object == "text_completion" and c.id == chunks[0].id for c in chunks
    )
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )

    # stream_options.include_usage: the totals once, in a last chunk without choices
    chunks = list(
        lenient.completions.create(
            model="tiny-gpt2",
            prompt="the movie was",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_classifications_through_the_generic_post(
    live_server: Any, alice_key: str, carol_key: str, celery_worker: Any, tiny_classifier: Any
) -> None:
    client = sdk(live_server, alice_key)
    body = client.post(
        "/classifications",
        cast_to=object,
        body={"model": CLASSIFIER, "input": ["refund please", "the app crashes"], "top_k": 2},
    )
    assert isinstance(body, dict)
    assert body["model"] == CLASSIFIER
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        assert len(item["labels"]) == 2
        assert {label["label"] for label in item["labels"]} <= {"billing", "bug", "praise"}
        scores = [label["score"] for label in item["labels"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert body["usage"]["prompt_tokens"] > 0

    outsider = sdk(live_server, carol_key)
    with pytest.raises(openai.NotFoundError) as caught:
        outsider.post(
            "/classifications", cast_to=object, body={"model": CLASSIFIER, "input": "refund please"}
        )
    assert caught.value.code == "model_not_found" and caught.value.param == "model"


def batch_lines(n: int = 3, max_tokens: int = 4) -> bytes:
    texts = ["hello", "tell me a story", "what a day"]
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny-gpt2",
                "messages": [{"role": "user", "content": texts[i % 3]}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_batches_end_to_end(
    live_server: Any, alice_key: str, carol_key: str, celery_worker: Any, tiny_chat: Any
) -> None:
    client = sdk(live_server, alice_key)
    upload = client.files.create(file=("requests.jsonl", io.BytesIO(batch_lines())), purpose="batch")
    upload = client.files.wait_for_processing(upload.id, poll_interval=0.2, max_wait_seconds=30)
    assert upload.status == "processed"

    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "sdk"},
    )
    assert isinstance(batch, Batch)
    assert batch.id.startswith("batch_") and batch.input_file_id == upload.id
    assert batch.endpoint == "/v1/chat/completions" and batch.metadata == {"run": "sdk"}
    assert batch.status in ("validating", "in_progress", "finalizing", "completed")

    done = wait_for(
        lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b, timeout=90
    )
    assert done.status == "completed", done.errors
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 3, 0)
    assert done.output_file_id and done.completed_at
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["req-0", "req-1", "req-2"]
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        ChatCompletion.model_validate(line["response"]["body"])  # a real chat.completion body

    # a second, longer batch (8 chunks of 8 requests), cancelled before it starts or between chunks;
    # a batch this short could otherwise finish before its worker sees the request
    big = client.files.create(
        file=("many.jsonl", io.BytesIO(batch_lines(64, max_tokens=32))), purpose="batch"
    )
    assert (
        client.files.wait_for_processing(big.id, poll_interval=0.2, max_wait_seconds=30).status == "processed"
    )
    second = client.batches.create(
        input_file_id=big.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelling = client.batches.cancel(second.id)
    assert cancelling.id == second.id and cancelling.status in ("cancelling", "cancelled")
    cancelled = wait_for(
        lambda: (b := client.batches.retrieve(second.id)).status == "cancelled" and b, timeout=60
    )
    assert cancelled.cancelled_at
    assert cancelled.request_counts is not None and cancelled.request_counts.completed < 64  # stopped early

    listed = client.batches.list(limit=10)
    assert [b.id for b in listed.data] == [second.id, batch.id]  # newest first
    page = client.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    assert [b.id for b in client.batches.list(limit=1, after=second.id).data] == [batch.id]
    assert {b.id for b in client.batches.list(limit=1)} == {second.id, batch.id}  # the SDK follows the cursor

    outsider = sdk(live_server, carol_key)
    with pytest.raises(openai.NotFoundError):
        outsider.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        outsider.batches.cancel(second.id)
    with pytest.raises(openai.NotFoundError):
        outsider.files.content(done.output_file_id)
    assert outsider.batches.list().data == []


def test_sdk_error_classes(live_server: Any, alice_key: str, transactional_db: None, tiny_chat: Any) -> None:
    client = sdk(live_server, alice_key)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=STORY)
    assert missing.value.status_code == 404
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert missing.value.type == "invalid_request_error" and missing.value.request_id

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-gpt2", messages=STORY, temperature=3)
    assert bad.value.param == "temperature" and bad.value.body["message"] == (
        "temperature must be a number between 0 and 2."
    )
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(
            model="tiny-gpt2", messages=STORY, tools=[{"type": "function", "function": {"name": "f g"}}]
        )
    assert tools.value.param == "tools[0].function.name"
    with pytest.raises(openai.BadRequestError) as token_ids:
        client.completions.create(model="tiny-gpt2", prompt=[1, 2, 3])
    assert token_ids.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as streamed:  # refused before the stream starts
        client.chat.completions.create(model="tiny-gpt2", messages=[], stream=True)
    assert streamed.value.param == "messages"

    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        sdk(live_server, "sk-not-a-real-key").chat.completions.create(model="tiny-gpt2", messages=STORY)
    assert unauthenticated.value.status_code == 401
