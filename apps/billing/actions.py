"""Every change to an organization's billing: Stripe customer, plan and subscription status,
invoices, the failed-payment grace period, spend limits and alerts, and its own OpenAI key.

Stripe is the truth for paid plans. We never trust an event's copy of an object: the `sync_*`
functions fetch the current one while holding the organization's Subscription row, so deliveries
in any order, twice, or concurrently end in Stripe's current state.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import MANAGER_ROLES, Membership, Organization, User
from apps.billing import stripe_api
from apps.billing.models import Invoice, Plan, Subscription
from apps.billing.quotas import FREE, month_spend, spend_cap, subscription_for
from apps.core.crypto import encrypt
from apps.core.errors import ActionError, PermissionDenied
from apps.core.mail import single_line
from apps.core.money import usd

logger = logging.getLogger(__name__)

# Stripe subscription statuses that keep the paid plan. `past_due` keeps it: a failed payment
# starts our own grace period (`payment_failed`) instead.
ENTITLED_STATUSES = {"active", "trialing", "past_due"}
MAX_SPEND_LIMIT = 1_000_000 * 1_000_000  # $1,000,000 a month, in micro-dollars


def _require_manager(user: User, organization: Organization, what: str) -> None:
    membership = Membership.objects.filter(user=user, organization=organization).first()
    if membership is None or membership.role not in MANAGER_ROLES:
        refusal = PermissionDenied(f"Only owners and admins can {what}.")
        refusal.status = 403
        raise refusal


def _rejected(exc: stripe_api.StripeRejected, what: str) -> ActionError:
    logger.error("stripe refused to %s: %s (%s)", what, exc.message, exc.code)
    return ActionError(
        f"Our payment provider refused to {what}: {exc.message}", code="stripe_error", status=502
    )


def _lock(organization: Organization) -> Subscription:
    """The organization's subscription row, locked until the transaction ends (call inside one)."""
    subscription = subscription_for(organization)
    # No join in the locking query: a waiter re-checks the joined plan row after the holder commits,
    # and a holder that changed the plan would make PostgreSQL drop the row (DoesNotExist).
    return Subscription.objects.select_for_update().get(pk=subscription.pk)


def start_free_subscription(organization: Organization) -> Subscription:
    """A new organization's subscription, on the Free plan (onboarding calls this in the
    transaction that creates the organization)."""
    return Subscription.objects.create(organization=organization, plan=Plan.objects.get(slug=FREE))


# --- Checkout and the Customer Portal --------------------------------------------------------------


def _ensure_customer(organization: Organization, deadline: stripe_api.Deadline) -> str:
    subscription = subscription_for(organization)
    if subscription.stripe_customer_id:
        return subscription.stripe_customer_id
    customer_id = stripe_api.ensure_customer(
        "", organization_id=organization.public_id, name=organization.name, deadline=deadline
    )
    # Conditional: two first checkouts at once get the same customer (same idempotency key) and
    # only one write lands.
    Subscription.objects.filter(pk=subscription.pk, stripe_customer_id="").update(
        stripe_customer_id=customer_id
    )
    subscription.refresh_from_db(fields=["stripe_customer_id"])
    return subscription.stripe_customer_id


def start_checkout(
    organization: Organization, user: User, plan_slug: str, *, return_url: str, cancel_url: str
) -> str:
    """The URL of a Stripe Checkout page that subscribes the organization to the plan. Stripe sends
    the customer to `return_url` (with `?session_id=`) once paid, to `cancel_url` otherwise."""
    _require_manager(user, organization, "change the plan")
    plan = Plan.objects.filter(slug=plan_slug).first()
    if plan is None:
        raise ActionError(f"There is no plan called {plan_slug!r}.", param="plan", status=404)
    if not plan.stripe_price_id:
        raise ActionError(
            f"The {plan.name} plan cannot be bought online. Contact us to get it.", param="plan"
        )
    subscription = subscription_for(organization)
    if subscription.stripe_subscription_id and subscription.status in ENTITLED_STATUSES:
        message = (
            f"You are already on the {plan.name} plan."
            if subscription.plan_id == plan.pk
            else "You already have a paid subscription: change plans under Manage billing."
        )
        raise ActionError(message, param="plan", code="already_subscribed", status=409)
    deadline = stripe_api.Deadline()
    try:
        customer_id = _ensure_customer(organization, deadline)
        session = stripe_api.create_checkout_session(
            customer_id=customer_id,
            price_id=plan.stripe_price_id,
            organization_id=organization.public_id,
            plan_slug=plan.slug,
            # Stripe fills in {CHECKOUT_SESSION_ID}; the return page applies the result at once.
            success_url=return_url + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=cancel_url,
            deadline=deadline,
        )
    except stripe_api.StripeRejected as exc:
        raise _rejected(exc, "start checkout") from exc
    return str(session["url"])


