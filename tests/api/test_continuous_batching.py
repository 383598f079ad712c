"""Continuous batching through the API and a real worker: requests that arrive while another one
decodes join its batch at the next step, finish on their own, and answer exactly what they answer
alone (text, finish reason, logprobs to float tolerance), each billed once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import openai
import pytest
from django.conf import settings

from apps.billing.models import UsageRecord
from apps.jobs.models import Job
from tests.conftest import Worker, paced, running_worker

pytestmark = pytest.mark.integration

LONG = "the quick brown fox"  # greedy on the tiny model: it runs to max_tokens (checked below)
SHORT = ["what a wonderful day", "hello how are you", "and the film was"]


def sdk(live_server: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def complete(client: openai.OpenAI, prompt: str, max_tokens: int) -> Any:
    return client.completions.create(
        model="tiny-gpt2", prompt=prompt, max_tokens=max_tokens, temperature=0, logprobs=2
    )


@pytest.fixture
def paced_worker(transactional_db: None) -> Iterator[Worker]:
    """A worker whose decoding steps take at least 0.01 s: the long request's 200 tokens then
    last 2 s or more, long enough for the short ones to arrive, however fast the machine."""
    with running_worker(paced(decode=0.01)) as worker:
        yield worker


def test_requests_that_arrive_mid_flight_join_and_answer_as_they_do_alone(
    live_server: Any, alice_key: str, paced_worker: Any, tiny_chat: Any
) -> None:
    client = sdk(live_server, alice_key)
    alone = {prompt: complete(client, prompt, 12) for prompt in SHORT}
    long_alone = complete(client, LONG, 200)
    assert long_alone.usage.completion_tokens == 200  # it decodes long enough for the others to join
    Job.objects.all().delete()

    # given a long streamed request under way
    long_text: list[str] = []

    def stream_long() -> None:
        for chunk in client.completions.create(
            model="tiny-gpt2", prompt=LONG, max_tokens=200, temperature=0, stream=True
        ):
            if chunk.choices and chunk.choices[0].text:
                long_text.append(chunk.choices[0].text)

    thread = threading.Thread(target=stream_long)
    thread.start()
    deadline = time.monotonic() + 30
    while not long_text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert long_text, "the long request never started"

    # when short requests arrive together while it decodes
    joined: dict[str, Any] = {}

    def send(prompt: str) -> None:
        joined[prompt] = complete(client, prompt, 12)

    shorts = [threading.Thread(target=send, args=(prompt,)) for prompt in SHORT]
    for short in shorts:
        short.start()
    for short in shorts:
        short.join(timeout=60)
    thread.join(timeout=60)
    assert set(joined) == set(SHORT) and len(long_text) > 1

    # then each one queued while the long one still had steps to go started before the long one
    # ended: it joined the batch (the one worker process would otherwise have taken it only after
    # the long one's task). "Still had steps to go": queued a few join polls before its end, since a
    # request the web queues in the long one's last milliseconds finds no loop left to join.
    long_job = Job.objects.get(request__prompts=[LONG])
    assert long_job.finished_at is not None
    last_chance = long_job.finished_at - timedelta(seconds=4 * settings.INFERENCE_JOIN_POLL_SECONDS)
    queued = {prompt: Job.objects.get(request__prompts=[prompt]).queued_at for prompt in SHORT}
    in_time = [prompt for prompt in SHORT if queued[prompt] is not None and queued[prompt] < last_chance]
    assert in_time, "the long request ended before a short one was queued; nothing to test"
    for prompt in in_time:
        short_job = Job.objects.get(request__prompts=[prompt])
        assert short_job.started_at < long_job.finished_at, (
            prompt,
            short_job.started_at,
            long_job.finished_at,
        )
    # and each answers what it answers alone, logprobs to float tolerance
    for prompt in SHORT:
        mine, theirs = joined[prompt].choices[0], alone[prompt].choices[0]
        assert (mine.text, mine.finish_reason) == (theirs.text, theirs.finish_reason)
        assert mine.logprobs is not None and theirs.logprobs is not None
        assert mine.logprobs.tokens == theirs.logprobs.tokens
        assert mine.logprobs.token_logprobs == pytest.approx(theirs.logprobs.token_logprobs, abs=1e-4)
        assert joined[prompt].usage == alone[prompt].usage
    assert "".join(long_text) == long_alone.choices[0].text
    # and each job is billed once, for its own tokens
    jobs = Job.objects.all()
    assert len(jobs) == 1 + len(SHORT) and {job.status for job in jobs} == {"succeeded"}
    for job in jobs:
        units = list(UsageRecord.objects.filter(job=job).values_list("unit", "quantity"))
        assert sorted(units) == sorted(
            [
                ("input_tokens", job.result["usage"]["prompt_tokens"]),
                ("output_tokens", job.result["usage"]["completion_tokens"]),
            ]
        )


def test_with_joining_off_a_request_waits_for_the_running_batch(
    live_server: Any, alice_key: str, tiny_chat: Any, transactional_db: None
) -> None:
    from tests.conftest import Worker, purge_queues, worker_env

    purge_queues()
    worker = Worker(env=worker_env({"INFERENCE_CONTINUOUS_BATCHING": "false"}))
    try:
        client = sdk(live_server, alice_key)
        finished: list[str] = []

        def stream_long() -> None:
            for _ in client.completions.create(
                model="tiny-gpt2", prompt=LONG, max_tokens=200, temperature=0, stream=True
            ):
                if not finished:
                    finished.append("long started")
            finished.append("long done")

        thread = threading.Thread(target=stream_long)
        thread.start()
        deadline = time.monotonic() + 30
        while not finished and time.monotonic() < deadline:
            time.sleep(0.01)
        complete(client, SHORT[0], 12)
        finished.append("short done")
        thread.join(timeout=60)

        assert finished == ["long started", "long done", "short done"]
    finally:
        worker.stop()
