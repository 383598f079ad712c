"""`openai:*` models through our API and a real worker, with the worker's proxy pointed at a
scripted fake OpenAI on 127.0.0.1 (docs/reliability.md, T35).

Each test starts its own worker whose environment names the fake as `OPENAI_BASE_URL` (and a
platform key, or none). The worker's SDK client has a 2 s timeout and 2 retries in tests.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from apps.billing.models import UsageRecord
from apps.jobs.models import Job
from tests.conftest import Worker, purge_queues, worker_env
from tests.fake_openai import (
    DEFAULT_REPLY,
    FakeOpenAI,
    chat_chunks,
    chat_completion,
    error,
    hang,
    server_error,
)

pytestmark = pytest.mark.integration

MODEL = "openai:gpt-4o-mini"
PLATFORM_KEY = "sk-platform-0123456789abcdef"
ORG_KEY = "sk-org-acme-fedcba9876543210"
# A phrase that must never appear in a log line at INFO or above, on either side.
SECRET = "my-confidential-prompt-zebra-4711"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"say hi {SECRET}"}]
PROMPT_WORDS = 5  # what the fake counts as prompt tokens for MESSAGES


# --- Fixtures --------------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def start_worker(fake: FakeOpenAI, platform_key: str = PLATFORM_KEY) -> Worker:
    purge_queues()
    return Worker(
        env=worker_env(
            {
                "OPENAI_BASE_URL": fake.base_url,
                "OPENAI_API_KEY": platform_key,
                "OPENAI_API_KEY_FILE": "",
                "OPENAI_TIMEOUT_SECONDS": "2",
                "OPENAI_MAX_RETRIES": "2",
            }
        )
    )


@pytest.fixture
def proxy_worker(transactional_db: None, upstream: FakeOpenAI) -> Iterator[Worker]:
    """A worker on both queues whose proxy calls the fake with the platform key."""
    worker = start_worker(upstream)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def web_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def assert_prompt_not_logged(caplog: pytest.LogCaptureFixture, worker: Worker | None = None) -> None:
    """Neither the web side (this process, at INFO) nor the worker (`-l info`) logged the prompt."""
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            line = record.getMessage()
            assert SECRET not in line and PLATFORM_KEY not in line and ORG_KEY not in line, line
    if worker is not None:
        text = worker.log.read_text(errors="replace")
        assert SECRET not in text and DEFAULT_REPLY not in text
        assert PLATFORM_KEY not in text and ORG_KEY not in text


def events(response: Any) -> list[Any]:
    raw = b"".join(response.streaming_content).decode()
    assert raw.endswith("data: [DONE]\n\n"), raw[-300:]
    return [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]


def chat(api: Any, **fields: Any) -> Any:
    return api.post("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, **fields}, format="json")


def usage() -> dict[str, int]:
    return dict(UsageRecord.objects.values_list("unit", "quantity"))


def upstream_calls(fake: FakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/completions")]


def settle(fake: FakeOpenAI, expected: int, seconds: float = 1.0) -> None:
    """No more upstream calls arrive later (no retry behind our back)."""
    time.sleep(seconds)
    assert len(upstream_calls(fake)) == expected, [
        r.headers.get("x-stainless-retry-count") for r in fake.requests
    ]


# --- Tests -----------------------------------------------------------------------------------


def test_a_proxied_chat_completion_bills_the_upstream_usage(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker, web_logs: Any
) -> None:
    response = chat(api, temperature=0.2, max_tokens=20)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"][0]["message"] == {"role": "assistant", "content": DEFAULT_REPLY, "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == PROMPT_WORDS and body["usage"]["completion_tokens"] == 5
    assert response["x-ratelimit-limit-requests"]

    [call] = upstream_calls(upstream)
    assert call.path == "/v1/chat/completions"
    assert call.body["model"] == "gpt-4o-mini"  # our prefix is ours
    assert call.body["messages"] == MESSAGES
    assert call.body["temperature"] == 0.2 and call.body["max_tokens"] == 20
    assert "stream" not in call.body
    assert call.headers["authorization"] == f"Bearer {PLATFORM_KEY}"

    job = Job.objects.get()
    assert job.kind == "generation" and job.status == "succeeded" and job.model_name == MODEL
    assert job.result["usage"] == {"prompt_tokens": PROMPT_WORDS, "completion_tokens": 5}
    records = UsageRecord.objects.filter(job=job)
    assert {r.unit: r.quantity for r in records} == {"input_tokens": PROMPT_WORDS, "output_tokens": 5}
    assert all(r.model_name == MODEL and r.api_key_id == job.api_key_id for r in records)
    assert_prompt_not_logged(web_logs, proxy_worker)


def test_legacy_completions_are_proxied_too(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    response = api.post(
        "/v1/completions", {"model": MODEL, "prompt": "one two three", "max_tokens": 5}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert body["choices"][0]["text"] == DEFAULT_REPLY
    [call] = upstream_calls(upstream)
    assert call.path == "/v1/completions" and call.body["prompt"] == "one two three"
    assert usage() == {"input_tokens": 3, "output_tokens": 5}


def test_an_upstream_answer_holding_a_nul_character_is_stored_and_billed(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    """PostgreSQL's jsonb cannot hold U+0000: the stored answer carries U+FFFD instead, and the job
    (which upstream billed us for) succeeds rather than failing with an internal error."""
    upstream.script([chat_completion(content="odd\u0000byte", completion_tokens=3)])
    response = chat(api)
    assert response.status_code == 200, response.content
    assert response.json()["choices"][0]["message"]["content"] == "odd\ufffdbyte"
    assert Job.objects.get().status == "succeeded"
    assert usage() == {"input_tokens": 9, "output_tokens": 3}


def test_a_stream_is_relayed_chunk_by_chunk(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker, web_logs: Any
) -> None:
    response = chat(api, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["x-ratelimit-limit-requests"]
    chunks = events(response)
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == DEFAULT_REPLY
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) == len(DEFAULT_REPLY.split())  # one event per upstream piece, not buffered
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5

    [call] = upstream_calls(upstream)
    assert call.body["stream"] is True and call.body["stream_options"] == {"include_usage": True}
    job = Job.objects.get()
    assert job.status == "succeeded" and job.result["truncated"] is False
    assert job.result["proxied"]["choices"][0]["message"]["content"] == DEFAULT_REPLY
    assert usage() == {"input_tokens": PROMPT_WORDS, "output_tokens": 5}
    assert_prompt_not_logged(web_logs, proxy_worker)


def test_a_stream_without_include_usage_has_no_usage_only_chunk(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    """We always ask upstream for usage (to bill it); a client that did not ask gets OpenAI's shape."""
    chunks = events(chat(api, stream=True))
    assert all(c["choices"] for c in chunks), chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    [call] = upstream_calls(upstream)
    assert call.body["stream_options"] == {"include_usage": True}
    assert usage() == {"input_tokens": PROMPT_WORDS, "output_tokens": 5}


