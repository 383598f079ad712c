"""Events Stripe never delivered are found and processed exactly once (docs/reliability.md, T21)."""

from __future__ import annotations

import time
from typing import Any

from apps.billing.models import Invoice, StripeEvent
from apps.billing.quotas import subscription_for
from apps.billing.webhooks import reconcile_missed_events
from tests.fake_stripe import FakeStripe, LocalStripe


def test_missed_events_are_processed_exactly_once(
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
    deliver_and_apply: Any,
) -> None:
    # given: the webhook was down while five events happened
    subscription_id, customer = pro_alice["subscription"], pro_alice["customer"]
    invoice = localstripe.get(f"/v1/subscriptions/{subscription_id}")["latest_invoice"]
    localstripe.delete(f"/v1/subscriptions/{subscription_id}")  # cancelled in the Portal
    missed = [
        fake_stripe.add_event("invoice.paid", {"id": invoice, "object": "invoice"}),
        fake_stripe.add_event("customer.subscription.updated", {"id": subscription_id, "customer": customer}),
        fake_stripe.add_event("customer.subscription.deleted", {"id": subscription_id, "customer": customer}),
        fake_stripe.add_event("customer.created", {"id": customer, "object": "customer"}),
        fake_stripe.add_event("invoice.payment_failed", {"id": invoice, "object": "invoice"}),
    ]
    # ... and one that was delivered and handled, which Stripe lists as delivered
    delivered = fake_stripe.add_event("invoice.paid", {"id": invoice, "object": "invoice"}, delivered=True)
    deliver_and_apply(delivered)
    before = StripeEvent.objects.count()

    # when
    counts = reconcile_missed_events()

    # then: the four handled types among the five are processed (customer.created is not asked for)
    assert counts == {"listed": 4, "processed": 4, "failed": 0}
    handled = [e["id"] for e in missed if e["type"] != "customer.created"]
    assert StripeEvent.objects.filter(event_id__in=handled, processed_at__isnull=False).count() == 4
    assert StripeEvent.objects.count() == before + 4
    subscription = subscription_for(alice_org)
    assert (subscription.plan.slug, subscription.status) == ("free", "canceled")
    assert Invoice.objects.get(stripe_invoice_id=invoice).status == "paid"
    request = fake_stripe.requests_to("GET", "/v1/events")[0]
    assert request.params["delivery_success"] == "false"
    assert sorted(request.params["types"]) == sorted(
        [
            "checkout.session.completed",
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
            "invoice.paid",
            "invoice.payment_failed",
        ]
    )
    assert 30 * 86400 <= int(time.time()) - int(request.params["created"]["gte"]) <= 30 * 86400 + 60

    # when: it runs again
    again = reconcile_missed_events()

    # then: nothing changes
    assert again == {"listed": 4, "processed": 0, "failed": 0}
    assert StripeEvent.objects.count() == before + 4


def test_reconciliation_looks_back_30_days_at_most(
    pro_alice: dict[str, Any], fake_stripe: FakeStripe
) -> None:
    old = fake_stripe.add_event(
        "customer.subscription.updated",
        {"id": pro_alice["subscription"], "customer": pro_alice["customer"]},
        created=int(time.time()) - 31 * 86400,
    )

    counts = reconcile_missed_events()

    assert counts["listed"] == 0
    assert not StripeEvent.objects.filter(event_id=old["id"]).exists()


def test_an_event_that_failed_before_is_retried_by_reconciliation(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe
) -> None:
    event = fake_stripe.add_event(
        "customer.subscription.updated", {"id": pro_alice["subscription"], "customer": pro_alice["customer"]}
    )
    StripeEvent.objects.create(
        event_id=event["id"], type=event["type"], created=event["created"], outcome="failed: x"
    )

    counts = reconcile_missed_events()

    assert counts["processed"] == 1
    assert StripeEvent.objects.get(event_id=event["id"]).processed_at is not None


def test_the_reconcile_task_runs_it(pro_alice: dict[str, Any], fake_stripe: FakeStripe) -> None:
    from workers.tasks import reconcile_stripe_events

    fake_stripe.add_event(
        "customer.subscription.updated", {"id": pro_alice["subscription"], "customer": pro_alice["customer"]}
    )

    assert reconcile_stripe_events() == {"listed": 1, "processed": 1, "failed": 0}
