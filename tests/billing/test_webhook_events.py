"""Webhook events: handled once, in any order, re-fetched from Stripe, all or nothing
(reliability.md T18–T20, the grace period of T22)."""

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
from tests.billing.conftest import WEBHOOK_SECRET, signed_post
from tests.fake_stripe import FakeStripe, LocalStripe, sign


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
    transactional_db: None, pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe
) -> None:
    # given: a subscription event, and the number of times Stripe was asked for the subscription
    subscription_id = pro_alice["subscription"]
    event = fake_stripe.add_event("customer.subscription.updated", {"id": subscription_id, "object": "subscription",
                                                                    "customer": pro_alice["customer"], "status": "active"})  # fmt: skip
    path = f"/v1/subscriptions/{subscription_id}"
    fetches_before = len(fake_stripe.requests_to("GET", path))
    payload = event_json(event)
    statuses: list[int] = []

    def deliver_once() -> None:
        try:
            statuses.append(signed_post(Client(), payload, sign(payload, WEBHOOK_SECRET)).status_code)
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=deliver_once) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # ... and once more, much later (the signature is fresh, the event is not)
    late = signed_post(Client(), payload, sign(payload, WEBHOOK_SECRET))

    # then
    assert statuses == [200] * 5
    assert late.status_code == 200 and late.json()["outcome"] == "duplicate"
    row = StripeEvent.objects.get(event_id=event["id"])
    assert row.processed_at is not None and row.outcome.endswith("pro (active)")
    assert len(fake_stripe.requests_to("GET", path)) - fetches_before == 1


def test_a_hundred_distinct_events_are_all_processed(
    pro_alice: dict[str, Any], fake_stripe: FakeStripe, deliver: Any
) -> None:
    events = [fake_stripe.add_event("customer.subscription.updated", {"id": pro_alice["subscription"],
                                    "customer": pro_alice["customer"]}) for _ in range(100)]  # fmt: skip

    responses = [deliver(event) for event in events]

    assert [r.status_code for r in responses] == [200] * 100
    assert (
        StripeEvent.objects.filter(event_id__in=[e["id"] for e in events], processed_at__isnull=False).count()
        == 100
    )


def test_out_of_order_events_end_in_stripes_current_state(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, deliver: Any
) -> None:
    subscription_id, customer = pro_alice["subscription"], pro_alice["customer"]
    now = int(time.time())
    newer = fake_stripe.add_event("customer.subscription.updated",
                                  {"id": subscription_id, "customer": customer, "status": "active"}, created=now)  # fmt: skip
    older = fake_stripe.add_event("customer.subscription.updated",
                                  {"id": subscription_id, "customer": customer, "status": "past_due"}, created=now - 60)  # fmt: skip

    assert deliver(newer).status_code == 200
    assert deliver(older).status_code == 200

    # The older event's copy said past_due; Stripe says active, and that is what we keep.
    subscription = subscription_for(alice_org)
    assert (subscription.plan.slug, subscription.status) == ("pro", "active")


def test_a_late_update_does_not_undo_a_cancellation(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, localstripe: LocalStripe, deliver: Any
) -> None:
    # given: the subscription is cancelled in Stripe (the Portal), and its deleted event arrives
    subscription_id, customer = pro_alice["subscription"], pro_alice["customer"]
    localstripe.delete(f"/v1/subscriptions/{subscription_id}")
    deleted = fake_stripe.add_event(
        "customer.subscription.deleted", {"id": subscription_id, "customer": customer}
    )
    assert deliver(deleted).status_code == 200
    assert (subscription_for(alice_org).plan.slug, subscription_for(alice_org).status) == ("free", "canceled")

    # when: an older "updated, active" event arrives after it
    stale = fake_stripe.add_event("customer.subscription.updated",
                                  {"id": subscription_id, "customer": customer, "status": "active"},
                                  created=deleted["created"] - 30)  # fmt: skip
    assert deliver(stale).status_code == 200

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
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, localstripe: LocalStripe, deliver: Any
) -> None:
    invoice = localstripe.get(f"/v1/subscriptions/{pro_alice['subscription']}")["latest_invoice"]

    paid = deliver(fake_stripe.add_event("invoice.paid", {"id": invoice, "object": "invoice"}))
    created = deliver(fake_stripe.add_event("invoice.created", {"id": invoice, "object": "invoice"}))

    assert paid.status_code == 200 and created.status_code == 200
    assert created.json()["outcome"] == "ignored"
    row = Invoice.objects.get(stripe_invoice_id=invoice)
    assert (row.organization, row.status, row.amount_due, row.currency) == (alice_org, "paid", 4900, "usd")


def test_a_failed_payment_starts_a_grace_period_then_paid_work_stops_but_data_stays_readable(
    pro_alice: dict[str, Any], alice_org: Any, alice_client: Any, api: Any, fake_stripe: FakeStripe,
    localstripe: LocalStripe, deliver: Any,
) -> None:  # fmt: skip
    # given: the renewal fails and Stripe says so
    invoice = renewal_fails(localstripe, pro_alice)
    response = deliver(
        fake_stripe.add_event("invoice.payment_failed", {"id": invoice["id"], "object": "invoice"})
    )
    assert response.status_code == 200

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
    assert (
        deliver(fake_stripe.add_event("invoice.paid", {"id": invoice["id"], "object": "invoice"})).status_code
        == 200
    )

    # then
    assert subscription_for(alice_org).grace_until is None
    check_quota(alice_org)


