"""Limits enforced before any work is queued: plan models, rate limits, credit and spend limits,
concurrent fine-tunes. Each refusal says what to do about it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet, Sum
from django.utils import timezone

from apps.accounts.actions import owned_or_created
from apps.accounts.models import Organization, User
from apps.billing import ratelimit
from apps.billing.models import MonthSpend, Subscription
from apps.core.errors import ActionError
from apps.core.hotcache import HotCache
from apps.core.money import usd

FREE = "free"


class QuotaError(ActionError):
    def __init__(self, message: str, *, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, status=429)
        self.headers = headers or {}


class SubscriptionMissing(LookupError):
    """An organization without its subscription row: a broken invariant, never a customer's doing."""


def subscription_for(organization: Organization) -> Subscription:
    """The organization's subscription, with its plan. Only reads: every organization gets its
    subscription when it is created (`apps.projects.onboarding`), and a data migration gave one to
    every organization made before that. A missing row is an error, not a Free plan made up here: a
    made-up one would answer limits that no row backs, and every write to it would fail or create a
    row behind the action that owns it."""
    subscription = Subscription.objects.select_related("plan").filter(organization=organization).first()
    if subscription is None:
        raise SubscriptionMissing(
            f"Organization {organization.public_id} has no subscription; every organization gets one "
            "when it is created."
        )
    return subscription


FREE_ORGANIZATIONS_REFUSAL = (
    "Each person may have {limit} organization{s} on the Free plan, and you have {count} ({names}). "
    "To create another, upgrade one of yours to a paid plan under Billing, or ask an owner or admin of an "
    "existing organization to invite you."
)


def free_organizations(user: User) -> QuerySet[Organization]:
    """The organizations on the Free plan that count against `user`'s allowance: those they own
    and those they created (handing an organization over does not give its free credit back)."""
    return owned_or_created(user).filter(subscription__plan__slug=FREE)


def free_organization_refusal(user: User) -> str | None:
    """Why `user` may not create another organization (it would start on the Free plan), or None.
    Each person may have `FREE_ORGANIZATIONS_PER_USER` free organizations: the Free plan's monthly
    credit is per person, not per organization."""
    limit = settings.FREE_ORGANIZATIONS_PER_USER
    names = list(free_organizations(user).order_by("created_at", "id").values_list("name", flat=True))
    if len(names) < limit:
        return None
    return FREE_ORGANIZATIONS_REFUSAL.format(
        limit=limit, s="" if limit == 1 else "s", count=len(names), names=", ".join(names)
    )


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_spend(organization: Organization | int) -> int:
    """What the organization (or organization id) was billed this month, in micro-dollars: the few
    rows a trigger keeps equal to the sum of the month's usage records (`MonthSpend`)."""
    organization_id = organization if isinstance(organization, int) else organization.pk
    spent = MonthSpend.objects.filter(organization_id=organization_id, month=month_start().date()).aggregate(
        total=Sum("spent")
    )["total"]
    return int(spent or 0)


def spend_cap(subscription: Subscription) -> int | None:
    """The most this organization may spend this month, in micro-dollars (None: no cap)."""
    caps = []
    if not subscription.plan.usage_beyond_credit:
        caps.append(subscription.plan.included_credit)
    if subscription.spend_limit is not None:
        caps.append(subscription.spend_limit)
    return min(caps) if caps else None


# The request path's copies (apps.core.hotcache): every request reads its subscription and plan.
_SUBSCRIPTIONS: HotCache[Subscription] = HotCache("subscriptions")


def check_quota(organization: Organization) -> Subscription:
    """429 insufficient_quota (never retried by the SDK) when there is no credit left, the spend
    limit is reached, or a failed payment's grace period is over."""
    subscription = _SUBSCRIPTIONS.get(organization.pk, lambda: subscription_for(organization))
    assert subscription is not None  # subscription_for raises rather than answer None
    no_retry = {"x-should-retry": "false"}
    if subscription.grace_until is not None and timezone.now() > subscription.grace_until:
        raise QuotaError(
            "Your last payment failed and the grace period is over, so new paid work is paused. "
            "Update your payment method under Billing → Manage billing; your data stays available.",
            code="insufficient_quota",
            headers=no_retry,
        )
    cap = spend_cap(subscription)
    if cap is not None and month_spend(organization) >= cap:
        raise cap_reached(subscription, cap)
    return subscription


