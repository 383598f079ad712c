"""Upgrading through Stripe Checkout, managing billing through the Customer Portal."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from apps.billing.models import Subscription
from apps.billing.quotas import subscription_for
from tests.billing.conftest import processed
from tests.conftest import Worker, login
from tests.fake_stripe import FakeStripe


def start_checkout(client: Any, plan: str = "pro") -> Any:
    return client.post("/billing/checkout", {"plan": plan})


def checkout_session_id(response: Any) -> str:
    assert response.status_code == 303, response.content.decode()[:2000]
    return response["Location"].rsplit("/", 1)[1]


def test_checkout_then_webhook_puts_the_organization_on_pro(
    billing_worker: Worker, alice_client: Any, alice_org: Any, fake_stripe: FakeStripe, deliver: Any
) -> None:
    # given: alice clicks "Upgrade to Pro"
    response = start_checkout(alice_client)
    session_id = checkout_session_id(response)
    assert response["Location"] == fake_stripe.session(session_id)["url"]
    session = fake_stripe.session(session_id)
    customer = Subscription.objects.get(organization=alice_org).stripe_customer_id
    assert customer.startswith("cus_")
    assert session["mode"] == "subscription"
    assert session["customer"] == customer
    assert session["line_items"] == [{"price": "price_pro", "quantity": "1"}]
    assert session["metadata"] == {"organization_id": alice_org.public_id, "plan": "pro"}
    assert session["success_url"] == f"http://testserver/billing/checkout/return?session_id={session_id}"
    assert subscription_for(alice_org).plan.slug == "free"  # nothing changes before payment

    # when: she pays, and Stripe sends checkout.session.completed
    completed = fake_stripe.complete_checkout(session_id)
    event = fake_stripe.add_event("checkout.session.completed", completed, delivered=True)
    response = deliver(event)

    # then: a worker applies it
    assert response.status_code == 200, response.content
    row = processed(event["id"])
    subscription = subscription_for(alice_org)
    assert subscription.plan.slug == "pro"
    assert subscription.status == "active"
    assert subscription.stripe_subscription_id == completed["subscription"]
    assert subscription.current_period_end is not None
    assert subscription.stripe_synced_at >= event["created"]
    assert row.outcome == f"{completed['subscription']}: pro (active)"


def test_the_return_page_applies_the_subscription_without_waiting_for_the_webhook(
    alice_client: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    session_id = checkout_session_id(start_checkout(alice_client))
    fake_stripe.complete_checkout(session_id)
    success_url = fake_stripe.session(session_id)["success_url"]

    response = alice_client.get(success_url.removeprefix("http://testserver"), follow=True)

    assert response.status_code == 200
    assert "Thank you! Acme is on the Pro plan." in response.content.decode()
    assert subscription_for(alice_org).plan.slug == "pro"


def test_the_customer_is_created_once(alice_client: Any, alice_org: Any, fake_stripe: FakeStripe) -> None:
    checkout_session_id(start_checkout(alice_client))
    checkout_session_id(start_checkout(alice_client, "team"))

    creates = fake_stripe.requests_to("POST", "/v1/customers")
    assert len(creates) == 1
    assert creates[0].params["metadata"] == {"organization_id": alice_org.public_id}
    assert creates[0].idempotency_key == f"mw-customer-{alice_org.public_id}"
    sessions = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    assert {s.params["customer"] for s in sessions} == {subscription_for(alice_org).stripe_customer_id}


def test_manage_billing_redirects_to_the_portal(
    alice_client: Any, alice_org: Any, fake_stripe: FakeStripe, deliver_and_apply: Any
) -> None:
    session_id = checkout_session_id(start_checkout(alice_client))
    deliver_and_apply(
        fake_stripe.add_event("checkout.session.completed", fake_stripe.complete_checkout(session_id))
    )

    page = alice_client.get("/billing/").content.decode()
    assert "Manage billing" in page
    response = alice_client.post("/billing/portal")

    assert response.status_code == 303
    portal = fake_stripe.requests_to("POST", "/v1/billing_portal/sessions")[0]
    assert portal.params == {
        "customer": subscription_for(alice_org).stripe_customer_id,
        "return_url": "http://testserver/billing/",
    }
    assert response["Location"].startswith(f"{fake_stripe.url}/p/session/")


def test_a_paying_organization_changes_plans_in_the_portal_not_checkout(
    alice_client: Any, fake_stripe: FakeStripe, deliver_and_apply: Any
) -> None:
    session_id = checkout_session_id(start_checkout(alice_client))
    deliver_and_apply(
        fake_stripe.add_event("checkout.session.completed", fake_stripe.complete_checkout(session_id))
    )

    response = start_checkout(alice_client, "team")

    assert response.status_code == 409
    assert (
        "You already have a paid subscription: change plans under Manage billing."
        in response.content.decode()
    )
    assert len(fake_stripe.requests_to("POST", "/v1/checkout/sessions")) == 1


def test_a_member_cannot_start_checkout_or_open_the_portal(
    client: Any, bob: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    login(client, bob)

    checkout = start_checkout(client)
    portal = client.post("/billing/portal")

    assert checkout.status_code == 403
    assert "Only owners and admins can change the plan." in checkout.content.decode()
    assert portal.status_code == 403
    assert "Only owners and admins can manage billing." in portal.content.decode()
    assert fake_stripe.requests_to("POST", "/v1/customers") == []
    assert subscription_for(alice_org).stripe_customer_id == ""


def test_an_unknown_or_unsold_plan_is_refused(alice_client: Any, fake_stripe: FakeStripe) -> None:
    assert start_checkout(alice_client, "platinum").status_code == 404
    free = start_checkout(alice_client, "free")
    assert free.status_code == 400
    assert "The Free plan cannot be bought online." in free.content.decode()
    assert fake_stripe.state.requests == []


def test_carol_cannot_apply_alices_checkout_session(
    alice_client: Any, alice_org: Any, client: Any, carol: Any, fake_stripe: FakeStripe
) -> None:
    session_id = checkout_session_id(start_checkout(alice_client))
    fake_stripe.complete_checkout(session_id)
    login(client, carol)

    response = client.get(f"/billing/checkout/return?session_id={session_id}")
    unknown = client.get("/billing/checkout/return?session_id=cs_test_nosuchsession")

    assert response.status_code == 404
    assert unknown.status_code == 404
    assert subscription_for(alice_org).plan.slug == "free"
    assert subscription_for(carol.memberships.get().organization).plan.slug == "free"


def test_a_stripe_outage_is_a_503_with_a_message_not_a_500(
    alice_client: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    fake_stripe.fail(500)

    started = time.monotonic()
    response = start_checkout(alice_client)
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert "Billing is temporarily unavailable" in response.content.decode()
    assert elapsed < 11
    # A user-facing request is not retried: it answers now, and the person may click again.
    assert len(fake_stripe.requests_to("POST", "/v1/customers")) == 1
    assert subscription_for(alice_org).stripe_customer_id == ""


def test_a_hanging_stripe_answers_503_within_the_budget(
    alice_client: Any, settings: Any, fake_stripe: FakeStripe
) -> None:
    # The budget and the per-call timeout are 10 s in production; scaled down here.
    settings.STRIPE_HTTP_TIMEOUT_SECONDS = 1.5
    fake_stripe.hang(10)

    started = time.monotonic()
    response = start_checkout(alice_client)
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert "Billing is temporarily unavailable" in response.content.decode()
    assert elapsed < 4  # one 1.5 s timeout, no retry; never the 10 s hang


def test_checkout_return_during_an_outage_says_the_plan_updates_soon(
    alice_client: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    session_id = checkout_session_id(start_checkout(alice_client))
    fake_stripe.complete_checkout(session_id)
    fake_stripe.fail(503)

    response = alice_client.get(f"/billing/checkout/return?session_id={session_id}", follow=True)

    assert response.status_code == 200
    assert "your plan updates in a few minutes" in response.content.decode()
    assert parse_qs(urlsplit(response.redirect_chain[-1][0]).query) == {}
