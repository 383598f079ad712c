"""Usage to Stripe Billing Meters, through an outbox (`MeterEvent`).

`fill_outbox` sums the usage records of each closed hour per (organization, unit) into one row;
`send_outbox` sends the unsent rows. The value is the **cost in micro-dollars**, not the quantity:
prices live in our price book (per model), so Stripe needs one price of $0.000001 per unit, and the
included credit of a plan is one free first tier. Every unit goes to one meter by default
(`modelworks_usage`); `settings.STRIPE_METER_EVENT_NAMES` may map a unit to its own meter.

Exactly once: a row's identifier, `mw-{organization}-{YYYYMMDDHH}-{unit}`, is derived from what it
counts, and is also the Idempotency-Key. A row is marked sent only after Stripe answered 2xx; if we
crash in between, the next run sends the same identifier again and Stripe counts it once. Failures
stay in the outbox (attempts, last_error) for the next run. Rows still unsent after 30 days raise an
alert (Stripe refuses events older than 35 days), and are never dropped.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import F, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from apps.billing import stripe_api
from apps.billing.models import MeterEvent, UsageRecord

logger = logging.getLogger(__name__)

DEFAULT_EVENT_NAME = "modelworks_usage"
# Usage is written when a job's transaction commits, a moment after `created_at` was set: an
# hour is summed only once this long has passed after its end.
SETTLE = timedelta(minutes=5)
# How far back each fill looks: covers a beat outage of two days without scanning all history.
LOOKBACK = timedelta(hours=48)
ALERT_AGE = timedelta(days=30)
STRIPE_MAX_AGE = timedelta(days=35)
# Stop a run after this many outage errors in a row: Stripe is down, the next run retries.
MAX_CONSECUTIVE_OUTAGES = 3
SENDER_LOCK = 0x6D770001  # pg advisory lock key: one sender at a time
ALREADY_EXISTS = "resource_already_exists"


def event_name(unit: str) -> str:
    names: dict[str, str] = getattr(settings, "STRIPE_METER_EVENT_NAMES", {})
    return names.get(unit, DEFAULT_EVENT_NAME)


def identifier(organization_public_id: str, hour: datetime, unit: str) -> str:
    value = f"mw-{organization_public_id}-{hour.astimezone(UTC):%Y%m%d%H}-{unit}"
    assert len(value) <= 100, value  # Stripe's limit for identifiers and idempotency keys
    return value


def fill_outbox(now: datetime | None = None) -> int:
    """One row per (organization, closed hour, unit) with usage, for organizations with a Stripe
    customer. Returns how many rows were added."""
    now = now or timezone.now()
    closed_before = (now - SETTLE).replace(minute=0, second=0, microsecond=0)
    totals = (
        UsageRecord.objects.filter(
            created_at__gte=closed_before - LOOKBACK,
            created_at__lt=closed_before,
            organization__subscription__stripe_customer_id__gt="",
        )
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values("organization_id", "organization__public_id", "hour", "unit")
        .annotate(value=Sum("cost"))
        .order_by("hour", "organization_id", "unit")
    )
    added = 0
    for total in totals:
        if not total["value"]:
            continue
        row, created = MeterEvent.objects.get_or_create(
            organization_id=total["organization_id"],
            hour=total["hour"],
            unit=total["unit"],
            defaults={
                "value": total["value"],
                "identifier": identifier(total["organization__public_id"], total["hour"], total["unit"]),
            },
        )
        added += created
        if not created and row.value != total["value"]:
            if row.sent_at is None:
                MeterEvent.objects.filter(pk=row.pk, sent_at=None).update(value=total["value"])
            else:
                logger.error(
                    "meter event %s was sent with %d but the hour's usage is now %d: usage was recorded "
                    "after the hour closed; adjust it in Stripe",
                    row.identifier,
                    row.value,
                    total["value"],
                )
    return added


def _try_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [SENDER_LOCK])
        return bool(cursor.fetchone()[0])


def _unlock() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [SENDER_LOCK])


def _alert(row: MeterEvent, now: datetime) -> str:
    days = (now - row.hour).days
    logger.error(
        "ALERT: meter event %s (%s) is %d days old and still unsent. Stripe refuses usage older than "
        "35 days: fix the cause (see last_error) or bill this usage by hand.",
        row.identifier,
        row.organization.public_id,
        days,
    )
    return f"ALERT: unsent for {days} days"


def _record_failure(row: MeterEvent, message: str, alert: str) -> None:
    MeterEvent.objects.filter(pk=row.pk).update(
        last_error=(f"{alert}; {message}" if alert else message)[:500]
    )


def send_outbox(now: datetime | None = None) -> dict[str, int]:
    """Sends every unsent row of an organization with a Stripe customer, oldest first."""
    now = now or timezone.now()
    counts = {"sent": 0, "failed": 0, "skipped": 0}
    if not _try_lock():
        counts["skipped"] = 1  # another sender is running
        return counts
    try:
        rows = (
            MeterEvent.objects.filter(sent_at=None, organization__subscription__stripe_customer_id__gt="")
            .select_related("organization__subscription")
            .order_by("hour", "id")
        )
        outages = 0
        for row in rows:
            alert = _alert(row, now) if now - row.hour > ALERT_AGE else ""
            if now - row.hour > STRIPE_MAX_AGE:
                _record_failure(row, "older than Stripe accepts (35 days): not sent", alert)
                counts["failed"] += 1
                continue
            # Counted before the call, in its own statement, so a crash still leaves a trace.
            MeterEvent.objects.filter(pk=row.pk).update(attempts=F("attempts") + 1)
            try:
                stripe_api.send_meter_event(
                    event_name(row.unit),
                    row.organization.subscription.stripe_customer_id,
                    row.value,
                    row.identifier,
                    int(row.hour.timestamp()),
                )
            except stripe_api.BillingUnavailable as exc:
                _record_failure(row, exc.message, alert)
                counts["failed"] += 1
                outages += 1
                if outages >= MAX_CONSECUTIVE_OUTAGES:
                    break
                continue
            except stripe_api.StripeRejected as exc:
                if exc.code != ALREADY_EXISTS:  # already there: Stripe counted it before
                    logger.error("meter event %s refused by Stripe: %s", row.identifier, exc.message)
                    _record_failure(row, f"refused: {exc.message}", alert)
                    counts["failed"] += 1
                    outages = 0
                    continue
            outages = 0
            # A late row keeps its alert as the outcome, so admin shows it was sent late.
            MeterEvent.objects.filter(pk=row.pk).update(
                sent_at=timezone.now(), last_error=alert and f"{alert}; sent"
            )
            counts["sent"] += 1
    finally:
        _unlock()
    return counts


def report_usage() -> dict[str, int]:
    """The periodic task: fill the outbox, then send it."""
    added = fill_outbox()
    return {"added": added, **send_outbox()}