def test_a_late_payment_failed_event_for_a_paid_invoice_changes_nothing(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, localstripe: LocalStripe, deliver: Any
) -> None:
    invoice = localstripe.get(f"/v1/subscriptions/{pro_alice['subscription']}")["latest_invoice"]

    response = deliver(fake_stripe.add_event("invoice.payment_failed", {"id": invoice, "object": "invoice"}))

    assert response.status_code == 200
    assert subscription_for(alice_org).grace_until is None


def test_repeated_failures_do_not_extend_the_grace_period(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, localstripe: LocalStripe, deliver: Any
) -> None:
    invoice = renewal_fails(localstripe, pro_alice)
    deliver(fake_stripe.add_event("invoice.payment_failed", {"id": invoice["id"]}))
    first = subscription_for(alice_org).grace_until

    deliver(fake_stripe.add_event("invoice.payment_failed", {"id": invoice["id"]}))

    assert subscription_for(alice_org).grace_until == first


def test_a_handler_error_rolls_back_answers_500_and_a_redelivery_processes_it_once(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, localstripe: LocalStripe, deliver: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # given: the invoice is recorded, then the next step fails
    invoice = renewal_fails(localstripe, pro_alice)
    event = fake_stripe.add_event("invoice.payment_failed", {"id": invoice["id"], "object": "invoice"})

    def broken(organization: Any) -> Any:
        raise RuntimeError("injected failure after the invoice was written")

    monkeypatch.setattr(actions, "payment_failed", broken)

    # when
    response = deliver(event)

    # then: 500, nothing half-written, the error kept on the event
    assert response.status_code == 500
    assert not Invoice.objects.filter(stripe_invoice_id=invoice["id"]).exists()
    assert subscription_for(alice_org).grace_until is None
    row = StripeEvent.objects.get(event_id=event["id"])
    assert row.processed_at is None
    assert row.outcome == "failed: injected failure after the invoice was written"
    assert "Traceback" in row.error and "RuntimeError: injected failure" in row.error

    # when: Stripe delivers it again, now that the bug is fixed
    monkeypatch.undo()
    again = deliver(event)
    once_more = deliver(event)

    # then: processed once
    assert again.status_code == 200 and once_more.json()["outcome"] == "duplicate"
    assert Invoice.objects.filter(stripe_invoice_id=invoice["id"]).count() == 1
    assert subscription_for(alice_org).grace_until is not None
    row.refresh_from_db()
    assert row.processed_at is not None and row.error == ""


def test_a_price_no_plan_has_fails_loudly_until_staff_fix_it(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, deliver: Any
) -> None:
    Plan.objects.filter(slug="pro").update(stripe_price_id="price_renamed")
    event = fake_stripe.add_event("customer.subscription.updated", {"id": pro_alice["subscription"],
                                                                    "customer": pro_alice["customer"]})  # fmt: skip

    assert deliver(event).status_code == 500
    assert "no plan has stripe_price_id 'price_pro'" in StripeEvent.objects.get(event_id=event["id"]).error

    Plan.objects.filter(slug="pro").update(stripe_price_id="price_pro")
    assert deliver(event).status_code == 200


def test_an_unpinned_api_version_is_logged_and_still_processed(
    pro_alice: dict[str, Any], fake_stripe: FakeStripe, deliver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    event = fake_stripe.add_event("customer.subscription.updated", {"id": pro_alice["subscription"],
                                  "customer": pro_alice["customer"]}, api_version="2024-06-20")  # fmt: skip

    response = deliver(event)

    assert response.status_code == 200
    assert "has API version 2024-06-20, we pin 2026-10-28.endive" in caplog.text


def test_events_of_an_unknown_customer_are_recorded_and_ignored(
    fake_stripe: FakeStripe, deliver: Any
) -> None:
    event = fake_stripe.add_event("customer.subscription.updated", {"id": "sub_x", "customer": "cus_nobody"})

    response = deliver(event)

    assert response.status_code == 200
    assert (
        StripeEvent.objects.get(event_id=event["id"]).outcome
        == "ignored: no organization has customer 'cus_nobody'"
    )
    assert fake_stripe.requests_to("GET", "/v1/subscriptions/sub_x") == []


def test_localstripe_delivers_signed_events_to_the_live_server(
    live_server: Any, alice_org: Any, fake_stripe: FakeStripe, localstripe: LocalStripe
) -> None:
    """End to end: the events Stripe (here localstripe) signs and posts itself, over HTTP."""
    from tests.conftest import wait_for

    # given: the organization has a customer, and localstripe knows our endpoint
    customer = localstripe.post("/v1/customers", {"email": "alice@example.com"})["id"]
    Subscription.objects.filter(pk=subscription_for(alice_org).pk).update(stripe_customer_id=customer)
    localstripe.post("/_config/webhooks/modelworks", {"url": f"{live_server.url}/billing/stripe/webhook",
                                                      "secret": WEBHOOK_SECRET,
                                                      "events[]": "customer.subscription.created"})  # fmt: skip
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
        localstripe.post("/_config/webhooks/modelworks", {"url": f"{live_server.url}/billing/stripe/webhook",
                                                          "secret": WEBHOOK_SECRET, "events[]": "none"})  # fmt: skip
