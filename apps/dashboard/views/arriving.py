"""Arriving: the public page at `/` (what Modelworks is, what it costs, how to start) and the
verify-email page's "send it again". A signed-in visitor's `/` is the dashboard, as before."""

from __future__ import annotations

from typing import Any

from allauth.account.internal.flows.email_verification import send_verification_email_at_login
from allauth.account.utils import has_verified_email
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.verification import pending_verification
from apps.billing.models import Plan, Price
from apps.core.money import usd
from apps.dashboard.snippets import api_base_url
from apps.registry.models import Model, Provider, Task

NO_SIGNUP_WAITING = (
    "This browser has no sign-up waiting for its email. Log in with your email address and password: "
    "if the address is not confirmed yet, a new link is sent."
)
ALREADY_CONFIRMED = "{email} is confirmed already. Log in to continue."
RESEND_TOO_SOON = (
    "An email was sent to {email} less than {minutes} minutes ago, and its link still works. Check your spam "
    "folder; you can ask for another {minutes} minutes after the last one."
)
# allauth's default: one verification email per address per three minutes (`confirm_email`).
CONFIRMATION_COOLDOWN_SECONDS = 180
UNIT_NAMES = {
    "trained_tokens": "trained tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "classified_texts": "classified texts",
}


def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return render(request, "dashboard/landing.html", _landing_context())
    if getattr(request, "organization", None) is None:
        return redirect("dashboard:organization_new")
    return redirect("dashboard:projects")


def _landing_context() -> dict[str, Any]:
    catalog = list(Model.objects.catalog().order_by("name"))
    openai_models = [model.name for model in catalog if model.provider == Provider.OPENAI]
    servable = [
        m
        for m in catalog
        if m.task == Task.GENERATION and m.provider == Provider.LOCAL and m.limit("servable", True)
    ]
    return {
        "example_model": servable[0].name if servable else "your-model-id",
        "plans": [_plan_row(plan, openai_models) for plan in Plan.objects.all()],
        "prices": _price_rows(catalog),
        "catalog": catalog,
        "api_base_url": api_base_url(),
    }


def _plan_row(plan: Plan, openai_models: list[str]) -> dict[str, Any]:
    return {
        "plan": plan,
        "price": usd(plan.monthly_price),
        "credit": usd(plan.included_credit),
        # None when the catalog has no proxied OpenAI model to include or leave out.
        "includes_openai": any(plan.allows(name) for name in openai_models) if openai_models else None,
    }


def _price_rows(catalog: list[Model]) -> list[dict[str, str]]:
    """The catalog models' prices per million units, in the catalog's order."""
    names = [model.name for model in catalog]
    units = list(UNIT_NAMES)
    prices = sorted(
        Price.objects.filter(model_name__in=names),
        key=lambda p: (names.index(p.model_name), units.index(p.unit) if p.unit in units else len(units)),
    )
    return [
        {
            "model": p.model_name,
            "unit": UNIT_NAMES.get(p.unit, p.unit),
            "price": usd(p.micro_dollars_per_million),
        }
        for p in prices
    ]


@require_POST
def resend_verification(request: HttpRequest) -> HttpResponse:
    """Sends the verification email again to the address this browser signed up (or logged in)
    with, through allauth's own sending, with allauth's own limit per address. The answer is the
    same whether or not an account has that address, as allauth's sign-up page's is."""
    pending = pending_verification(request)
    if pending is None:
        messages.error(request, NO_SIGNUP_WAITING)
        return redirect("account_login")
    login, email = pending.login, pending.email
    if login.user is not None and has_verified_email(login.user, email):
        messages.success(request, ALREADY_CONFIRMED.format(email=email))
        return redirect("account_login")
    # allauth's own sending: to a new account a new link, to an address with an account already the
    # email that says so, each counted against allauth's `confirm_email` limit for the address.
    if not send_verification_email_at_login(request, login):
        seconds = getattr(settings, "ACCOUNT_EMAIL_CONFIRMATION_COOLDOWN", CONFIRMATION_COOLDOWN_SECONDS)
        minutes = max(1, seconds // 60)
        messages.warning(request, RESEND_TOO_SOON.format(email=email, minutes=minutes))
    return redirect("account_email_verification_sent")
