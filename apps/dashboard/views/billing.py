"""The billing page of the current organization: plan and status, this month's spend against the
credit and the limit, upgrades (Stripe Checkout), Manage billing (the Customer Portal), invoices,
spend limits, and the organization's own OpenAI key.

Every member sees it; owners and admins change things. It only ever shows the current
organization, so nothing of another organization is reachable. A Stripe outage answers 503 with a
message on the page, within about 10 s (stripe_api's user-facing budget).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db.models import Count, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.accounts.models import UNREADABLE_OPENAI_KEY
from apps.billing import actions, stripe_api
from apps.billing.models import Invoice, MeterEvent, Plan
from apps.billing.quotas import month_spend, month_start, subscription_for
from apps.core.crypto import UnreadableSecret
from apps.core.errors import ActionError
from apps.core.money import MICROS_PER_DOLLAR, dollars_field, usd
from apps.dashboard.views.common import member_required

logger = logging.getLogger(__name__)


def invoice_amount(amount: int, currency: str) -> str:
    """An invoice's amount, in the currency's smallest unit (cents). Dollars read like every other
    amount on the dashboard (`usd`); another currency keeps its code."""
    if currency.lower() == "usd":
        return usd(amount * MICROS_PER_DOLLAR // 100)
    return f"{amount // 100:,}.{amount % 100:02d} {currency.upper()}"


def billing_enabled() -> bool:
    """Whether this instance takes payments: without a Stripe key, plans cannot be bought or
    managed here (apps.billing.stripe_api refuses every call)."""
    return bool(settings.STRIPE_SECRET_KEY)


def banners(request: HttpRequest) -> dict[str, Any]:
    """Context processor: the billing banners every dashboard page shows."""
    organization = getattr(request, "organization", None)
    if organization is None:
        return {}
    return {"banners": actions.billing_banners(organization)}


def _render(
    request: OrganizationRequest, *, status: int = 200, error: str = "", form: Any = None
) -> HttpResponse:
    organization = request.organization
    subscription = subscription_for(organization)
    spend = month_spend(organization)
    credit = subscription.plan.included_credit
    meters = MeterEvent.objects.filter(organization=organization, hour__gte=month_start()).aggregate(
        reported=Sum("value", filter=Q(sent_at__isnull=False)), pending=Count("id", filter=Q(sent_at=None))
    )
    invoices = [
        {"invoice": invoice, "amount": invoice_amount(invoice.amount_due, invoice.currency)}
        for invoice in Invoice.objects.filter(organization=organization)[:24]
    ]
    form = form or {
        "spend_limit": dollars_field(subscription.spend_limit),
        "alert_threshold": dollars_field(subscription.alert_threshold),
    }
    enabled = billing_enabled()
    # Checkout starts a new subscription; an organization that pays already changes plans in the Portal.
    can_checkout = (
        enabled
        and request.membership.can_manage
        and not (subscription.stripe_subscription_id and subscription.status in actions.ENTITLED_STATUSES)
    )
    plans = [
        {
            "plan": plan,
            "price": usd(plan.monthly_price),
            "credit": usd(plan.included_credit),
            "is_current": plan.pk == subscription.plan_id,
            "can_buy": can_checkout and bool(plan.stripe_price_id) and plan.pk != subscription.plan_id,
        }
        for plan in Plan.objects.all()
    ]
    # Amounts stay micro-dollars here: the template shows them with `usd`, and this month's spend
    # and what was reported to Stripe to the micro-dollar on hover, where they must agree exactly.
    context = {
        "title": "Billing",
        "billing_enabled": enabled,
        "subscription": subscription,
        "plans": plans,
        "spend": spend,
        "credit": credit,
        "credit_used_percent": min(100, spend * 100 // credit) if credit else 100,
        "reported": int(meters["reported"] or 0),
        "pending_hours": meters["pending"],
        "invoices": invoices,
        "form": form,
        "error": error,
        **_openai_key_context(organization),
        "banners": actions.billing_banners(organization),
    }
    return render(request, "dashboard/billing.html", context, status=status)


def _openai_key_context(organization: Any) -> dict[str, Any]:
    """The stored key's hint, or the error that it cannot be read (then every `openai:*` call is
    refused until a manager enters it again)."""
    try:
        return {"key_hint": organization.openai_key_hint, "key_error": ""}
    except UnreadableSecret:
        return {"key_hint": "", "key_error": UNREADABLE_OPENAI_KEY}


def _absolute(name: str) -> str:
    """Stripe sends the customer back here: the address the site is served at, not the one this
    request came in on."""
    return settings.SITE_URL + reverse(name)


def _see_other(url: str) -> HttpResponse:
    response = HttpResponseRedirect(url)
    response.status_code = 303  # after a POST, the browser GETs Stripe's page
    return response


@member_required
def billing_page(request: OrganizationRequest) -> HttpResponse:
    return _render(request)


@member_required
@require_POST
def checkout(request: OrganizationRequest) -> HttpResponse:
    try:
        url = actions.start_checkout(
            request.organization,
            request.user,
            request.POST.get("plan", ""),
            return_url=_absolute("dashboard:billing_return"),
            cancel_url=_absolute("dashboard:billing"),
        )
    except ActionError as exc:
        return _render(request, status=exc.status, error=exc.message)
    return _see_other(url)


@member_required
@require_POST
def portal(request: OrganizationRequest) -> HttpResponse:
    try:
        url = actions.open_portal(
            request.organization, request.user, return_url=_absolute("dashboard:billing")
        )
    except ActionError as exc:
        return _render(request, status=exc.status, error=exc.message)
    return _see_other(url)


@member_required
def checkout_return(request: OrganizationRequest) -> HttpResponse:
    """Where Checkout sends the customer back: applies the new subscription at once, rather than
    waiting for the webhook (which applies the same state again, harmlessly)."""
    session_id = request.GET.get("session_id", "")
    if not session_id:
        return redirect("dashboard:billing")
    organization = request.organization
    try:
        actions.sync_checkout_session(session_id, organization=organization, deadline=stripe_api.Deadline())
    except stripe_api.StripeRejected:
        raise Http404("No such checkout session") from None
    except stripe_api.BillingUnavailable:
        messages.info(
            request,
            "Thank you! Stripe has not confirmed the payment yet; your plan updates in a few minutes.",
        )
    except ActionError as exc:
        if exc.status == 404:
            raise Http404("No such checkout session") from None
        messages.error(request, exc.message)
    except ValueError:
        logger.exception("checkout session %s could not be applied", session_id)
        messages.warning(request, "Thank you! Your payment was received; your plan will be updated shortly.")
    else:
        plan = subscription_for(organization).plan
        messages.success(request, f"Thank you! {organization.name} is on the {plan.name} plan.")
    return redirect("dashboard:billing")


@member_required
@require_POST
def limits(request: OrganizationRequest) -> HttpResponse:
    try:
        actions.set_spend_limits(
            request.organization,
            request.user,
            request.POST.get("spend_limit", ""),
            request.POST.get("alert_threshold", ""),
        )
    except ActionError as exc:
        return _render(request, status=exc.status, error=exc.message, form=request.POST)
    messages.success(request, "Spend limit and alert saved.")
    return redirect("dashboard:billing")


@member_required
@require_POST
def openai_key(request: OrganizationRequest) -> HttpResponse:
    try:
        actions.set_openai_key(request.organization, request.user, request.POST.get("openai_api_key", ""))
    except ActionError as exc:
        return _render(request, status=exc.status, error=exc.message)
    messages.success(request, "OpenAI key saved. OpenAI models now run on your own key.")
    return redirect("dashboard:billing")


@member_required
@require_POST
def openai_key_remove(request: OrganizationRequest) -> HttpResponse:
    try:
        actions.remove_openai_key(request.organization, request.user)
    except ActionError as exc:
        return _render(request, status=exc.status, error=exc.message)
    messages.success(request, "OpenAI key removed. OpenAI models now run on the platform's key.")
    return redirect("dashboard:billing")