def cap_reached(subscription: Subscription, cap: int) -> QuotaError:
    """The refusal once this month's spend reached the cap (never retried: it lasts the month)."""
    if subscription.spend_limit is not None and cap == subscription.spend_limit:
        message = (
            f"You reached your monthly spend limit of {usd(cap)}. Raise it under Billing, "
            "or wait until next month."
        )
    else:
        message = (
            f"You used this month's {usd(cap)} of included credit on the {subscription.plan.name} plan. "
            "Upgrade under Billing to keep going."
        )
    return QuotaError(message, code="insufficient_quota", headers={"x-should-retry": "false"})


def check_model(subscription: Subscription, model_name: str, param: str = "model") -> None:
    if not subscription.plan.allows(model_name):
        raise ActionError(
            f"The {subscription.plan.name} plan does not include '{model_name}'. Upgrade under Billing.",
            code="model_not_allowed",
            param=param,
            status=403,
        )


def check_rate(subscription: Subscription, api_key: Any, tokens: int) -> dict[str, str]:
    """Counts one request and `tokens` against the organization's and the key's limits.
    Returns the rate-limit headers; raises 429 rate_limit_exceeded with retry-after."""
    plan = subscription.plan
    org = subscription.organization_id
    checks = [
        (f"org:{org}:requests", plan.requests_per_minute, 1),
        (f"org:{org}:tokens", plan.tokens_per_minute, max(tokens, 1)),
    ]
    if api_key:
        checks.append((f"key:{api_key.pk}:requests", plan.key_requests_per_minute, 1))
    org_limit, token_limit, *rest = ratelimit.take_many(checks)  # one round trip for all three
    key_limit = rest[0] if rest else None
    requests = min((d for d in (key_limit, org_limit) if d is not None), key=lambda d: d.remaining)
    headers = ratelimit.headers(requests, token_limit)
    for decision, what in (
        (key_limit, "requests for this API key"),
        (org_limit, "requests for your organization"),
        (token_limit, "tokens for your organization"),
    ):
        if decision is not None and not decision.allowed:
            wait = max(1, int(decision.reset_seconds + 0.999))
            raise QuotaError(
                f"Rate limit reached for {what}: {decision.limit} per minute on the {plan.name} plan. "
                f"Retry after {wait} s, slow down, or upgrade under Billing.",
                code="rate_limit_exceeded",
                headers={**headers, "retry-after": str(wait)},
            )
    return headers


def take_request_slot(subscription: Subscription) -> str:
    """Holds one of the organization's in-flight request slots (the plan's `concurrent_requests`)
    until `release_request_slot`. Each waiting request holds a web worker for up to the inference
    timeout: without this, one tenant could hold them all. 429 rate_limit_exceeded with retry-after
    when all are held; the SDK retries it."""
    plan = subscription.plan
    # A slot of a process that died mid-request is freed once no request could still be waiting.
    lifetime = settings.INFERENCE_TIMEOUT_SECONDS + 30
    token = ratelimit.take_slot(f"org:{subscription.organization_id}", plan.concurrent_requests, lifetime)
    if token is None:
        raise QuotaError(
            f"Your organization has {plan.concurrent_requests} requests in progress, the most the {plan.name} "
            "plan allows at once. Retry after 1 s, send fewer requests in parallel, or upgrade under Billing.",
            code="rate_limit_exceeded",
            headers={"retry-after": "1"},
        )
    return token


def release_request_slot(subscription: Subscription, token: str) -> None:
    ratelimit.release_slot(f"org:{subscription.organization_id}", token)


def reserved_message(cap: int, spent: int, reserved: int) -> str:
    """Why new work is refused when what the organization spent plus what work in progress holds
    reaches its cap (the work ends, and releases what it did not use)."""
    return (
        f"This month's allowance of {usd(cap)} is taken: {usd(spent)} spent and {usd(reserved)} held by "
        "fine-tunes, batches and requests in progress. Retry when they finish, raise your spend limit under "
        "Billing, or upgrade."
    )
