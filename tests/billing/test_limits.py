"""Limits enforced before any work is queued: rate limits, credit, spend limits, concurrency."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest

from apps.billing.models import Plan, UsageRecord
from apps.billing.quotas import subscription_for
from apps.jobs.models import Job, JobKind, JobStatus


def chat(api: Any) -> Any:
    return api.post(
        "/v1/chat/completions",
        {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}]},
        format="json",
    )


def spend(org: Any, project: Any, cost: int) -> None:
    job = Job.objects.create(
        kind=JobKind.GENERATION,
        organization=org,
        project=project,
        model_name="tiny-gpt2",
        status=JobStatus.SUCCEEDED,
    )
    UsageRecord.objects.create(
        organization=org,
        project=project,
        job=job,
        model_name="tiny-gpt2",
        unit="output_tokens",
        quantity=1,
        cost=cost,
    )


def test_free_credit_used_up_is_a_non_retryable_429(
    api: Any, tiny_chat: Any, alice_org: Any, alice_project: Any
) -> None:
    spend(alice_org, alice_project, subscription_for(alice_org).plan.included_credit)
    response = chat(api)
    assert response.status_code == 429
    assert response["x-should-retry"] == "false"
    assert response.json()["error"] == {
        "message": "You used this month's $5.00 of included credit on the Free plan. Upgrade under Billing to keep going.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert Job.objects.filter(kind=JobKind.GENERATION).count() == 1  # nothing new queued


def test_the_spend_limit_refuses_new_work(
    api: Any, tiny_chat: Any, alice_org: Any, alice_project: Any
) -> None:
    subscription = subscription_for(alice_org)
    subscription.plan = Plan.objects.get(slug="pro")
    subscription.spend_limit = 1_000_000
    subscription.save()
    spend(alice_org, alice_project, 1_000_000)
    response = chat(api)
    assert response.status_code == 429
    assert response.json()["error"]["message"] == (
        "You reached your monthly spend limit of $1.00. Raise it under Billing, or wait until next month."
    )


def test_the_sdk_does_not_retry_insufficient_quota(
    live_server: Any, alice_key: str, tiny_chat: Any, alice_org: Any, alice_project: Any
) -> None:
    spend(alice_org, alice_project, 10_000_000)
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key=alice_key, max_retries=2)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="tiny-gpt2", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "insufficient_quota"
    assert caught.value.response.request.headers.get("x-stainless-retry-count") == "0"


def test_plans_limit_models(api: Any, catalog: None) -> None:
    response = api.post(
        "/v1/chat/completions",
        {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        format="json",
    )
    assert response.status_code == 403
    assert response.json()["error"]["message"] == (
        "The Free plan does not include 'openai:gpt-4o-mini'. Upgrade under Billing."
    )


def test_concurrent_fine_tunes_are_capped(
    api: Any, tiny_base: Any, alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from tests.api.test_fine_tuning import make_file

    file = make_file(alice_project)
    with django_capture_on_commit_callbacks(execute=False):
        first = api.post(
            "/v1/fine_tuning/jobs", {"model": "tiny-bert", "training_file": file.public_id}, format="json"
        )
        second = api.post(
            "/v1/fine_tuning/jobs", {"model": "tiny-bert", "training_file": file.public_id}, format="json"
        )
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert second.json()["error"]["message"].startswith("You have 1 fine-tuning job(s) running or queued")
    assert Job.objects.filter(kind=JobKind.FINE_TUNE).count() == 1


def test_a_job_on_several_devices_takes_a_place_for_each(
    api: Any,
    tiny_base: Any,
    alice_org: Any,
    alice_project: Any,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from tests.api.test_fine_tuning import make_file
    from tests.conftest import use_plan

    settings.TRAINING_MAX_DEVICES = 4
    file = make_file(alice_project)

    def submit(devices: int) -> Any:
        body = {"model": "tiny-bert", "training_file": file.public_id, "devices": devices}
        return api.post("/v1/fine_tuning/jobs", body, format="json")

    # the Free plan's one place cannot hold a job on two devices
    with django_capture_on_commit_callbacks(execute=False):
        refused = submit(2)
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "message": "This job needs 2 of the Free plan's 1 places for fine-tunes at once, and your running or "
        "queued fine-tunes take 0 (a job takes one for each of its devices). Ask for fewer devices, wait for "
        "a job to finish, or upgrade under Billing.",
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "concurrency_limit_exceeded",
    }

    # Pro's three: a job on two devices, then one on one; a third job finds no place
    use_plan(alice_org, "pro")
    with django_capture_on_commit_callbacks(execute=False):
        assert submit(2).status_code == 200
        assert submit(1).status_code == 200
        full = submit(1)
    assert full.status_code == 429
    assert full.json()["error"]["message"].startswith(
        "This job needs 1 of the Pro plan's 3 places for fine-tunes at once, and your running or queued "
        "fine-tunes take 3"
    )
    assert Job.objects.filter(kind=JobKind.FINE_TUNE).count() == 2


@pytest.mark.django_db(transaction=True)
def test_rate_limits_hold_under_concurrency(
    live_server: Any, alice: Any, alice_project: Any, tiny_gpt2_dir: Any, settings: Any
) -> None:
    # given a plan allowing 10 requests a minute, and no worker (accepted requests time out fast)
    import httpx

    from apps.billing import ratelimit
    from apps.projects import actions
    from apps.registry.models import Model

    Model.objects.create(
        name="tiny-gpt2",
        task="generation",
        artifact_key=f"local:{tiny_gpt2_dir}",
        context_length=256,
        limits={"servable": True},
    )
    plan_id = subscription_for(alice_project.organization).plan_id
    # (and room for all 30 in flight at once: this is about the per-minute limits)
    Plan.objects.filter(pk=plan_id).update(
        key_requests_per_minute=10, requests_per_minute=10, concurrent_requests=100
    )
    settings.INFERENCE_TIMEOUT_SECONDS = 1
    _, key = actions.create_api_key(alice_project, "burst", alice)
    ratelimit.client().delete(*ratelimit.client().keys("mw:rl:*") or ["none"])
    statuses: list[int] = []
    lock = threading.Lock()

    def fire() -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            response = client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "tiny-gpt2", "messages": [{"role": "user", "content": "x"}]},
            )
        with lock:
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert response.headers["x-ratelimit-limit-requests"] == "10"

    threads = [threading.Thread(target=fire) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then no more than the limit got through (a burst that straddles a minute boundary may let a
    # few less through: the sliding window still counts the previous minute), the rest were told to
    # retry later, and none failed
    passed = statuses.count(504)
    assert 5 <= passed <= 10
    assert statuses.count(429) == 30 - passed
