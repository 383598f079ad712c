"""The Stripe webhook, the worker's half of it, and the reconciliation that catches events it never
received.

The webhook only verifies, records and enqueues (docs/reliability.md, T20): refuse an oversized body
unread; verify the signature on the raw bytes; note an API-version mismatch; store the event once
(a unique constraint), with the payload; ignore types we do not handle; otherwise send its
processing to a worker after the commit and answer 200 at once. A failure to record answers 500
with nothing stored, so Stripe delivers the event again.

The worker (`process_recorded_event`, run by the `billing.process_stripe_event` task) locks the
event row, re-fetches the object from Stripe and applies it under the organization's lock, and
marks the row processed, all in one transaction (Zulip's `corporate/views/webhook.py`, dj-stripe's
`Event.process`). A failure rolls it back and keeps the error and traceback on the row; the task
retries Stripe outages with backoff, and the reaper sends any event still unprocessed again (its
message was lost, or every retry failed). Running an event twice applies it once.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from apps.billing import actions, stripe_api
from apps.billing.models import StripeEvent
from apps.core import tasks
from apps.core.broker import send_now

logger = logging.getLogger(__name__)

# Real events are a few kilobytes; refusing a huge body before reading it costs nothing.
MAX_BODY_BYTES = 1024 * 1024
# Stripe retries a failed delivery for three days; the reaper gives an unprocessed event as long.
RESEND_WINDOW = timedelta(days=3)
RESEND_BATCH = 500

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


def publish(event_id: str) -> bool:
    """Sends the event's processing to a worker; False (logged) when the broker is down, and the
    reaper sends it later, since the recorded row is the truth."""
    return send_now(tasks.PROCESS_STRIPE_EVENT, [event_id])


def record_event(event: Event, *, enqueue: bool = True) -> tuple[StripeEvent, str]:
    """Stores a verified event once. Returns the row and `ignored` (a type we do not handle, stored
    as processed), `duplicate` (processed before) or `queued` (processing owed; with `enqueue`, sent
    to a worker after the commit)."""
    event_id, event_type = str(event["id"]), str(event.get("type", ""))
    if event.get("api_version") != stripe_api.STRIPE_API_VERSION:
        logger.warning(
            "stripe event %s has API version %s, we pin %s: update the webhook endpoint's version",
            event_id,
            event.get("api_version"),
            stripe_api.STRIPE_API_VERSION,
        )
    now = timezone.now()
    handled = event_type in HANDLERS
    with transaction.atomic():
        # get_or_create absorbs the IntegrityError of a concurrent delivery creating the same row.
        row, created = StripeEvent.objects.get_or_create(
            event_id=event_id,
            defaults={
                "type": event_type[:100],
                "created": int(event.get("created") or 0),
                "payload": event,
                "published_at": now if handled else None,
                "processed_at": None if handled else now,
                "outcome": "" if handled else "ignored",
            },
        )
        if row.processed_at is not None:
            return row, "ignored" if created else "duplicate"
        if not created:
            # Recorded, not processed yet: its task is queued, retrying, or was lost. Sending it
            # again is harmless (a second run finds it processed) and helps in the last case.
            StripeEvent.objects.filter(pk=row.pk).update(payload=event, published_at=now)
        if enqueue:
            transaction.on_commit(lambda: publish(event_id))
    return row, "queued"


def process_recorded_event(event_id: str) -> str:
    """Applies a recorded event once; returns the outcome. A second run, concurrent or later,
    changes nothing. On failure everything is rolled back, the error and traceback are kept on the
    row, and the exception goes on to the caller (the task retries Stripe outages)."""
    row = StripeEvent.objects.filter(event_id=event_id).only("pk", "processed_at").first()
    if row is None:
        return "missing"  # never recorded here (a message forged or from another database)
    if row.processed_at is not None:
        return "duplicate"
    try:
        with transaction.atomic():
            # Two runs of one event (a redelivered message, the reaper's resend) wait here, and
            # the second then finds it processed.
            locked = StripeEvent.objects.select_for_update().get(pk=row.pk)
            if locked.processed_at is not None:
                return "duplicate"
            event: Event = locked.payload
            handler = HANDLERS.get(str(event.get("type", "")))
            outcome = handler(event) if handler is not None else "ignored"
            locked.processed_at = timezone.now()
            locked.outcome = outcome[:300]
            locked.error = ""
            locked.save(update_fields=["processed_at", "outcome", "error"])
    except Exception as exc:
        logger.exception("stripe event %s failed", event_id)
        StripeEvent.objects.filter(pk=row.pk, processed_at=None).update(
            outcome=f"failed: {exc}"[:300], error=traceback.format_exc()[-20_000:]
        )
        raise
    logger.info("stripe event %s: %s", event_id, outcome)
    return outcome


def apply_event_now(event: Event) -> str:
    """Records and applies an event in this process, without a worker (reconciliation, which runs
    in one already). Raises what processing raises."""
    row, outcome = record_event(event, enqueue=False)
    if outcome != "queued":
        return outcome
    return process_recorded_event(row.event_id)


def resend_unprocessed_events() -> int:
    """The reaper's part: events recorded but still unprocessed after JOB_QUEUED_STALE_SECONDS (the
    broker lost the message, or every retry failed) are sent to a worker again, for as long as
    Stripe itself would have kept redelivering them. SKIP LOCKED passes over an event a worker is
    applying right now (it holds the row)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.JOB_QUEUED_STALE_SECONDS)
    with transaction.atomic():
        stale = list(
            StripeEvent.objects.select_for_update(skip_locked=True)
            .filter(processed_at__isnull=True, published_at__lt=cutoff, received_at__gte=now - RESEND_WINDOW)
            .order_by("published_at")
            .values_list("pk", "event_id")[:RESEND_BATCH]
        )
        StripeEvent.objects.filter(pk__in=[pk for pk, _ in stale]).update(published_at=now)
        for _, event_id in stale:
            transaction.on_commit(lambda event_id=event_id: publish(event_id))  # type: ignore[misc]
    if stale:
        logger.warning("sent %d unprocessed stripe event(s) to a worker again", len(stale))
    return len(stale)


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
    try:
        _, outcome = record_event(event)
    except Exception:
        # Nothing was stored (the transaction rolled back): the 500 makes Stripe deliver it again.
        logger.exception("stripe event %s could not be recorded", event.get("id"))
        return JsonResponse({"error": "the event could not be recorded; deliver it again"}, status=500)
    return JsonResponse({"received": True, "outcome": outcome})


def reconcile_missed_events() -> dict[str, int]:
    """Processes the events of the last 30 days that Stripe failed to deliver and we never handled.

    Safe to run any time and twice: an event already processed is skipped (and would be a
    "duplicate" in `apply_event_now` anyway). Runs in a worker, so it applies them itself.
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
        try:
            apply_event_now(event)
        except Exception:  # logged and kept on the row; the next run (or the reaper) retries it
            counts["failed"] += 1
        else:
            counts["processed"] += 1
    return counts
