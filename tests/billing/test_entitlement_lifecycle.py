"""Entitlement through a subscription's life: the recorded events of a test-clock run (trial,
failed renewal, payment), re-signed and replayed in order through the webhook to a real worker
(docs/reliability.md, T22).

The refusal is the one for any exhausted quota, 429 `insufficient_quota` with
`x-should-retry: false`, as `apps/billing/quotas.py` answers it (docs/architecture.md, "Admission
and the spend cap"). A failed payment stops new work once the grace period ends
(BILLING_GRACE_DAYS, 7 by default); to see it stop after one delivery, this replay runs its worker
with no grace period.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.billing.models import Invoice, Plan, StripeEvent, Subscription
from apps.billing.quotas import subscription_for
from apps.jobs.models import Job, JobStatus
from tests.api.test_fine_tuning import make_file
from tests.billing.conftest import WEBHOOK_SECRET, processed, signed_post, start_billing_worker
from tests.conftest import Worker, purge_queues
from tests.fake_stripe import FakeStripe, sign

FIXTURES = Path(__file__).parent / "fixtures" / "entitlement_lifecycle"
REFUSED = (
    "Your last payment failed and the grace period is over, so new paid work is paused. "
    "Update your payment method under Billing → Manage billing; your data stays available."
)


@pytest.fixture(scope="module")
def _worker_without_grace(django_db_setup: None, fake_stripe_server: FakeStripe) -> Iterator[Worker]:
    worker = start_billing_worker(fake_stripe_server, {"BILLING_GRACE_DAYS": "0"})
    try:
        yield worker
    finally:
        worker.stop()
        purge_queues()  # the jobs this test queued on `gpu`, which no worker here consumes


class Replay:
    """Delivers the recorded events one at a time, as Stripe would, and waits for each to apply."""

    def __init__(self, client: Any, fake_stripe: FakeStripe) -> None:
        self.client = client
        self.fake_stripe = fake_stripe
        self.bodies = [path.read_bytes() for path in sorted(FIXTURES.glob("*.json"))]
        self.events = [json.loads(body) for body in self.bodies]

    def deliver(self, number: int, expected_type: str) -> str:
        body, event = self.bodies[number - 1], self.events[number - 1]
        assert event["type"] == expected_type
        # What Stripe has now is what the event carries: the webhook's re-fetch gets the same object.
        self.fake_stripe.serve(event["data"]["object"])
        response = signed_post(self.client, body, sign(body, WEBHOOK_SECRET))  # signed now, raw bytes
        assert response.status_code == 200, response.content
        outcome = str(response.json()["outcome"])
        if outcome == "queued":
            outcome = processed(event["id"]).outcome
        return outcome


def submit_fine_tune(api: Any, file: Any) -> Any:
    return api.post(
        "/v1/fine_tuning/jobs", {"model": "tiny-bert", "training_file": file.public_id}, format="json"
    )


def test_a_failed_renewal_stops_new_jobs_after_one_delivery_and_payment_restarts_them_after_one(
    _worker_without_grace: Worker,
    transactional_db: None,
    fake_stripe: FakeStripe,
    client: Any,
    api: Any,
    alice_org: Any,
    alice_project: Any,
    tiny_base: Any,
) -> None:
    # given: alice's organization is the run's customer, and the run's price is the Pro plan's
    replay = Replay(client, fake_stripe)
    subscription = replay.events[0]["data"]["object"]
    Plan.objects.filter(slug="pro").update(stripe_price_id=subscription["items"]["data"][0]["price"]["id"])
    Subscription.objects.filter(pk=subscription_for(alice_org).pk).update(
        stripe_customer_id=subscription["customer"]
    )
    file = make_file(alice_project)

    # when: the subscription starts with a trial
    assert replay.deliver(1, "customer.subscription.created") == f"{subscription['id']}: pro (trialing)"
    assert replay.deliver(2, "invoice.paid").endswith(": paid")
    # then: work is accepted, and waits in the queue
    queued = submit_fine_tune(api, file)
    assert queued.status_code == 200, queued.content
    job_id = queued.json()["id"]

    # when: the trial ends, and the renewal's payment fails
    assert replay.deliver(3, "customer.subscription.trial_will_end") == "ignored"
    assert replay.deliver(4, "customer.subscription.updated") == f"{subscription['id']}: pro (active)"
    assert replay.deliver(5, "invoice.created") == "ignored"
    assert replay.deliver(6, "invoice.finalized") == "ignored"
    assert "payment failed, grace until" in replay.deliver(7, "invoice.payment_failed")

    # then: after that one delivery, new work is refused ...
    refused = submit_fine_tune(api, file)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert refused.json()["error"]["message"] == REFUSED
    assert refused["x-should-retry"] == "false"
    # ... and stays refused while the subscription is past_due
    assert replay.deliver(8, "customer.subscription.updated") == f"{subscription['id']}: pro (past_due)"
    assert subscription_for(alice_org).status == "past_due"
    assert submit_fine_tune(api, file).status_code == 429
    # ... while the queued job is kept, still queued
    assert Job.objects.get(public_id=job_id).status == JobStatus.QUEUED

    # when: the customer pays the open invoice
    assert replay.deliver(9, "invoice.paid").endswith(": paid")

    # then: after that one delivery, work is accepted again
    accepted = submit_fine_tune(api, file)
    assert accepted.status_code == 200, accepted.content

    # when: the rest of the run arrives
    assert replay.deliver(10, "invoice.payment_succeeded") == "ignored"
    assert replay.deliver(11, "customer.subscription.updated") == f"{subscription['id']}: pro (active)"

    # then: active on Pro, both invoices paid, every event applied once, no job lost
    final = subscription_for(alice_org)
    assert (final.plan.slug, final.status, final.grace_until) == ("pro", "active", None)
    assert sorted(Invoice.objects.values_list("status", flat=True)) == ["paid", "paid"]
    assert StripeEvent.objects.filter(processed_at__isnull=False).count() == len(replay.events) == 11
    assert sorted(Job.objects.values_list("public_id", "status")) == sorted(
        [(job_id, JobStatus.QUEUED), (accepted.json()["id"], JobStatus.QUEUED)]
    )
