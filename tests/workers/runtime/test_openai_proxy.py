"""The OpenAI proxy, driven through the real `openai` SDK against tests/fake_openai.py."""

from __future__ import annotations

import base64
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fake_openai import (
    DEFAULT_REPLY,
    FakeOpenAI,
    FakeResponse,
    chat_chunks,
    chat_completion,
    completion_chunks,
    error,
    fake_vector,
    hang,
    rate_limited,
)
from workers.runtime.openai_proxy import (
    ProxyError,
    make_client,
    proxy_chat,
    proxy_completion,
    proxy_embeddings,
)

CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "temperature": 0.2,
    "user": "org-42",
}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def client_for(fake: FakeOpenAI, timeout_s: float = 5.0, max_retries: int = 2) -> openai.OpenAI:
    return make_client("sk-upstream-secret", fake.base_url, timeout_s=timeout_s, max_retries=max_retries)


def test_a_chat_returns_the_upstream_body_and_usage(fake: FakeOpenAI) -> None:
    fake.script([chat_completion("Hi there!", prompt_tokens=11, completion_tokens=3)])

    result = proxy_chat(client_for(fake), CHAT_BODY)

    assert result.body["choices"][0]["message"]["content"] == "Hi there!"
    assert result.body["object"] == "chat.completion"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 3)
    assert not result.usage.estimated and not result.truncated
    sent = fake.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    assert sent.body == CHAT_BODY  # every parameter passes through, nothing is added


