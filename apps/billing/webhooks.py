"""The Stripe webhook, and the reconciliation that catches events it never received.

Order of work (Zulip's `corporate/views/webhook.py`, dj-stripe's `Event.process`): refuse an
oversized body unread; verify the signature on the raw bytes; note an API-version mismatch; store
the event id once (a unique constraint); ignore types we do not handle; otherwise lock the event
row, re-fetch the object from Stripe and apply it in one transaction; record the outcome. A failure
rolls the transaction back, keeps the error and traceback on the row and answers 500, so Stripe
delivers the event again and the retry processes it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from apps.billing import actions, stripe_api
from apps.billing.models import StripeEvent

logger = logging.getLogger(__name__)

# Real events are a few kilobytes; refusing a huge body before reading it costs nothing.
MAX_BODY_BYTES = 1024 * 1024

Event = dict[str, Any]


def _checkout_completed(event: Event) -> str:
    return actions.sync_checkout_session(str(event["data"]["object"]["id"]))


def _subscription_changed(event: Event) -> str:
    obj = event["data"]["object"]
    # The customer of a subscription never changes, so the event's copy of it is safe to use.
    organization = actions.organization_for_customer(actions.object_id(obj.get("customer")))
    if organization is None:
        return f"ignored: no organization has customer {obj.get('customer')!r}"
    return actions.sync_subscription(organization, str(obj["id"]))


def _invoice_paid(event: Event) -> str:
    obj = event["data"]["object"]
    return actions.sync_invoice(
        str(obj["id"]), failed=False, customer_id=actions.object_id(obj.get("customer"))
    )


def _invoice_payment_failed(event: Event) -> str:
    obj = event["data"]["object"]
    return actions.sync_invoice(
        str(obj["id"]), failed=True, customer_id=actions.object_id(obj.get("customer"))
    )


HANDLERS: dict[str, Callable[[Event], str]] = {
    "checkout.session.completed": _checkout_completed,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
}


def process_event(event: Event) -> tuple[int, str]:
    """Handles a verified event once. Returns the HTTP status for Stripe and the outcome."""
    event_id, event_type = str(event["id"]), str(event.get("type", ""))
    if event.get("api_version") != stripe_api.STRIPE_API_VERSION:
        logger.warning(
            "stripe event %s has API version %s, we pin %s: update the webhook endpoint's version",
            event_id, event.get("api_version"), stripe_api.STRIPE_API_VERSION,
        )  # fmt: skip
    # Committed on its own, so an error can be kept on it after the work is rolled back.
    # get_or_create absorbs the IntegrityError of a concurrent delivery creating the same row.
    row, _ = StripeEvent.objects.get_or_create(
        event_id=event_id, defaults={"type": event_type[:100], "created": int(event.get("created") or 0)}
    )
    if row.processed_at is not None:
        return 200, "duplicate"
    handler = HANDLERS.get(event_type)
    if handler is None:
        StripeEvent.objects.filter(pk=row.pk, processed_at=None).update(
            processed_at=timezone.now(), outcome="ignored"
        )
        return 200, "ignored"
    try:
        with transaction.atomic():
            # Concurrent deliveries of one event wait here; each then sees it processed. (They must
            # wait, not answer 200 at once: if this attempt fails, a 200 would end Stripe's retries.)
            locked = StripeEvent.objects.select_for_update().get(pk=row.pk)
            if locked.processed_at is not None:
                return 200, "duplicate"
            outcome = handler(event)
            locked.processed_at = timezone.now()
            locked.outcome = outcome[:300]
            locked.error = ""
            locked.save(update_fields=["processed_at", "outcome", "error"])
    except Exception as exc:
        # Anything a handler raises: the transaction is rolled back, the error kept, and the 500
        # makes Stripe deliver the event again.
        logger.exception("stripe event %s (%s) failed", event_id, event_type)
        StripeEvent.objects.filter(pk=row.pk).update(
            outcome=f"failed: {exc}"[:300], error=traceback.format_exc()[-20_000:]
        )
        return 500, "failed"
    logger.info("stripe event %s (%s): %s", event_id, event_type, outcome)
    return 200, outcome


@csrf_exempt  # Stripe cannot send a CSRF token; the signature is the authentication.
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length >= MAX_BODY_BYTES:
        return JsonResponse({"error": "body too large"}, status=413)
    try:
        event = stripe_api.construct_event(request.body, request.headers.get("Stripe-Signature"))
    except stripe_api.InvalidWebhook as exc:
        logger.warning("stripe webhook refused: %s", exc)
        return JsonResponse({"error": "invalid signature"}, status=400)
    status, outcome = process_event(event)
    return JsonResponse({"received": True, "outcome": outcome}, status=status)


def reconcile_missed_events() -> dict[str, int]:
    """Processes the events of the last 30 days that Stripe failed to deliver and we never handled.

    Safe to run any time and twice: an event already processed is skipped (and would be a
    "duplicate" in `process_event` anyway).
    """
    events = stripe_api.list_events(types=sorted(HANDLERS), undelivered_only=True)
    done = set(
        StripeEvent.objects.filter(
            event_id__in=[e["id"] for e in events], processed_at__isnull=False
        ).values_list("event_id", flat=True)
    )
    counts = {"listed": len(events), "processed": 0, "failed": 0}
    for event in sorted(events, key=lambda e: int(e.get("created") or 0)):  # oldest first
        if event["id"] in done:
            continue
        status, _ = process_event(event)
        counts["processed" if status == 200 else "failed"] += 1
    return counts
