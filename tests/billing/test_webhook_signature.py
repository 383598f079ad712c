"""The webhook accepts only bodies signed by Stripe, recent, and of a sane size (docs/reliability.md, T17)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from typing import Any

import pytest

from apps.billing.models import StripeEvent
from tests.billing.conftest import WEBHOOK_SECRET, signed_post
from tests.fake_stripe import API_VERSION, FakeStripe, sign

URL = "/billing/stripe/webhook"


def event_body(**extra: Any) -> bytes:
    """An event of a type we do not handle: a valid one is stored and ignored, with no Stripe call."""
    event = {
        "id": "evt_signature_test",
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "type": "customer.created",
        "data": {"object": {"id": "cus_x", "object": "customer"}},
        **extra,
    }
    return json.dumps(event, indent=2).encode()


def v1(payload: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


def test_a_valid_signature_is_accepted(client: Any, fake_stripe: FakeStripe) -> None:
    payload = event_body()

    response = signed_post(client, payload, sign(payload, WEBHOOK_SECRET))

    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    assert StripeEvent.objects.get().outcome == "ignored"


def test_a_timestamp_299_seconds_old_is_accepted(client: Any, fake_stripe: FakeStripe) -> None:
    payload = event_body()

    # Rounded up: a timestamp truncated to the second would already be up to 1 s older.
    response = signed_post(client, payload, sign(payload, WEBHOOK_SECRET, math.ceil(time.time()) - 299))

    assert response.status_code == 200


def test_two_v1_signatures_one_valid_is_accepted(client: Any, fake_stripe: FakeStripe) -> None:
    # While the endpoint secret is rolled, Stripe signs with the old and the new secret.
    payload, now = event_body(), int(time.time())
    header = f"t={now},v1={v1(payload, 'whsec_old_secret', now)},v1={v1(payload, WEBHOOK_SECRET, now)}"

    response = signed_post(client, payload, header)

    assert response.status_code == 200


def _refused(client: Any, payload: bytes, header: str | None) -> Any:
    response = signed_post(client, payload, header)
    assert response.status_code == 400, response.content
    assert response.json() == {"error": "invalid signature"}
    assert not StripeEvent.objects.exists()
    return response


@pytest.mark.parametrize(
    "case",
    [
        "missing header",
        "wrong secret",
        "one byte changed",
        "json re-serialized",
        "301 s old",
        "only v0",
        "garbage",
    ],
)
def test_a_bad_signature_is_refused_and_writes_nothing(
    client: Any, fake_stripe: FakeStripe, case: str
) -> None:
    payload, now = event_body(), int(time.time())
    header: str | None = sign(payload, WEBHOOK_SECRET, now)
    if case == "missing header":
        header = None
    elif case == "wrong secret":
        header = sign(payload, "whsec_someone_else", now)
    elif case == "one byte changed":
        payload = payload.replace(b'"customer.created"', b'"customer.createD"')
    elif case == "json re-serialized":  # same data, other bytes: proves the raw body is verified
        payload = json.dumps(json.loads(payload), separators=(",", ":"), sort_keys=True).encode()
    elif case == "301 s old":
        header = sign(payload, WEBHOOK_SECRET, now - 301)
    elif case == "only v0":
        header = f"t={now},v0={v1(payload, WEBHOOK_SECRET, now)}"
    elif case == "garbage":
        header = "this is not a signature"

    _refused(client, payload, header)
    assert fake_stripe.state.requests == []  # no outbound Stripe call


def test_a_body_of_1_mib_is_refused_unread(client: Any, fake_stripe: FakeStripe) -> None:
    payload = event_body(padding="x" * (1024 * 1024))

    response = signed_post(client, payload, sign(payload, WEBHOOK_SECRET))

    assert response.status_code == 413
    assert not StripeEvent.objects.exists()


def test_get_is_not_allowed(client: Any, fake_stripe: FakeStripe) -> None:
    assert client.get(URL).status_code == 405


def test_the_webhook_needs_no_csrf_token(fake_stripe: FakeStripe) -> None:
    from django.test import Client

    payload = event_body()
    response = signed_post(Client(enforce_csrf_checks=True), payload, sign(payload, WEBHOOK_SECRET))

    assert response.status_code == 200


def test_a_valid_signature_on_a_body_that_is_not_json_is_refused(
    client: Any, fake_stripe: FakeStripe
) -> None:
    payload = b"not json at all"

    response = signed_post(client, payload, sign(payload, WEBHOOK_SECRET))

    assert response.status_code == 400