def test_rate_limited_twice_then_answered(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    # retry-after only (no retry-after-ms): the SDK's own backoff would wait < 1.5 s in total
    limited = error(
        429,
        "Rate limit reached for requests",
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after": "1"},
    )
    upstream.script([limited, limited, None])
    started = time.monotonic()
    response = chat(api)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.content
    calls = upstream_calls(upstream)
    assert len(calls) == 3
    assert [c.headers.get("x-stainless-retry-count") for c in calls] == ["0", "1", "2"]
    assert elapsed >= 2.0, f"retry-after: 1 was not honoured ({elapsed:.2f}s for two waits)"
    settle(upstream, 3, 0.5)
    assert usage() == {"input_tokens": PROMPT_WORDS, "output_tokens": 5}  # billed once
    assert UsageRecord.objects.count() == 2 and Job.objects.get().attempt == 1


def test_upstream_failing_three_times_is_a_502_and_bills_nothing(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    upstream.script([server_error(), server_error(), server_error()])
    response = chat(api)
    assert response.status_code == 502, response.content
    assert response.json()["error"] == {
        "message": "The upstream provider failed (HTTP 500).",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
    settle(upstream, 3)
    job = Job.objects.get()
    assert job.status == "failed" and job.error["code"] == "upstream_error" and job.finished_at
    assert not UsageRecord.objects.exists()


def test_upstream_hanging_is_a_504_and_the_job_fails(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    upstream.script([hang(60), hang(60), hang(60)])
    started = time.monotonic()
    response = chat(api)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.content
    assert response.json()["error"] == {
        "message": "The upstream provider did not answer in time.",
        "type": "server_error",
        "param": None,
        "code": "upstream_timeout",
    }
    # three tries of OPENAI_TIMEOUT_SECONDS=2 plus the SDK's backoff; far from the 60 s hang
    assert 6 <= elapsed < 20, elapsed
    job = Job.objects.get()
    assert job.status == "failed" and job.error["code"] == "upstream_timeout"
    assert job.finished_at is not None and job.lease_owner == ""  # finished, not stuck in running
    assert len(upstream_calls(upstream)) == 3
    assert not UsageRecord.objects.exists()


def test_a_stream_cut_off_half_way_bills_an_estimate_and_tells_the_client(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    """The written policy (workers/runtime/openai_proxy.py): bill what upstream reported; when its
    usage never came, estimate it (prompt = JSON characters / 4, completion = text chunks)."""
    upstream.script([chat_chunks(cut_after=3)])  # the role chunk and two words, then the connection drops
    chunks = events(chat(api, stream=True, stream_options={"include_usage": True}))
    relayed = [c for c in chunks if "choices" in c]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in relayed) == "This is"
    assert not any(c["choices"][0]["finish_reason"] for c in relayed)
    assert chunks[-1]["error"]["code"] == "upstream_error"  # in-band: the answer is incomplete

    job = Job.objects.get()
    assert job.status == "succeeded" and job.result["truncated"] is True  # upstream did the work
    estimated_prompt = math.ceil(len(json.dumps(MESSAGES, ensure_ascii=False)) / 4)
    assert usage() == {"input_tokens": estimated_prompt, "output_tokens": 2}
    assert len(upstream_calls(upstream)) == 1  # a stream is never retried after its first byte


def test_a_stream_cut_after_its_usage_bills_what_upstream_reported(
    api: Any, pro: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    full = chat_chunks(prompt_tokens=11)
    assert full.chunks is not None
    upstream.script([chat_chunks(prompt_tokens=11, cut_after=len(full.chunks))])  # everything but [DONE]
    chunks = events(chat(api, stream=True))
    assert "error" not in chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage() == {"input_tokens": 11, "output_tokens": 5}
    assert Job.objects.get().result["truncated"] is False


def test_the_organizations_own_key_is_used_instead_of_the_platform_key(
    api: Any, pro: Any, alice_org: Any, upstream: FakeOpenAI, proxy_worker: Worker, web_logs: Any
) -> None:
    from apps.core.crypto import encrypt

    alice_org.openai_api_key_encrypted = encrypt(ORG_KEY)
    alice_org.save(update_fields=["openai_api_key_encrypted"])
    assert chat(api).status_code == 200
    assert chat(api, stream=True).status_code == 200
    calls = upstream.wait_for_requests(2)
    assert [c.headers["authorization"] for c in calls] == [f"Bearer {ORG_KEY}"] * 2
    assert ORG_KEY not in json.dumps([j.request for j in Job.objects.all()])  # never stored with the job
    assert_prompt_not_logged(web_logs, proxy_worker)


def test_an_organization_key_that_cannot_be_read_is_refused_not_replaced_by_the_platform_key(
    api: Any, pro: Any, alice_org: Any, upstream: FakeOpenAI, proxy_worker: Worker
) -> None:
    # given alice's key, stored under an encryption key this server no longer has
    from cryptography.fernet import Fernet

    alice_org.openai_api_key_encrypted = Fernet(Fernet.generate_key()).encrypt(ORG_KEY.encode()).decode()
    alice_org.save(update_fields=["openai_api_key_encrypted"])

    response = chat(api)

    assert response.status_code == 400, response.content
    assert response.json()["error"] == {
        "message": "Your organization's stored OpenAI key cannot be read (it was saved under an encryption key "
        "this server no longer has, or it is damaged). An owner or admin must enter it again on the billing "
        "page; until then OpenAI models are refused rather than run on another key.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "openai_key_unreadable",
    }
    assert upstream.requests == []  # never sent on the platform's key
    job = Job.objects.get()
    assert job.status == "failed" and job.error["code"] == "openai_key_unreadable"
    assert not UsageRecord.objects.exists()


NO_KEY = (
    "No OpenAI key is configured, so openai:* models cannot be called. An owner or admin can add the "
    "organization's own key on the dashboard's Billing page (Your own OpenAI key), or whoever runs this server "
    "can set OPENAI_API_KEY."
)


def test_without_any_key_the_request_is_refused(
    api: Any, pro: Any, upstream: FakeOpenAI, transactional_db: None
) -> None:
    worker = start_worker(upstream, platform_key="")
    try:
        response = chat(api)
    finally:
        worker.stop()
    assert response.status_code == 400, response.content
    assert response.json()["error"] == {
        "message": NO_KEY,
        "type": "invalid_request_error",
        "param": "model",
        "code": "provider_not_configured",
    }
    assert upstream.requests == []
    job = Job.objects.get()
    assert job.status == "failed" and job.error["code"] == "provider_not_configured"
    assert not UsageRecord.objects.exists()


def test_no_credit_left_is_refused_before_any_upstream_call(
    api: Any, pro: Any, upstream: FakeOpenAI, transactional_db: None
) -> None:
    pro.spend_limit = 0
    pro.save(update_fields=["spend_limit"])
    response = chat(api)
    assert response.status_code == 429, response.content
    assert response["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert response.json()["error"]["type"] == "insufficient_quota"
    assert not Job.objects.exists()
    assert upstream.requests == []
