"""Everything we ask Stripe, in one module: the only `import stripe` in the project.

Callers get plain dicts back (never SDK objects) and two kinds of failure:

- `BillingUnavailable`: Stripe could not be reached or answered 5xx/429 (or our keys are wrong).
  Retrying later can succeed; user-facing pages answer 503 with its message.
- `StripeRejected`: Stripe refused the request itself (4xx). Retrying the same request will not help.

Every call has a 10 s timeout. Background callers (webhooks, meters, reconciliation) let the SDK
retry twice; its retries resend the same Idempotency-Key, ours where we pass one (meter events,
customers), the SDK's own otherwise. User-facing callers pass a `Deadline` instead: no retries, and
each call gets only what is left of a 10 s budget, so a page never waits on Stripe for longer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

import stripe
from django.conf import settings
from django.utils import timezone

from apps.core.errors import ActionError

logger = logging.getLogger(__name__)

# Pinned: the SDK sends it on every request, and the webhook endpoint in Stripe's dashboard must be
# created with the same version, so event payloads have the shape this code reads.
STRIPE_API_VERSION = "2026-10-28.endive"
TIMEOUT_SECONDS = 10.0
MAX_NETWORK_RETRIES = 2
INTERACTIVE_BUDGET_SECONDS = 10.0
WEBHOOK_TOLERANCE_SECONDS = 300
# Stripe keeps events for 30 days; asking for older ones is an error.
EVENTS_LOOKBACK_DAYS = 30

StripeObject = dict[str, Any]
T = TypeVar("T")


class BillingUnavailable(ActionError):
    """Stripe is unreachable, slow, failing, or we are misconfigured. Safe to retry later."""

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "Billing is temporarily unavailable: we could not reach our payment provider. "
            "Nothing was changed or charged. Please try again in a few minutes.",
            code="billing_unavailable",
            status=503,
        )


class StripeRejected(Exception):
    """Stripe refused the request (4xx): retrying it unchanged will not help."""

    def __init__(self, message: str, *, code: str | None, http_status: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class InvalidWebhook(Exception):
    """The webhook's signature, timestamp or body is not acceptable."""


class Deadline:
    """A time budget shared by the Stripe calls of one user-facing request."""

    def __init__(self, seconds: float = INTERACTIVE_BUDGET_SECONDS) -> None:
        self.ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.ends_at - time.monotonic()


# --- The client ----------------------------------------------------------------------------------


def timeout_seconds() -> float:
    # A setting only so tests can make "Stripe hangs" fast; production uses the 10 s default.
    return float(getattr(settings, "STRIPE_HTTP_TIMEOUT_SECONDS", TIMEOUT_SECONDS))


def max_network_retries() -> int:
    return int(getattr(settings, "STRIPE_MAX_NETWORK_RETRIES", MAX_NETWORK_RETRIES))


@lru_cache(maxsize=32)
def _client_for(api_key: str, base: str | None, timeout: float, retries: int) -> stripe.StripeClient:
    bases: dict[str, str | None] = {}
    if base:
        bases = {"api": base, "meter_events": base}
    return stripe.StripeClient(
        api_key,
        stripe_version=STRIPE_API_VERSION,
        base_addresses=bases,  # type: ignore[arg-type]
        max_network_retries=retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def client(deadline: Deadline | None = None) -> stripe.StripeClient:
    if not settings.STRIPE_SECRET_KEY:
        raise BillingUnavailable(
            "Online payments are not set up on this server (STRIPE_SECRET_KEY is empty)."
        )
    timeout, retries = timeout_seconds(), max_network_retries()
    if deadline is not None:
        left = deadline.remaining()
        if left < 0.5:
            raise BillingUnavailable()
        # Rounded down to 0.5 s so a handful of cached clients cover every budget.
        timeout, retries = min(timeout, math.floor(left * 2) / 2), 0
    return _client_for(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, timeout, retries)


def _call(what: str, operation: Callable[[stripe.StripeClient], T], deadline: Deadline | None = None) -> T:
    """Runs one Stripe call, turning the SDK's errors into ours."""
    stripe_client = client(deadline)
    try:
        return operation(stripe_client)
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        # Timeouts and refused connections (after the SDK's retries), or Stripe asking us to slow down.
        logger.warning("stripe %s: unavailable: %s", what, exc.user_message or exc)
        raise BillingUnavailable() from exc
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        logger.error("stripe %s: our API key was refused: %s", what, exc.user_message or exc)
        raise BillingUnavailable() from exc
    except stripe.StripeError as exc:
        status = exc.http_status
        if status is None or status >= 500:
            logger.warning("stripe %s: server error %s: %s", what, status, exc.user_message or exc)
            raise BillingUnavailable() from exc
        logger.info("stripe %s: rejected (%s %s): %s", what, status, exc.code, exc.user_message or exc)
        raise StripeRejected(str(exc.user_message or exc), code=exc.code, http_status=status) from exc


def _plain(obj: Any) -> StripeObject:
    return dict(obj.to_dict())


# --- Customers, Checkout, Portal -----------------------------------------------------------------


def ensure_customer(
    customer_id: str, *, organization_id: str, name: str, deadline: Deadline | None = None
) -> str:
    """The organization's customer id: `customer_id` when it already has one, else a new customer.

    The Idempotency-Key is derived from the organization, so a retry (ours or the SDK's) after a lost
    response returns the customer created the first time instead of a second one. The parameters
    stay the same from one try to the next (Stripe refuses a reused key with other parameters); the
    billing email is collected by Checkout.
    """
    if customer_id:
        return customer_id
    params = {"name": name, "metadata": {"organization_id": organization_id}}
    customer = _call(
        "create customer",
        lambda c: c.v1.customers.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": f"mw-customer-{organization_id}"},
        ),
        deadline,
    )
    return str(customer.id)