def open_portal(organization: Organization, user: User, *, return_url: str) -> str:
    """The URL of the Stripe Customer Portal: payment methods, plan changes, cancellation, invoices;
    its way back leads to `return_url`."""
    _require_manager(user, organization, "manage billing")
    customer_id = subscription_for(organization).stripe_customer_id
    if not customer_id:
        raise ActionError("There is no billing account yet: choose a paid plan first.", code="no_customer")
    try:
        session = stripe_api.create_portal_session(
            customer_id=customer_id,
            return_url=return_url,
            deadline=stripe_api.Deadline(),
        )
    except stripe_api.StripeRejected as exc:
        raise _rejected(exc, "open the billing portal") from exc
    return str(session["url"])


# --- Applying Stripe's state -----------------------------------------------------------------------


def _nested(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def object_id(value: Any) -> str:
    """An expandable field: an id, or the expanded object."""
    return str(value.get("id", "")) if isinstance(value, dict) else str(value or "")


def _first_item(stripe_subscription: dict[str, Any]) -> dict[str, Any]:
    items = _nested(stripe_subscription, "items", "data") or [{}]
    return dict(items[0])


def _price_id(stripe_subscription: dict[str, Any]) -> str:
    # `price` on current API versions; `plan` on objects created through the legacy Plans API
    # (a plan's id is also a valid price id).
    item = _first_item(stripe_subscription)
    return (
        object_id(item.get("price"))
        or object_id(item.get("plan"))
        or object_id(stripe_subscription.get("plan"))
    )


def _period_end(stripe_subscription: dict[str, Any]) -> datetime | None:
    # Moved from the subscription to its items in API version 2025-03-31.basil.
    end = _first_item(stripe_subscription).get("current_period_end") or stripe_subscription.get(
        "current_period_end"
    )
    return datetime.fromtimestamp(int(end), tz=UTC) if end else None


def _invoice_subscription_id(invoice: dict[str, Any]) -> str:
    return object_id(_nested(invoice, "parent", "subscription_details", "subscription")) or object_id(
        invoice.get("subscription")
    )


def organization_for_customer(customer_id: str) -> Organization | None:
    if not customer_id:
        return None
    subscription = (
        Subscription.objects.select_related("organization").filter(stripe_customer_id=customer_id).first()
    )
    return subscription.organization if subscription else None


@transaction.atomic
def apply_subscription(organization: Organization, stripe_subscription: dict[str, Any], *, as_of: int) -> str:
    """Mirrors a Stripe subscription: plan (from its price), status, period end.

    `as_of` is when the object was known to be current (the fetch time for a re-fetched object,
    `created` for an event's copy). Anything older than what we already applied is ignored.
    """
    subscription = _lock(organization)
    stripe_id = str(stripe_subscription["id"])
    status = str(stripe_subscription.get("status", ""))
    if as_of < subscription.stripe_synced_at:
        return f"ignored {stripe_id}: older than the state applied at {subscription.stripe_synced_at}"
    entitled = status in ENTITLED_STATUSES
    if subscription.stripe_subscription_id not in ("", stripe_id) and not entitled:
        # The end of an old subscription must not downgrade the one that replaced it.
        return f"ignored {stripe_id} ({status}): not the current subscription {subscription.stripe_subscription_id}"
    if entitled:
        price_id = _price_id(stripe_subscription)
        plan = Plan.objects.filter(stripe_price_id=price_id).first() if price_id else None
        if plan is None:
            # Raised, so the event is kept as failed and Stripe redelivers it once staff set the
            # price on the right plan in admin.
            raise ValueError(f"no plan has stripe_price_id {price_id!r} (subscription {stripe_id})")
    else:
        plan = Plan.objects.get(slug=FREE)
        subscription.grace_until = None  # nothing paid is running any more
    subscription.plan = plan
    subscription.status = status
    subscription.stripe_subscription_id = stripe_id
    subscription.current_period_end = _period_end(stripe_subscription)
    subscription.stripe_synced_at = as_of
    customer_id = object_id(stripe_subscription.get("customer"))
    if customer_id and not subscription.stripe_customer_id:
        subscription.stripe_customer_id = customer_id
    subscription.save(
        update_fields=[
            "plan",
            "status",
            "stripe_subscription_id",
            "current_period_end",
            "stripe_synced_at",
            "stripe_customer_id",
            "grace_until",
            "updated_at",
        ]
    )
    return f"{stripe_id}: {plan.slug} ({status})"


@transaction.atomic
def sync_subscription(
    organization: Organization, subscription_id: str, deadline: stripe_api.Deadline | None = None
) -> str:
    """Fetches the subscription from Stripe and applies it.

    The row lock is taken *before* the fetch: of two concurrent syncs, the one that writes last
    also fetched last, so an older state can never overwrite a newer one.
    """
    subscription = _lock(organization)
    try:
        current = stripe_api.retrieve_subscription(subscription_id, deadline)
    except stripe_api.StripeRejected as exc:
        if exc.http_status != 404:
            raise
        current = {"id": subscription_id, "status": "canceled", "customer": subscription.stripe_customer_id}
    customer_id = object_id(current.get("customer"))
    if subscription.stripe_customer_id and customer_id and customer_id != subscription.stripe_customer_id:
        raise ValueError(
            f"subscription {subscription_id} belongs to {customer_id}, not {subscription.stripe_customer_id}"
        )
    return apply_subscription(organization, current, as_of=int(time.time()))


def sync_checkout_session(
    session_id: str, *, organization: Organization | None = None, deadline: stripe_api.Deadline | None = None
) -> str:
    """Applies a completed Checkout Session. With `organization` (the return page), a session of
    another organization is a 404."""
    session = stripe_api.retrieve_checkout_session(session_id, deadline)
    organization_id = str(
        _nested(session, "metadata", "organization_id") or session.get("client_reference_id") or ""
    )
    owner = Organization.objects.filter(public_id=organization_id).first() if organization_id else None
    if organization is not None and owner != organization:
        raise ActionError("No such checkout session.", status=404, code="not_found")
    if owner is None:
        return f"ignored {session_id}: no organization {organization_id!r}"
    subscription_id = object_id(session.get("subscription"))
    if session.get("status") != "complete" or not subscription_id:
        return f"ignored {session_id}: not complete ({session.get('status')})"
    with transaction.atomic():
        subscription = _lock(owner)
        customer_id = object_id(session.get("customer"))
        if customer_id and not subscription.stripe_customer_id:
            subscription.stripe_customer_id = customer_id
            subscription.save(update_fields=["stripe_customer_id", "updated_at"])
        return sync_subscription(owner, subscription_id, deadline)


def record_invoice(organization: Organization, invoice: dict[str, Any]) -> Invoice:
    created = invoice.get("created") or invoice.get("date") or time.time()
    url = str(invoice.get("hosted_invoice_url") or "")
    row, _ = Invoice.objects.update_or_create(
        stripe_invoice_id=str(invoice["id"]),
        defaults={
            "organization": organization,
            "status": str(invoice.get("status") or ""),
            "amount_due": int(invoice.get("amount_due") or 0),
            "currency": str(invoice.get("currency") or "usd")[:3],
            # A link cut short would be broken: none is better (invoices are in the Portal too).
            "hosted_invoice_url": url if len(url) <= 500 else "",
            "created": datetime.fromtimestamp(int(created), tz=UTC),
        },
    )
    return row


@transaction.atomic
def payment_failed(organization: Organization) -> Subscription:
    """Starts the grace period (once: later failed retries do not extend it)."""
    subscription = _lock(organization)
    if subscription.grace_until is None:
        subscription.grace_until = timezone.now() + timedelta(days=settings.BILLING_GRACE_DAYS)
        subscription.save(update_fields=["grace_until", "updated_at"])
    return subscription


@transaction.atomic
def payment_succeeded(organization: Organization) -> Subscription:
    subscription = _lock(organization)
    if subscription.grace_until is not None:
        subscription.grace_until = None
        subscription.save(update_fields=["grace_until", "updated_at"])
    return subscription


@transaction.atomic
def sync_invoice(invoice_id: str, *, failed: bool, customer_id: str = "") -> str:
    """Records the invoice as Stripe has it now; a paid one ends any grace period, an open one
    after a failed payment of the current subscription starts it. Decided on the current status,
    so a late `payment_failed` for an invoice since paid changes nothing.

    `customer_id` (an invoice's customer never changes) finds the organization to lock before the
    fetch; without it the invoice is fetched once more to learn it.
    """
    if not customer_id:
        customer_id = object_id(stripe_api.retrieve_invoice(invoice_id).get("customer"))
    organization = organization_for_customer(customer_id)
    if organization is None:
        return f"ignored {invoice_id}: no organization has customer {customer_id!r}"
    subscription = _lock(organization)
    invoice = stripe_api.retrieve_invoice(invoice_id)
    if object_id(invoice.get("customer")) != customer_id:
        raise ValueError(f"invoice {invoice_id} belongs to {invoice.get('customer')!r}, not {customer_id!r}")
    record_invoice(organization, invoice)
    status = invoice.get("status")
    if status == "paid":
        payment_succeeded(organization)
        return f"{invoice_id}: paid"
    current = _invoice_subscription_id(invoice) == subscription.stripe_subscription_id
    if failed and status == "open" and current and subscription.plan.slug != FREE:
        grace_until = payment_failed(organization).grace_until
        return f"{invoice_id}: payment failed, grace until {grace_until:%Y-%m-%d %H:%M}"
    return f"{invoice_id}: recorded ({status})"


# --- Spend limits and alerts ---------------------------------------------------------------------


def dollars_to_micro(text: str, field: str, label: str) -> int | None:
    """'12.50' → 12_500_000. Blank → None (no limit)."""
    text = text.strip().lstrip("$").replace(",", "")
    if not text:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ActionError(f"{label}: enter an amount in dollars, like 250 or 99.50.", param=field) from None
    if not amount.is_finite() or amount < 0:
        raise ActionError(f"{label} cannot be negative.", param=field)
    # Compared in dollars, before multiplying: "1e999999" is a finite Decimal whose micro-dollars
    # pass the Decimal context's largest exponent (an Overflow error).
    if amount > Decimal(MAX_SPEND_LIMIT) / 1_000_000:
        raise ActionError(f"{label} can be at most {usd(MAX_SPEND_LIMIT)} a month.", param=field)
    micro = amount * 1_000_000
    if micro != micro.to_integral_value():
        raise ActionError(f"{label}: use at most 6 decimal places.", param=field)
    return int(micro)


@transaction.atomic
def set_spend_limits(
    organization: Organization, user: User, spend_limit: int | str | None, alert_threshold: int | str | None
) -> Subscription:
    """A monthly spend limit (work is refused past it) and an alert threshold (one email a month).

    Micro-dollars, or text in dollars as a person typed it ("250", "99.50"); None or blank removes
    the limit or the alert.
    """
    _require_manager(user, organization, "change spend limits")
    if isinstance(spend_limit, str):
        spend_limit = dollars_to_micro(spend_limit, "spend_limit", "The spend limit")
    if isinstance(alert_threshold, str):
        alert_threshold = dollars_to_micro(alert_threshold, "alert_threshold", "The alert threshold")
    for value, field, label in (
        (spend_limit, "spend_limit", "The spend limit"),
        (alert_threshold, "alert_threshold", "The alert threshold"),
    ):
        if value is not None and not 0 <= value <= MAX_SPEND_LIMIT:
            raise ActionError(f"{label} must be between $0 and {usd(MAX_SPEND_LIMIT)}.", param=field)
    if spend_limit is not None and alert_threshold is not None and alert_threshold > spend_limit:
        raise ActionError(
            f"The alert threshold ({usd(alert_threshold)}) is above the spend limit ({usd(spend_limit)}): "
            "the alert would never arrive. Lower it or raise the limit.",
            param="alert_threshold",
        )
    subscription = _lock(organization)
    if alert_threshold != subscription.alert_threshold:
        subscription.alert_sent_for = ""  # a new threshold may alert again this month
    subscription.spend_limit = spend_limit
    subscription.alert_threshold = alert_threshold
    subscription.save(update_fields=["spend_limit", "alert_threshold", "alert_sent_for", "updated_at"])
    return subscription


def managers_emails(organization: Organization) -> list[str]:
    return list(
        Membership.objects.filter(organization=organization, role__in=MANAGER_ROLES, user__is_active=True)
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )


def check_spend_alert(organization: Organization) -> bool:
    """Emails the owners and admins once a month when spend passes the alert threshold."""
    subscription = subscription_for(organization)
    month = timezone.now().strftime("%Y-%m")
    threshold = subscription.alert_threshold
    if threshold is None or subscription.alert_sent_for == month:
        return False
    spend = month_spend(organization)
    if spend < threshold:
        return False
    # Claim the month first (a conditional update), so two concurrent checks send one email.
    claimed = (
        Subscription.objects.filter(pk=subscription.pk)
        .exclude(alert_sent_for=month)
        .update(alert_sent_for=month, updated_at=timezone.now())
    )
    if not claimed:
        return False
    limit = (
        f" Your spend limit is {usd(subscription.spend_limit)}."
        if subscription.spend_limit is not None
        else ""
    )
    try:
        send_mail(
            subject=f"{single_line(organization.name)} passed {usd(threshold)} of spend this month",
            message=(
                f"{organization.name} has spent {usd(spend)} on Modelworks this month, past the alert "
                f"threshold of {usd(threshold)} you set.{limit}\n\n"
                f"See usage and change the threshold: {settings.SITE_URL}{reverse('dashboard:billing')}"
            ),
            from_email=None,
            recipient_list=managers_emails(organization),
        )
    except Exception:
        # Give the month back so the next check retries the email, then let the error show.
        Subscription.objects.filter(pk=subscription.pk, alert_sent_for=month).update(
            alert_sent_for=subscription.alert_sent_for
        )
        raise
    return True


def check_spend_alerts() -> int:
    """The periodic sweep: every organization with a threshold not yet alerted this month.

    One organization's failure (its mail server refusing an address, say) is logged and leaves its
    month unclaimed for the next sweep; the organizations after it still get their alerts."""
    month = timezone.now().strftime("%Y-%m")
    candidates = Subscription.objects.filter(alert_threshold__isnull=False).exclude(alert_sent_for=month)
    sent = 0
    for subscription in candidates.select_related("organization").order_by("pk"):
        try:
            sent += check_spend_alert(subscription.organization)
        except Exception:
            logger.exception("spend alert for organization %s failed", subscription.organization.public_id)
    return sent


def billing_banners(organization: Organization | None) -> list[str]:
    """What every dashboard page says about billing: a failed payment and its grace period, quota
    exhausted, spend past the alert threshold."""
    if organization is None:
        return []
    subscription = subscription_for(organization)
    banners = []
    now = timezone.now()
    if subscription.grace_until is not None:
        when = f"{subscription.grace_until:%Y-%m-%d %H:%M} UTC"
        if now <= subscription.grace_until:
            banners.append(
                f"Your last payment failed. Update your payment method under Billing → Manage billing "
                f"before {when}, or new paid work will pause."
            )
        else:
            banners.append(
                f"Your last payment failed and the grace period ended {when}: new paid work is paused. "
                "Update your payment method under Billing → Manage billing. Your data stays available."
            )
    spend = month_spend(organization)
    cap = spend_cap(subscription)
    if cap is not None and spend >= cap:
        if subscription.spend_limit is not None and cap == subscription.spend_limit:
            banners.append(
                f"You reached your monthly spend limit of {usd(cap)}: new work is refused until you raise it."
            )
        else:
            banners.append(
                f"You used this month's {usd(cap)} of included credit on the {subscription.plan.name} plan: "
                "upgrade under Billing to keep going."
            )
    elif subscription.alert_threshold is not None and spend >= subscription.alert_threshold:
        banners.append(
            f"This month's spend, {usd(spend)}, passed your alert threshold of {usd(subscription.alert_threshold)}."
        )
    return banners


# --- The organization's own OpenAI key ----------------------------------------------------------


def set_openai_key(organization: Organization, user: User, key: str) -> None:
    """Stored encrypted; never shown again (only a hint like sk-…abcd)."""
    _require_manager(user, organization, "change the OpenAI key")
    key = key.strip()
    if not key:
        raise ActionError("Paste your OpenAI API key.", param="openai_api_key")
    if not key.startswith("sk-") or len(key) < 20 or len(key) > 300 or any(c.isspace() for c in key):
        raise ActionError(
            "That does not look like an OpenAI API key: it starts with 'sk-' and has no spaces.",
            param="openai_api_key",
        )
    organization.openai_api_key_encrypted = encrypt(key)
    organization.save(update_fields=["openai_api_key_encrypted"])


def remove_openai_key(organization: Organization, user: User) -> None:
    _require_manager(user, organization, "change the OpenAI key")
    organization.openai_api_key_encrypted = ""
    organization.save(update_fields=["openai_api_key_encrypted"])
