"""Load shedding: past INFERENCE_MAX_QUEUED requests waiting for a worker, a new inference request
is refused at once with 503 and retry-after, before it is counted against any limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from apps.core import broker
from apps.jobs.models import Job
from tests.conftest import purge_queues


@pytest.fixture
def waiting_requests(db: None) -> Iterator[Any]:
    """Puts n messages in the serve queue, as requests nobody has taken yet; empties it afterwards."""
    purge_queues()

    def add(n: int) -> None:
        for _ in range(n):
            assert broker.send_now("jobs.run_inference", ["clfjob-nobody", 1])

    yield add
    purge_queues()


def rate_counters(organization_id: int) -> list[bytes]:
    """The organization's rate-limit counters in Redis (emptied before every test)."""
    from apps.core.redis import client

    return list(client().scan_iter(match=f"mw:rl:org:{organization_id}:*"))


def classify(api: Any, model: str) -> Any:
    return api.post("/v1/classifications", {"model": model, "input": ["where is my invoice"]}, format="json")


def test_a_full_queue_sheds_a_new_request_with_503_and_retry_after(
    api: Any, tiny_classifier: Any, waiting_requests: Any, settings: Any
) -> None:
    settings.INFERENCE_MAX_QUEUED = 3
    waiting_requests(3)

    response = classify(api, tiny_classifier.name)

    assert response.status_code == 503
    assert response["retry-after"] == "2"
    assert response.json()["error"] == {
        "message": f"More requests are waiting for {tiny_classifier.name} than its workers can take right now. "
        "Retry in 2 s.",
        "type": "server_error",
        "param": None,
        "code": "server_overloaded",
    }
    assert not Job.objects.exists()
    assert rate_counters(tiny_classifier.organization_id) == []  # shed before any limit counted it


def test_below_the_limit_a_request_waits_for_its_worker(
    api: Any, tiny_classifier: Any, waiting_requests: Any, settings: Any
) -> None:
    settings.INFERENCE_MAX_QUEUED = 3
    settings.INFERENCE_TIMEOUT_SECONDS = 0.5
    waiting_requests(2)

    response = classify(api, tiny_classifier.name)

    assert response.status_code == 504  # queued, then timed out: no worker runs in this test
    assert rate_counters(tiny_classifier.organization_id) != []  # counted, unlike a shed request
    assert Job.objects.get().status == "cancelled"


def test_the_backlog_counts_every_priority_of_the_queue(waiting_requests: Any) -> None:
    from saas.celery import app

    waiting_requests(2)
    app.send_task("jobs.run_inference", args=["clfjob-nobody", 1], priority=6)

    assert broker.queue_length("serve") == 3


def test_an_unreachable_broker_sheds_nothing(settings: Any) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    assert broker.queue_length("serve") is None


def test_the_playground_is_shed_like_the_api(
    alice_client: Any,
    alice_project: Any,
    tiny_classifier: Any,
    tiny_chat: Any,
    waiting_requests: Any,
    settings: Any,
) -> None:
    # (one request path for both: apps.jobs.serving, admitted by apps.jobs.admission)
    settings.INFERENCE_MAX_QUEUED = 3
    waiting_requests(3)
    base = f"/projects/{alice_project.public_id}/playground"

    classified = alice_client.post(f"{base}/classify", {"model": tiny_classifier.name, "input": "invoice"})
    chat = alice_client.post(
        f"{base}/chat",
        {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
    )

    assert classified.status_code == 503 and classified["retry-after"] == "2"
    assert (
        f"More requests are waiting for {tiny_classifier.name} than its workers can take right now. Retry in 2 s."
        in classified.content.decode()
    )
    assert chat.status_code == 503 and chat["retry-after"] == "2"
    assert chat.json()["error"]["code"] == "server_overloaded"
    assert not Job.objects.exists()
    assert rate_counters(alice_project.organization_id) == []
