"""The Stripe client: pinned version, bounded time, retries with one key, errors mapped (T16)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.billing import stripe_api
from tests.fake_stripe import FakeStripe


def test_the_client_pins_the_version_and_bounds_every_call(fake_stripe: FakeStripe) -> None:
    background = stripe_api.client()
    interactive = stripe_api.client(stripe_api.Deadline(10))

    assert (
        background._requestor._options.stripe_version == stripe_api.STRIPE_API_VERSION == "2026-10-28.endive"
    )
    assert background._requestor._options.max_network_retries == 2
    assert background._requestor._client._timeout == 10
    assert interactive._requestor._options.max_network_retries == 0
    assert interactive._requestor._client._timeout <= 10


def test_requests_carry_the_pinned_version(fake_stripe: FakeStripe) -> None:
    stripe_api.send_meter_event("modelworks_usage", "cus_x", 5, "mw-test-1", int(time.time()))

    request = fake_stripe.requests_to("POST", "/v1/billing/meter_events")[0]
    assert request.headers["stripe-version"] == "2026-10-28.endive"
    assert request.idempotency_key == "mw-test-1"


def test_a_hanging_stripe_times_out_and_retries_twice_with_the_same_key(
    fake_stripe: FakeStripe, settings: Any
) -> None:
    settings.STRIPE_HTTP_TIMEOUT_SECONDS = 0.5  # 10 s in production
    fake_stripe.hang(10)

    started = time.monotonic()
    with pytest.raises(stripe_api.BillingUnavailable):
        stripe_api.send_meter_event("modelworks_usage", "cus_x", 5, "mw-test-hang", int(time.time()))
    elapsed = time.monotonic() - started

    tries = fake_stripe.requests_to("POST", "/v1/billing/meter_events")
    assert len(tries) == 3
    assert {t.idempotency_key for t in tries} == {"mw-test-hang"}
    # three timeouts of 0.5 s plus two backoffs of at most 1 s each, with slack for a loaded machine
    assert elapsed < 0.5 * 3 + 2 + 2


def test_a_user_facing_call_never_outlives_its_deadline(fake_stripe: FakeStripe, settings: Any) -> None:
    fake_stripe.hang(10)

    started = time.monotonic()
    with pytest.raises(stripe_api.BillingUnavailable):
        stripe_api.retrieve_subscription("sub_x", stripe_api.Deadline(1.5))
    elapsed = time.monotonic() - started

    assert elapsed < 4  # within the budget (plus slack for a loaded machine), never the 10 s hang
    assert len(fake_stripe.requests_to("GET", "/v1/subscriptions/sub_x")) == 1  # no retries
    with pytest.raises(stripe_api.BillingUnavailable):
        stripe_api.client(stripe_api.Deadline(0.2))  # too little time left to try


def test_a_refusal_is_not_an_outage(fake_stripe: FakeStripe) -> None:
    with pytest.raises(stripe_api.StripeRejected) as refused:
        stripe_api.retrieve_subscription("sub_does_not_exist")

    assert refused.value.http_status == 404
    assert len(fake_stripe.requests_to("GET", "/v1/subscriptions/sub_does_not_exist")) == 1  # 4xx: no retry


def test_a_rate_limit_is_an_outage(fake_stripe: FakeStripe, settings: Any) -> None:
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    fake_stripe.fail(429)

    with pytest.raises(stripe_api.BillingUnavailable):
        stripe_api.retrieve_invoice("in_x")


def test_no_secret_key_means_billing_is_unavailable(fake_stripe: FakeStripe, settings: Any) -> None:
    settings.STRIPE_SECRET_KEY = ""

    with pytest.raises(stripe_api.BillingUnavailable) as unavailable:
        stripe_api.retrieve_invoice("in_x")

    assert "STRIPE_SECRET_KEY" in unavailable.value.message
    assert fake_stripe.state.requests == []


def test_events_are_listed_30_days_back_at_most(fake_stripe: FakeStripe) -> None:
    stripe_api.list_events(types=["invoice.paid"], since=timezone.now() - timedelta(days=90))

    request = fake_stripe.requests_to("GET", "/v1/events")[0]
    age = time.time() - int(request.params["created"]["gte"])
    assert 30 * 86400 - 5 <= age <= 30 * 86400 + 5
