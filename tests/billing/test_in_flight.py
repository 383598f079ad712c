"""Each organization may have its plan's number of inference requests in flight at once: one
tenant at its limit leaves the web workers and the queue to the others."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from rest_framework.test import APIClient

from apps.billing import quotas
from apps.billing.models import Plan
from apps.jobs.models import Job

MESSAGES = [{"role": "user", "content": "hi"}]
REFUSAL = (
    "Your organization has 2 requests in progress, the most the Free plan allows at once. Retry after 1 s, "
    "send fewer requests in parallel, or upgrade under Billing."
)


def chat(client: Any, **headers: str) -> Any:
    return client.post(
        "/v1/chat/completions",
        json={"model": "tiny-gpt2", "messages": MESSAGES, "max_tokens": 2},
        headers=headers,
    )


def test_a_tenant_flooding_requests_is_refused_past_its_limit_and_others_are_not(
    live_server: Any,
    alice: Any,
    alice_project: Any,
    carol: Any,
    carol_project: Any,
    tiny_chat: Any,
    settings: Any,
) -> None:
    from apps.projects import actions

    # given plans allowing 2 requests in flight, and no worker: admitted requests wait until they
    # time out, holding their place
    Plan.objects.update(concurrent_requests=2)
    settings.INFERENCE_TIMEOUT_SECONDS = 4
    _, alice_key = actions.create_api_key(alice_project, "flood", alice)
    _, carol_key = actions.create_api_key(carol_project, "calm", carol)
    results: dict[str, list[httpx.Response]] = {"alice": [], "carol": []}
    lock = threading.Lock()

    def ask(who: str, key: str) -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            response = chat(client, Authorization=f"Bearer {key}")
        with lock:
            results[who].append(response)

    # when alice sends six at once, and carol one while alice's wait
    flood = [threading.Thread(target=ask, args=("alice", alice_key)) for _ in range(6)]
    for thread in flood:
        thread.start()
    calm = threading.Thread(target=ask, args=("carol", carol_key))
    calm.start()
    for thread in [*flood, calm]:
        thread.join()
    # then two of alice's were admitted and four refused at once, and carol's was admitted
    assert sorted(r.status_code for r in results["alice"]) == [429, 429, 429, 429, 504, 504]
    refused = next(r for r in results["alice"] if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == {
        "message": REFUSAL,
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert [r.status_code for r in results["carol"]] == [504]
    assert Job.objects.filter(organization=carol_project.organization).count() == 1
    # and once alice's requests ended, their places were free again
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        assert chat(client, Authorization=f"Bearer {alice_key}").status_code == 504


def test_the_playground_counts_against_the_same_limit(
    alice_client: Any, alice_org: Any, alice_project: Any, api: APIClient, tiny_classifier: Any
) -> None:
    Plan.objects.update(concurrent_requests=2)
    subscription = quotas.subscription_for(alice_org)
    held = [quotas.take_request_slot(subscription) for _ in range(2)]  # two requests waiting elsewhere
    url = f"/projects/{alice_project.public_id}/playground/classify"
    refused = alice_client.post(url, {"model": tiny_classifier.name, "input": "my invoice is wrong"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert REFUSAL in refused.content.decode()
    api_refused = api.post(
        "/v1/classifications", {"model": tiny_classifier.name, "input": "x"}, format="json"
    )
    assert api_refused.status_code == 429
    assert not Job.objects.exists()
    for token in held:
        quotas.release_request_slot(subscription, token)


def test_a_place_held_by_a_process_that_died_frees_itself(alice_org: Any, settings: Any) -> None:
    from apps.billing import ratelimit

    Plan.objects.update(concurrent_requests=1)
    subscription = quotas.subscription_for(alice_org)
    scope = f"org:{alice_org.pk}"
    lifetime = settings.INFERENCE_TIMEOUT_SECONDS + 30
    # a slot taken long ago by a web process that died before releasing it
    assert ratelimit.take_slot(scope, 1, lifetime, now=1_000_000.0) is not None
    assert ratelimit.take_slot(scope, 1, lifetime, now=1_000_000.0 + lifetime - 1) is None
    assert ratelimit.take_slot(scope, 1, lifetime, now=1_000_000.0 + lifetime + 1) is not None
    ratelimit.client().delete(f"mw:rl:{scope}:inflight")
    assert quotas.take_request_slot(subscription)
