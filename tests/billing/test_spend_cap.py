"""The spend cap holds for work running together: each request, fine-tune and batch chunk holds a
share of what the organization may still spend, taken under the organization's lock, so that
concurrent work cannot each spend the same allowance."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from django.db import connection

from apps.billing.models import Plan, UsageRecord
from apps.billing.quotas import QuotaError, subscription_for
from apps.jobs import admission, inference
from apps.jobs.models import Job, JobKind, JobStatus
from tests.conftest import Worker, billed, purge_queues, sentiment_csv, use_plan, wait_for
from tests.jobs.test_fine_tune_flow import upload

MESSAGES = [{"role": "user", "content": "how much is it?"}]


def spend_limit(organization: Any, micro_dollars: int) -> None:
    subscription = subscription_for(organization)
    subscription.spend_limit = micro_dollars
    subscription.save(update_fields=["spend_limit"])


def test_requests_in_flight_hold_their_share_of_the_cap(
    live_server: Any, alice: Any, alice_org: Any, alice_project: Any, tiny_chat: Any, settings: Any
) -> None:
    from apps.projects import actions

    # given room under the spend limit for two and a half requests at their largest, and no worker
    # (admitted requests wait, holding their share, until they time out)
    _, parsed = inference.parse_chat(
        alice_project, {"model": "tiny-gpt2", "messages": MESSAGES, "max_tokens": 50}
    )
    largest = inference.largest_cost(tiny_chat, parsed)
    spend_limit(alice_org, 2 * largest + largest // 2)
    Plan.objects.update(concurrent_requests=20)  # this is about money, not the in-flight limit
    settings.INFERENCE_TIMEOUT_SECONDS = 3
    _, key = actions.create_api_key(alice_project, "burst", alice)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def ask() -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            response = client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "tiny-gpt2", "messages": MESSAGES, "max_tokens": 50},
            )
        with lock:
            results.append(response)

    # when six arrive together
    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then three were admitted (the third with what was left), the others told what holds the cap
    statuses = sorted(r.status_code for r in results)
    assert statuses == [429, 429, 429, 504, 504, 504]
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert "held by fine-tunes, batches and requests in progress" in refused.json()["error"]["message"]
    admitted = Job.objects.filter(kind=JobKind.GENERATION)
    assert sorted(admitted.values_list("reserved_cost", flat=True)) == [0, 0, 0]  # given back when they ended
    # and once they ended, their shares are free again
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        again = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "tiny-gpt2", "messages": MESSAGES, "max_tokens": 50},
        )
    assert again.status_code == 504


def test_running_jobs_asking_together_never_get_more_than_is_left(
    transactional_db: None, alice_org: Any, alice_project: Any
) -> None:
    # given an organization with 10,000 micro-dollars left, 1,000 of them spent
    spend_limit(alice_org, 11_000)
    UsageRecord.objects.create(
        organization=alice_org, model_name="x", unit="input_tokens", quantity=1, cost=1000
    )
    jobs = [
        Job.objects.create(
            kind=JobKind.FINE_TUNE,
            organization=alice_org,
            project=alice_project,
            model_name="tiny-bert",
            status=JobStatus.RUNNING,
            attempt=1,
        )
        for _ in range(8)
    ]
    grants: list[int | None] = []
    start = threading.Barrier(len(jobs))

    def ask(job: Job) -> None:
        start.wait()
        try:
            grants.append(admission.top_up(job.pk, 1, 3000))
        finally:
            connection.close()

    # when eight running jobs each ask for 3,000 at the same moment
    threads = [threading.Thread(target=ask, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then together they got exactly what was left, never more
    assert sum(g or 0 for g in grants) == 10_000
    assert sorted(grants) == [0, 0, 0, 0, 1000, 3000, 3000, 3000]
    assert admission.held(alice_org.pk) == 10_000


@pytest.mark.integration
def test_fine_tunes_running_together_cannot_each_spend_the_same_allowance(
    transactional_db: None, api: Any, alice_org: Any, tiny_base: Any
) -> None:
    # given two fine-tunes that each cost about E, and a spend limit of 1.3 E
    use_plan(alice_org, "pro")
    hp = {"n_epochs": 3, "batch_size": 2, "learning_rate": 0.001, "early_stopping_patience": 0}
    purge_queues()
    worker = Worker(concurrency=2)  # both run at once
    try:
        files = [upload(api, sentiment_csv(120, seed=seed)) for seed in (1, 2)]
        for file_id in files:
            wait_for(lambda f=file_id: api.get(f"/v1/files/{f}").json()["status"] == "processed", timeout=30)
        body = {
            "model": "tiny-bert",
            "method": {"type": "classification", "classification": {"hyperparameters": hp}},
        }
        estimate = api.post(
            "/v1/fine_tuning/jobs/estimate", {**body, "training_file": files[0]}, format="json"
        ).json()
        cap = int(estimate["estimated_cost"] * 1.3)
        spend_limit(alice_org, cap)
        ids = [
            api.post("/v1/fine_tuning/jobs", {**body, "training_file": f}, format="json").json()["id"]
            for f in files
        ]
        jobs = [
            wait_for(lambda i=i: (j := Job.objects.get(public_id=i)).is_finished and j, timeout=240)
            for i in ids
        ]
    finally:
        worker.stop()
    # then together they spent no more than the cap, plus at most one training step each
    for job in jobs:
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert billed(job) == {"trained_tokens": job.trained_tokens}
    step = max(job.billed_cost // max(job.result["steps"], 1) for job in jobs) + 1
    total = sum(UsageRecord.objects.filter(organization=alice_org).values_list("cost", flat=True))
    assert total <= cap + 2 * step, (total, cap, step)
    # one of them stopped at the limit with the model of what it ran
    assert "spend_limit_reached" in [job.status_reason for job in jobs]


def test_a_share_taken_without_a_cap_still_counts_once_a_cap_is_set(
    alice: Any, alice_org: Any, alice_project: Any, pro: Any
) -> None:
    from apps.billing.actions import set_spend_limits

    # given a batch running on the Pro plan with no spend limit: no cap at all
    job = Job.objects.create(
        kind=JobKind.BATCH,
        organization=alice_org,
        project=alice_project,
        model_name="tiny-gpt2",
        status=JobStatus.RUNNING,
        attempt=1,
    )
    share = admission.SpendShare(job)
    # when it asks for room for its next chunks, it gets it, and holds it
    assert share.allows(5000, ahead=3000)
    job.refresh_from_db()
    assert job.reserved_cost == 8000
    # and when the owner then sets a spend limit below what it holds (or the plan moves to Free)
    set_spend_limits(alice_org, alice, 6000, None)
    # then new work finds the cap taken by that share
    with pytest.raises(QuotaError) as refused:
        admission.reserve(subscription_for(alice_org), 100)
    assert refused.value.headers == {"retry-after": str(admission.RESERVED_RETRY_AFTER_SECONDS)}
    # and the batch, once it used its share, asks again and is refused: it stops at the cap
    assert share.allows(8000)
    assert not share.allows(8001)
