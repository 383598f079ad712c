"""Webhook events: recorded and enqueued by the webhook, applied by a real worker once, in any
order, re-fetched from Stripe, all or nothing (docs/reliability.md, T18–T20, and the grace period of T22)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from apps.billing import actions
from apps.billing.models import Invoice, Plan, StripeEvent, Subscription
from apps.billing.quotas import QuotaError, check_quota, subscription_for
from tests.billing.conftest import WEBHOOK_SECRET, processed, signed_post
from tests.chaos.conftest import free_port, queue_depth, use_broker
from tests.conftest import Worker, wait_for
from tests.fake_stripe import FakeStripe, LocalStripe, sign
from workers.tasks import process_stripe_event, reap


def event_json(event: dict[str, Any]) -> bytes:
    import json

    return json.dumps(event, indent=2).encode()


def renewal_fails(localstripe: LocalStripe, session: dict[str, Any]) -> dict[str, Any]:
    """The card now declines, and the next invoice of the subscription cannot be paid."""
    localstripe.attach_card(session["customer"], "pm_card_chargeCustomerFail")
    invoice = localstripe.post(
        "/v1/invoices", {"customer": session["customer"], "subscription": session["subscription"]}
    )
    return localstripe.post(f"/v1/invoices/{invoice['id']}/pay", {})


def test_five_concurrent_deliveries_of_one_event_are_processed_once(
    billing_worker: Worker, pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe
) -> None:
    # given: a subscription event, and the number of times Stripe was asked for the subscription
    subscription_id = pro_alice["subscription"]
    event = fake_stripe.add_event(
        "customer.subscription.updated",
        {
            "id": subscription_id,
            "object": "subscription",
            "customer": pro_alice["customer"],
            "status": "active",
        },
    )
    path = f"/v1/subscriptions/{subscription_id}"
    fetches_before = len(fake_stripe.requests_to("GET", path))
    payload = event_json(event)
    responses: list[Any] = []

    def deliver_once() -> None:
        try:
            responses.append(signed_post(Client(), payload, sign(payload, WEBHOOK_SECRET)))
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=deliver_once) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row = processed(event["id"])
    # ... and once more, much later (the signature is fresh, the event is not)
    late = signed_post(Client(), payload, sign(payload, WEBHOOK_SECRET))

    # then: every delivery is acknowledged; one run applied it
    assert [r.status_code for r in responses] == [200] * 5
    assert {r.json()["outcome"] for r in responses} <= {"queued", "duplicate"}
    assert late.status_code == 200 and late.json()["outcome"] == "duplicate"
    assert row.outcome.endswith("pro (active)")
    assert StripeEvent.objects.filter(event_id=event["id"]).count() == 1
    # ... and a task run once more (a redelivered message) applies nothing
    assert process_stripe_event(event["id"]) == "duplicate"
    assert len(fake_stripe.requests_to("GET", path)) - fetches_before == 1


def test_a_hundred_distinct_events_are_all_processed(
    billing_worker: Worker, pro_alice: dict[str, Any], fake_stripe: FakeStripe, deliver: Any
) -> None:
    events = [
        fake_stripe.add_event(
            "customer.subscription.updated",
            {"id": pro_alice["subscription"], "customer": pro_alice["customer"]},
        )
        for _ in range(100)
    ]

    responses = [deliver(event) for event in events]

    assert [(r.status_code, r.json()["outcome"]) for r in responses] == [(200, "queued")] * 100
    ids = [e["id"] for e in events]
    wait_for(
        lambda: StripeEvent.objects.filter(event_id__in=ids, processed_at__isnull=False).count() == 100,
        timeout=120,
        message="not all 100 events were processed",
    )


def test_out_of_order_events_end_in_stripes_current_state(
    billing_worker: Worker, pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, deliver: Any
) -> None:
    subscription_id, customer = pro_alice["subscription"], pro_alice["customer"]
    now = int(time.time())
    newer = fake_stripe.add_event(
        "customer.subscription.updated",
        {"id": subscription_id, "customer": customer, "status": "active"},
        created=now,
    )
    older = fake_stripe.add_event(
        "customer.subscription.updated",
        {"id": subscription_id, "customer": customer, "status": "past_due"},
        created=now - 60,
    )

    assert deliver(newer).status_code == 200
    assert deliver(older).status_code == 200
    processed(newer["id"]), processed(older["id"])

    # The older event's copy said past_due; Stripe says active, and that is what we keep.
    subscription = subscription_for(alice_org)
    assert (subscription.plan.slug, subscription.status) == ("pro", "active")


def test_a_late_update_does_not_undo_a_cancellation(
    billing_worker: Worker,
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
    deliver: Any,
) -> None:
    # given: the subscription is cancelled in Stripe (the Portal), and its deleted event arrives
    subscription_id, customer = pro_alice["subscription"], pro_alice["customer"]
    localstripe.delete(f"/v1/subscriptions/{subscription_id}")
    deleted = fake_stripe.add_event(
        "customer.subscription.deleted", {"id": subscription_id, "customer": customer}
    )
    assert deliver(deleted).status_code == 200
    processed(deleted["id"])
    assert (subscription_for(alice_org).plan.slug, subscription_for(alice_org).status) == ("free", "canceled")

    # when: an older "updated, active" event arrives after it
    stale = fake_stripe.add_event(
        "customer.subscription.updated",
        {"id": subscription_id, "customer": customer, "status": "active"},
        created=deleted["created"] - 30,
    )
    assert deliver(stale).status_code == 200
    processed(stale["id"])

    # then
    subscription = subscription_for(alice_org)
    assert (subscription.plan.slug, subscription.status) == ("free", "canceled")


def test_apply_subscription_ignores_an_object_older_than_the_one_applied(
    pro_alice: dict[str, Any], alice_org: Any
) -> None:
    synced_at = subscription_for(alice_org).stripe_synced_at
    old_copy = {"id": pro_alice["subscription"], "status": "canceled", "customer": pro_alice["customer"]}

    outcome = actions.apply_subscription(alice_org, old_copy, as_of=synced_at - 1)

    assert outcome.startswith("ignored")
    assert subscription_for(alice_org).plan.slug == "pro"


def test_invoice_paid_before_invoice_created_is_recorded(
    billing_worker: Worker,
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
    deliver: Any,
) -> None:
    invoice = localstripe.get(f"/v1/subscriptions/{pro_alice['subscription']}")["latest_invoice"]

    paid_event = fake_stripe.add_event("invoice.paid", {"id": invoice, "object": "invoice"})
    paid = deliver(paid_event)
    created = deliver(fake_stripe.add_event("invoice.created", {"id": invoice, "object": "invoice"}))

    assert paid.status_code == 200 and created.status_code == 200
    assert created.json()["outcome"] == "ignored"  # a type we do not handle: stored, never queued
    assert processed(paid_event["id"]).outcome == f"{invoice}: paid"
    row = Invoice.objects.get(stripe_invoice_id=invoice)
    assert (row.organization, row.status, row.amount_due, row.currency) == (alice_org, "paid", 4900, "usd")


def test_a_failed_payment_starts_a_grace_period_then_paid_work_stops_but_data_stays_readable(
    billing_worker: Worker,
    pro_alice: dict[str, Any],
    alice_org: Any,
    alice_client: Any,
    api: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
    deliver: Any,
) -> None:
    # given: the renewal fails and Stripe says so
    invoice = renewal_fails(localstripe, pro_alice)
    failed = fake_stripe.add_event("invoice.payment_failed", {"id": invoice["id"], "object": "invoice"})
    assert deliver(failed).status_code == 200
    processed(failed["id"])

    # then: paid work goes on for BILLING_GRACE_DAYS, with a banner saying so
    grace_until = subscription_for(alice_org).grace_until
    assert grace_until is not None
    assert abs((grace_until - timezone.now()) - timedelta(days=7)) < timedelta(minutes=1)
    check_quota(alice_org)
    assert "Your last payment failed." in alice_client.get("/billing/").content.decode()

    # when: the grace period is over (time passes)
    Subscription.objects.filter(pk=subscription_for(alice_org).pk).update(
        grace_until=timezone.now() - timedelta(seconds=1)
    )

    # then: new paid work is refused as /v1/chat/completions would refuse it ...
    with pytest.raises(QuotaError) as refused:
        check_quota(alice_org)
    assert refused.value.code == "insufficient_quota"
    assert refused.value.status == 429
    assert refused.value.headers == {"x-should-retry": "false"}
    # ... while data stays readable
    assert api.get("/v1/files").status_code == 200
    assert alice_client.get("/projects/").status_code == 200
    assert "grace period ended" in alice_client.get("/billing/").content.decode()

    # when: the customer fixes the card and the invoice is paid
    localstripe.attach_card(pro_alice["customer"])
    localstripe.post(f"/v1/invoices/{invoice['id']}/pay", {})
    paid = fake_stripe.add_event("invoice.paid", {"id": invoice["id"], "object": "invoice"})
    assert deliver(paid).status_code == 200
    processed(paid["id"])

    # then
    assert subscription_for(alice_org).grace_until is None
    check_quota(alice_org)


def test_a_late_payment_failed_event_for_a_paid_invoice_changes_nothing(
    billing_worker: Worker,
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
    deliver: Any,
) -> None:
    invoice = localstripe.get(f"/v1/subscriptions/{pro_alice['subscription']}")["latest_invoice"]
    event = fake_stripe.add_event("invoice.payment_failed", {"id": invoice, "object": "invoice"})

    response = deliver(event)

    assert response.status_code == 200
    assert processed(event["id"]).outcome == f"{invoice}: paid"
    assert subscription_for(alice_org).grace_until is None


def test_repeated_failures_do_not_extend_the_grace_period(
    billing_worker: Worker,
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
    deliver: Any,
) -> None:
    invoice = renewal_fails(localstripe, pro_alice)
    first_event = fake_stripe.add_event("invoice.payment_failed", {"id": invoice["id"]})
    deliver(first_event)
    processed(first_event["id"])
    first = subscription_for(alice_org).grace_until

    second_event = fake_stripe.add_event("invoice.payment_failed", {"id": invoice["id"]})
    deliver(second_event)
    processed(second_event["id"])

    assert first is not None and subscription_for(alice_org).grace_until == first


REFUSE_INSERTS = """
CREATE FUNCTION test_refuse_stripe_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected: the event table refuses writes'; END $$;
CREATE TRIGGER test_refuse_stripe_event BEFORE INSERT ON billing_stripeevent
FOR EACH ROW EXECUTE FUNCTION test_refuse_stripe_event();
"""
ALLOW_INSERTS = """
DROP TRIGGER IF EXISTS test_refuse_stripe_event ON billing_stripeevent;
DROP FUNCTION IF EXISTS test_refuse_stripe_event();
"""


def test_a_recording_error_answers_500_stores_nothing_and_a_redelivery_is_processed_once(
    billing_worker: Worker,
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
    deliver: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given: the renewal fails, and the database refuses to store the event (a fault in PostgreSQL,
    # not in our code: recording is all the webhook does now)
    invoice = renewal_fails(localstripe, pro_alice)
    event = fake_stripe.add_event("invoice.payment_failed", {"id": invoice["id"], "object": "invoice"})
    with connection.cursor() as cursor:
        cursor.execute(REFUSE_INSERTS)
    try:
        # when
        response = deliver(event)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(ALLOW_INSERTS)

    # then: 500, nothing stored or applied, the error and traceback logged
    assert response.status_code == 500
    assert response.json() == {"error": "the event could not be recorded; deliver it again"}
    assert not StripeEvent.objects.filter(event_id=event["id"]).exists()
    assert not Invoice.objects.filter(stripe_invoice_id=invoice["id"]).exists()
    assert subscription_for(alice_org).grace_until is None
    assert f"stripe event {event['id']} could not be recorded" in caplog.text
    assert "Traceback" in caplog.text and "injected: the event table refuses writes" in caplog.text
    assert fake_stripe.requests_to("GET", f"/v1/invoices/{invoice['id']}") == []

    # when: Stripe delivers it again, now that the database accepts it
    again = deliver(event)
    row = processed(event["id"])
    once_more = deliver(event)

    # then: processed once
    assert again.status_code == 200 and again.json()["outcome"] == "queued"
    assert once_more.json()["outcome"] == "duplicate"
    assert Invoice.objects.filter(stripe_invoice_id=invoice["id"]).count() == 1
    assert subscription_for(alice_org).grace_until is not None
    assert row.outcome.startswith(f"{invoice['id']}: payment failed, grace until ") and row.error == ""
    # One run: it asks once for the customer (this event's copy names none), once under the lock.
    assert len(fake_stripe.requests_to("GET", f"/v1/invoices/{invoice['id']}")) == 2


def test_a_stripe_outage_keeps_the_error_retries_with_backoff_and_applies_once(
    billing_worker: Worker, pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, deliver: Any
) -> None:
    # given: Stripe answers 500 to every subscription fetch
    subscription_id = pro_alice["subscription"]
    path = f"/v1/subscriptions/{subscription_id}"
    fake_stripe.fail(500, path_prefix=path)
    event = fake_stripe.add_event(
        "customer.subscription.updated",
        {"id": subscription_id, "customer": pro_alice["customer"], "status": "active"},
    )

    # when: the event arrives
    response = deliver(event)

    # then: the webhook answers at once; the worker's failure is kept on the event ...
    assert response.status_code == 200 and response.json()["outcome"] == "queued"
    row = wait_for(
        lambda: StripeEvent.objects.filter(
            event_id=event["id"], error__contains="BillingUnavailable"
        ).first(),
        timeout=30,
        message="the failure was not recorded",
    )
    assert row.processed_at is None
    assert row.outcome == (
        "failed: Billing is temporarily unavailable: we could not reach our payment provider. "
        "Nothing was changed or charged. Please try again in a few minutes."
    )
    # ... and the task is retried later, not dropped
    wait_for(
        lambda: (
            "billing.process_stripe_event" in billing_worker.log.read_text(errors="replace")
            and "Retry in" in billing_worker.log.read_text(errors="replace")
        ),
        timeout=30,
        message="the task was not retried",
    )

    # when: Stripe recovers
    fake_stripe.recover()

    # then: a retry applies it, once
    row = processed(event["id"], timeout=60)
    assert row.outcome == f"{subscription_id}: pro (active)" and row.error == ""
    assert deliver(event).json()["outcome"] == "duplicate"
    assert len(fake_stripe.requests_to("GET", path)) >= 2  # the failed tries, then the one that worked


def test_an_error_in_the_task_is_kept_and_the_reaper_sends_it_again_once_fixed(
    billing_worker: Worker,
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    deliver: Any,
    settings: Any,
) -> None:
    # given: staff renamed the Pro price in admin, so no plan has the subscription's price
    Plan.objects.filter(slug="pro").update(stripe_price_id="price_renamed")
    event = fake_stripe.add_event(
        "customer.subscription.updated", {"id": pro_alice["subscription"], "customer": pro_alice["customer"]}
    )

    # when
    assert deliver(event).status_code == 200

    # then: the worker's error is kept, nothing applied
    row = wait_for(
        lambda: StripeEvent.objects.filter(event_id=event["id"], error__contains="ValueError").first(),
        timeout=30,
        message="the failure was not recorded",
    )
    assert row.processed_at is None
    assert (
        row.outcome
        == f"failed: no plan has stripe_price_id 'price_pro' (subscription {pro_alice['subscription']})"
    )
    assert "Traceback" in row.error

    # when: staff fix the price, and the reaper runs (as beat runs it) once the event is stale
    Plan.objects.filter(slug="pro").update(stripe_price_id="price_pro")
    assert reap()["stripe_events"] == 0  # too recent: its message may still be on its way
    settings.JOB_QUEUED_STALE_SECONDS = 0
    assert reap()["stripe_events"] == 1

    # then: applied, once
    row = processed(event["id"])
    assert row.outcome == f"{pro_alice['subscription']}: pro (active)" and row.error == ""
    assert reap()["stripe_events"] == 0


def test_an_event_recorded_while_the_broker_is_down_is_sent_again_by_the_reaper(
    billing_worker: Worker,
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    deliver: Any,
    settings: Any,
    _test_redis: Any,
) -> None:
    event = fake_stripe.add_event(
        "customer.subscription.updated", {"id": pro_alice["subscription"], "customer": pro_alice["customer"]}
    )

    # when: Stripe delivers while the broker is unreachable
    with use_broker(f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens there
        response = deliver(event)

    # then: recorded and acknowledged (Stripe must not retry what we hold), but not sent
    assert response.status_code == 200 and response.json()["outcome"] == "queued"
    row = StripeEvent.objects.get(event_id=event["id"])
    assert row.processed_at is None and row.payload["id"] == event["id"]
    assert queue_depth(_test_redis, "default") == 0

    # when: the broker is back and the reaper runs once the event is stale
    settings.JOB_QUEUED_STALE_SECONDS = 0
    assert reap()["stripe_events"] == 1

    # then
    assert processed(event["id"]).outcome == f"{pro_alice['subscription']}: pro (active)"


def test_an_unpinned_api_version_is_logged_and_still_processed(
    pro_alice: dict[str, Any],
    fake_stripe: FakeStripe,
    deliver_and_apply: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    event = fake_stripe.add_event(
        "customer.subscription.updated",
        {"id": pro_alice["subscription"], "customer": pro_alice["customer"]},
        api_version="2024-06-20",
    )

    response = deliver_and_apply(event)

    assert response.status_code == 200
    assert "has API version 2024-06-20, we pin 2026-10-28.endive" in caplog.text
    assert StripeEvent.objects.get(event_id=event["id"]).outcome.endswith("pro (active)")


def test_events_of_an_unknown_customer_are_recorded_and_ignored(
    billing_worker: Worker, fake_stripe: FakeStripe, deliver: Any
) -> None:
    event = fake_stripe.add_event("customer.subscription.updated", {"id": "sub_x", "customer": "cus_nobody"})

    response = deliver(event)

    assert response.status_code == 200
    assert processed(event["id"]).outcome == "ignored: no organization has customer 'cus_nobody'"
    assert fake_stripe.requests_to("GET", "/v1/subscriptions/sub_x") == []


def test_localstripe_delivers_signed_events_to_the_live_server(
    billing_worker: Worker,
    live_server: Any,
    alice_org: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
) -> None:
    """End to end: the events Stripe (here localstripe) signs and posts itself, over HTTP."""
    # given: the organization has a customer, and localstripe knows our endpoint
    customer = localstripe.post("/v1/customers", {"email": "alice@example.com"})["id"]
    Subscription.objects.filter(pk=subscription_for(alice_org).pk).update(stripe_customer_id=customer)
    localstripe.post(
        "/_config/webhooks/modelworks",
        {
            "url": f"{live_server.url}/billing/stripe/webhook",
            "secret": WEBHOOK_SECRET,
            "events[]": "customer.subscription.created",
        },
    )
    localstripe.attach_card(customer)

    try:
        # when: a subscription is created in Stripe
        created = localstripe.post("/v1/subscriptions", {"customer": customer, "items[0][plan]": "price_pro"})

        # then
        wait_for(
            lambda: subscription_for(alice_org).plan.slug == "pro", timeout=15, message="webhook not applied"
        )
        row = StripeEvent.objects.get(type="customer.subscription.created", outcome__startswith=created["id"])
        assert row.processed_at is not None and row.outcome == f"{created['id']}: pro (active)"
    finally:
        # localstripe cannot forget an endpoint: make it deliver nothing to later tests.
        localstripe.post(
            "/_config/webhooks/modelworks",
            {
                "url": f"{live_server.url}/billing/stripe/webhook",
                "secret": WEBHOOK_SECRET,
                "events[]": "none",
            },
        )