def create_checkout_session(
    *,
    customer_id: str,
    price_id: str,
    organization_id: str,
    plan_slug: str,
    success_url: str,
    cancel_url: str,
    deadline: Deadline | None = None,
) -> StripeObject:
    """A Checkout Session in subscription mode for one plan; the organization travels in metadata."""
    metadata = {"organization_id": organization_id, "plan": plan_slug}
    params = {
        "mode": "subscription",
        "customer": customer_id,
        "line_items": [{"price": price_id, "quantity": 1}],
        "client_reference_id": organization_id,
        "metadata": metadata,
        "subscription_data": {"metadata": metadata},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    session = _call(
        "create checkout session",
        lambda c: c.v1.checkout.sessions.create(params=params),  # type: ignore[arg-type]
        deadline,
    )
    return _plain(session)


def create_portal_session(
    *, customer_id: str, return_url: str, deadline: Deadline | None = None
) -> StripeObject:
    params = {"customer": customer_id, "return_url": return_url}
    session = _call(
        "create portal session",
        lambda c: c.v1.billing_portal.sessions.create(params=params),  # type: ignore[arg-type]
        deadline,
    )
    return _plain(session)


# --- Reading current state (webhooks re-fetch; they never trust an event's copy) ------------------


def retrieve_checkout_session(session_id: str, deadline: Deadline | None = None) -> StripeObject:
    return _plain(
        _call("retrieve checkout session", lambda c: c.v1.checkout.sessions.retrieve(session_id), deadline)
    )


def retrieve_subscription(subscription_id: str, deadline: Deadline | None = None) -> StripeObject:
    return _plain(
        _call("retrieve subscription", lambda c: c.v1.subscriptions.retrieve(subscription_id), deadline)
    )


def retrieve_invoice(invoice_id: str, deadline: Deadline | None = None) -> StripeObject:
    return _plain(_call("retrieve invoice", lambda c: c.v1.invoices.retrieve(invoice_id), deadline))


def list_events(
    *, types: list[str], since: datetime | None = None, undelivered_only: bool = True
) -> list[StripeObject]:
    """Events of these types from the last 30 days at most (Stripe keeps no more), all pages."""
    oldest = timezone.now() - timedelta(days=EVENTS_LOOKBACK_DAYS)
    since = max(since or oldest, oldest)
    params: dict[str, Any] = {"types": types, "created": {"gte": int(since.timestamp())}, "limit": 100}
    if undelivered_only:
        params["delivery_success"] = False

    def fetch_all(c: stripe.StripeClient) -> list[StripeObject]:
        return [_plain(event) for event in c.v1.events.list(params=params).auto_paging_iter()]  # type: ignore[arg-type]

    return _call("list events", fetch_all)


# --- Meters ---------------------------------------------------------------------------------------


def send_meter_event(
    event_name: str, customer: str, value: int, identifier: str, timestamp: int
) -> StripeObject:
    """One meter event. `identifier` is also the Idempotency-Key: a resend after a crash or a lost
    response is recognised by Stripe as the same event and counted once."""
    params = {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer, "value": str(value)},
        "identifier": identifier,
        "timestamp": timestamp,
    }
    event = _call(
        "send meter event",
        lambda c: c.v1.billing.meter_events.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": identifier},
        ),
    )
    return _plain(event)


# --- Webhooks -------------------------------------------------------------------------------------


def construct_event(payload: bytes, signature_header: str | None) -> StripeObject:
    """Verifies the signature on the raw body (any `v1` signature may match, for secret rotation)
    and the timestamp (at most 300 s old), then parses it. Raises InvalidWebhook."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise InvalidWebhook("STRIPE_WEBHOOK_SECRET is not set")
    try:
        event = stripe.Webhook.construct_event(payload, signature_header, secret, WEBHOOK_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise InvalidWebhook(str(exc.user_message or exc)) from exc
    except ValueError as exc:  # not UTF-8, or not JSON (after a valid signature)
        raise InvalidWebhook(f"unreadable body: {exc}") from exc
    # JSON-safe (decimal strings stay strings): the webhook stores the event as it came.
    return dict(event.to_dict(for_json=True))