def test_a_streamed_chat_relays_each_chunk_and_assembles_the_body(fake: FakeOpenAI) -> None:
    chunks: list[dict[str, Any]] = []

    result = proxy_chat(client_for(fake), {**CHAT_BODY, "stream": True}, on_chunk=chunks.append)

    content = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert content == DEFAULT_REPLY
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert result.body["choices"][0]["message"] == {
        "role": "assistant",
        "content": DEFAULT_REPLY,
        "refusal": None,
    }
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.usage.completion_tokens == 5 and not result.usage.estimated
    assert not result.truncated
    sent = fake.requests[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_a_rate_limit_is_retried_then_succeeds(fake: FakeOpenAI) -> None:
    fake.script([rate_limited(retry_after_ms=20), chat_completion(prompt_tokens=7, completion_tokens=2)])

    result = proxy_chat(client_for(fake, max_retries=2), CHAT_BODY)

    assert len(fake.requests) == 2
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (7, 2)


def test_a_lasting_rate_limit_becomes_a_retryable_429(fake: FakeOpenAI) -> None:
    fake.script([rate_limited(retry_after_ms=10)] * 3)

    with pytest.raises(ProxyError) as raised:
        proxy_chat(client_for(fake, max_retries=2), CHAT_BODY)

    assert len(fake.requests) == 3
    assert (raised.value.status, raised.value.code, raised.value.retryable) == (
        429,
        "rate_limit_exceeded",
        True,
    )
    assert raised.value.retry_after_s == 1.0


def test_server_errors_become_upstream_error_after_the_retries(fake: FakeOpenAI) -> None:
    # retry-after-ms keeps the SDK's backoff short; real 500s leave it to exponential backoff.
    failing = error(500, "boom", type="server_error", headers={"retry-after-ms": "10"})
    fake.script([failing] * 3)

    with pytest.raises(ProxyError) as raised:
        proxy_chat(client_for(fake, max_retries=2), CHAT_BODY)

    assert len(fake.requests) == 3
    assert (raised.value.status, raised.value.code, raised.value.retryable) == (502, "upstream_error", True)


def test_a_hanging_upstream_times_out(fake: FakeOpenAI) -> None:
    fake.script([hang(10), hang(10)])
    started = time.monotonic()

    with pytest.raises(ProxyError) as raised:
        proxy_chat(client_for(fake, timeout_s=0.4, max_retries=1), CHAT_BODY)

    assert time.monotonic() - started < 4
    assert len(fake.requests) == 2
    assert (raised.value.status, raised.value.code, raised.value.retryable) == (504, "upstream_timeout", True)


def test_a_stream_cut_off_half_way_returns_what_arrived(fake: FakeOpenAI) -> None:
    # given: the role chunk and two words arrive, then the connection drops
    fake.script([chat_chunks("one two three four five", cut_after=3)])
    chunks: list[dict[str, Any]] = []

    # when
    result = proxy_chat(client_for(fake), {**CHAT_BODY, "stream": True}, on_chunk=chunks.append)

    # then
    assert len(chunks) == 3
    assert result.truncated
    assert result.body["choices"][0]["message"]["content"] == "one two"
    assert result.body["choices"][0]["finish_reason"] is None
    assert result.usage.estimated and result.usage.completion_tokens == 2 and result.usage.prompt_tokens > 0
    assert result.body["usage"]["completion_tokens"] == 2
    assert len(fake.requests) == 1  # a started stream is never retried


def test_an_error_event_inside_a_stream_is_a_cut_off(fake: FakeOpenAI) -> None:
    first = chat_chunks("partial answer").chunks or []
    fake.script(
        [FakeResponse(chunks=[*first[:2], {"error": {"message": "overloaded", "type": "server_error"}}])]
    )

    result = proxy_chat(client_for(fake), {**CHAT_BODY, "stream": True}, on_chunk=lambda chunk: None)

    assert result.truncated
    assert result.body["choices"][0]["message"]["content"] == "partial"


def test_a_bad_request_passes_the_upstream_message_through(fake: FakeOpenAI) -> None:
    fake.script([error(400, "Invalid value for 'temperature'.", param="temperature")])

    with pytest.raises(ProxyError) as raised:
        proxy_chat(client_for(fake), CHAT_BODY, on_chunk=lambda chunk: None)

    assert (raised.value.status, raised.value.code, raised.value.param) == (
        400,
        "invalid_request_error",
        "temperature",
    )
    assert raised.value.message == "Invalid value for 'temperature'."
    assert not raised.value.retryable
    assert len(fake.requests) == 1


def test_a_rejected_key_is_an_upstream_auth_error_that_does_not_echo_it(fake: FakeOpenAI) -> None:
    fake.script([error(401, "Incorrect API key provided: sk-upst****cret.", code="invalid_api_key")])

    with pytest.raises(ProxyError) as raised:
        proxy_chat(client_for(fake), CHAT_BODY)

    assert (raised.value.status, raised.value.code) == (502, "upstream_auth_error")
    assert "sk-" not in raised.value.message


def test_an_unreachable_upstream_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client("sk-x", f"http://127.0.0.1:{port}/v1", timeout_s=2, max_retries=0)

    with pytest.raises(ProxyError) as raised:
        proxy_chat(client, CHAT_BODY)

    assert (raised.value.status, raised.value.code, raised.value.retryable) == (
        502,
        "upstream_unavailable",
        True,
    )


def test_a_completion_is_proxied_plain_and_streamed(fake: FakeOpenAI) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello", "max_tokens": 8}
    chunks: list[dict[str, Any]] = []
    fake.script([None, completion_chunks("Hello you", prompt_tokens=3)])

    plain = proxy_completion(client_for(fake), body)
    streamed = proxy_completion(client_for(fake), {**body, "stream": True}, on_chunk=chunks.append)

    assert plain.body["choices"][0]["text"] == DEFAULT_REPLY
    assert plain.usage.prompt_tokens == 2
    assert streamed.body["choices"][0]["text"] == "Hello you"
    assert streamed.body["object"] == "text_completion"
    assert (streamed.usage.prompt_tokens, streamed.usage.completion_tokens) == (3, 2)
    assert fake.requests[1].path == "/v1/completions"


def test_a_request_without_a_model_is_refused_before_calling_upstream(fake: FakeOpenAI) -> None:
    with pytest.raises(ProxyError) as raised:
        proxy_chat(client_for(fake), {"messages": []})

    assert (raised.value.status, raised.value.param) == (400, "model")
    assert fake.requests == []


@pytest.mark.parametrize(
    "url",
    ["http://api.example.com/v1", "https://user:pass@api.example.com/v1", "file:///etc/passwd", "ftp://x/v1"],
)
def test_make_client_refuses_unsafe_base_urls(url: str) -> None:
    with pytest.raises(ValueError):
        make_client("sk-x", url)


def test_make_client_sets_timeout_and_retries() -> None:
    client = make_client("sk-x", None, timeout_s=7.0, max_retries=1)

    assert str(client.base_url).startswith("https://api.openai.com/v1")
    assert client.max_retries == 1
    assert client.timeout.read == 7.0  # type: ignore[union-attr]


def test_embeddings_come_back_as_floats_when_no_format_is_asked(fake: FakeOpenAI) -> None:
    body = {"model": "text-embedding-3-small", "input": ["one two", "three"], "user": "org-42"}

    result = proxy_embeddings(client_for(fake), body)

    assert [item["embedding"] for item in result.body["data"]] == [
        fake_vector("one two"),
        fake_vector("three"),
    ]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (3, 0)
    # OpenAI's default, named: without it the SDK would ask for base64 and decode it itself
    assert fake.requests[0].body == {**body, "encoding_format": "float"}


def test_embeddings_relay_base64_dimensions_and_token_ids_as_sent(fake: FakeOpenAI) -> None:
    body = {
        "model": "text-embedding-3-small",
        "input": [[1, 2, 3]],
        "encoding_format": "base64",
        "dimensions": 8,
    }

    result = proxy_embeddings(client_for(fake), body)

    [item] = result.body["data"]
    assert isinstance(item["embedding"], str)  # relayed, not decoded
    assert base64.b64decode(item["embedding"]) == struct.pack("<8f", *fake_vector([1, 2, 3], 8))
    assert result.usage.prompt_tokens == 3
    assert fake.requests[0].body == body
