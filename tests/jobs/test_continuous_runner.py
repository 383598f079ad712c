"""The serving decode loop in process: who joins it mid-flight, and who leaves it without a word.

The jobs are rows queued as the API would queue them; the loop runs in this process (no broker),
with the relay watched to act at a given token."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import F
from django.utils import timezone

from apps.billing.models import UsageRecord
from apps.jobs import actions, relay
from apps.jobs.models import Job, JobKind, JobStatus
from workers.runners.inference import run_inference

LONG = "the quick brown fox"  # greedy on the tiny model: it runs to max_tokens


def queue(project: Any, model: Any, prompt: str, max_tokens: int, n: int = 1) -> Job:
    request = {
        "endpoint": "completions",
        "prompts": [prompt],
        "max_tokens": max_tokens,
        "temperature": 0,
        "top_p": 1,
        "n": n,
        "stop": [],
        "seed": None,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "logprobs": False,
        "top_logprobs": 0,
    }
    return Job.objects.create(
        organization=project.organization,
        project=project,
        kind=JobKind.GENERATION,
        model=model,
        model_name=model.name,
        request=request,
        queued_at=timezone.now(),
    )


def watch_relay(monkeypatch: pytest.MonkeyPatch, job: Job, at: int, action: Any) -> list[tuple[str, str]]:
    """Records every relayed event as (job id, type); runs `action()` once `job` has had `at` deltas."""
    events: list[tuple[str, str]] = []
    deltas = [0]

    def push(job_id: str, event: dict[str, Any]) -> None:
        events.append((job_id, event["type"]))
        if job_id == job.public_id and event["type"] == "delta":
            deltas[0] += 1
            if deltas[0] == at:
                action()

    monkeypatch.setattr(relay, "push", push)
    return events


def run_with_a_late_arrival(project: Any, model: Any, leader: Job, monkeypatch: pytest.MonkeyPatch) -> Job:
    """Runs `leader`'s task; another request is queued after its fifth token. Returns that one."""
    late: list[Job] = []
    watch_relay(monkeypatch, leader, 5, lambda: late.append(queue(project, model, "hello", 8)))
    claimed = actions.claim(leader.public_id)
    assert claimed is not None
    run_inference(claimed)
    late[0].refresh_from_db()
    return late[0]


@pytest.mark.parametrize(("n", "joins"), [(1, True), (2, False)])
def test_a_job_queued_mid_flight_joins_only_while_rows_are_free(
    alice_project: Any,
    tiny_chat: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    transactional_db: None,
    n: int,
    joins: bool,
) -> None:
    settings.INFERENCE_MAX_BATCH = 2
    settings.INFERENCE_JOIN_POLL_SECONDS = 0
    # given a running job of n choices, in a batch of at most two rows
    leader = queue(alice_project, tiny_chat, LONG, 60, n=n)
    # when another request is queued while it decodes
    late = run_with_a_late_arrival(alice_project, tiny_chat, leader, monkeypatch)
    # then it joins (and is answered) only where a row was free; else its own message will run it
    assert late.status == (JobStatus.SUCCEEDED if joins else JobStatus.QUEUED)
    leader.refresh_from_db()
    assert leader.status == JobStatus.SUCCEEDED


def test_with_joining_off_a_job_queued_mid_flight_waits(
    alice_project: Any, tiny_chat: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, transactional_db: None
) -> None:
    settings.INFERENCE_CONTINUOUS_BATCHING = False
    settings.INFERENCE_JOIN_POLL_SECONDS = 0
    leader = queue(alice_project, tiny_chat, LONG, 60)
    assert run_with_a_late_arrival(alice_project, tiny_chat, leader, monkeypatch).status == JobStatus.QUEUED


def test_a_job_whose_lease_is_lost_leaves_the_batch_and_writes_nothing(
    alice_project: Any, tiny_chat: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, transactional_db: None
) -> None:
    import time

    settings.JOB_HEARTBEAT_SECONDS = 0.05  # the guard looks at its lease every 50 ms
    kept, lost = queue(alice_project, tiny_chat, LONG, 200), queue(alice_project, tiny_chat, LONG, 200)

    def take_over() -> None:  # another attempt owns `lost` from now on
        Job.objects.filter(pk=lost.pk).update(attempt=F("attempt") + 1)

    events = watch_relay(monkeypatch, kept, 5, take_over)
    original = relay.push
    monkeypatch.setattr(relay, "push", lambda job_id, event: (original(job_id, event), time.sleep(0.005)))
    claimed = actions.claim(kept.public_id)
    assert claimed is not None

    run_inference(claimed)  # claims `lost` too: both decode in one batch

    kept.refresh_from_db()
    lost.refresh_from_db()
    assert kept.status == JobStatus.SUCCEEDED and kept.result["usage"]["completion_tokens"] == 200
    assert lost.status == JobStatus.RUNNING and lost.result is None  # untouched: the new attempt's
    assert not UsageRecord.objects.filter(job=lost).exists()
    assert (lost.public_id, "done") not in events
    lost_deltas = [i for i, (job_id, kind) in enumerate(events) if job_id == lost.public_id]
    assert len(lost_deltas) < 200  # it stopped decoding, not only writing
