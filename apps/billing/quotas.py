"""Limits enforced before any work is queued: plan models, rate limits, credit and spend limits,
concurrent fine-tunes. Each refusal says what to do about it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Sum
from django.utils import timezone

from apps.accounts.models import Organization
from apps.billing import ratelimit
from apps.billing.models import Plan, Subscription, UsageRecord
from apps.core.errors import ActionError

FREE = "free"


class QuotaError(ActionError):
    def __init__(self, message: str, *, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, status=429)
        self.headers = headers or {}


def subscription_for(organization: Organization) -> Subscription:
    """The organization's subscription; an organization without one is on the Free plan."""
    subscription = Subscription.objects.select_related("plan").filter(organization=organization).first()
    if subscription is None:
        plan = Plan.objects.filter(slug=FREE).first() or Plan.objects.order_by("position").first()
        if plan is None:  # a database without the seeded plans (a flushed test database)
            from django.conf import settings

            from apps.billing.models import Price
            from apps.billing.seed import seed_billing

            seed_billing(Plan, Price)
            plan = Plan.objects.get(slug=settings.PLANS[0]["slug"])
        subscription, _ = Subscription.objects.get_or_create(
            organization=organization, defaults={"plan": plan}
        )
    return subscription


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_spend(organization: Organization) -> int:
    total = UsageRecord.objects.filter(organization=organization, created_at__gte=month_start()).aggregate(
        total=Sum("cost")
    )["total"]
    return int(total or 0)


def usd(micro: int) -> str:
    return f"${micro / 1_000_000:,.2f}"


def spend_cap(subscription: Subscription) -> int | None:
    """The most this organization may spend this month, in micro-dollars (None: no cap)."""
    caps = []
    if not subscription.plan.usage_beyond_credit:
        caps.append(subscription.plan.included_credit)
    if subscription.spend_limit is not None:
        caps.append(subscription.spend_limit)
    return min(caps) if caps else None


def check_quota(organization: Organization) -> Subscription:
    """429 insufficient_quota (never retried by the SDK) when there is no credit left, the spend
    limit is reached, or a failed payment's grace period is over."""
    subscription = subscription_for(organization)
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
        raise QuotaError(message, code="insufficient_quota", headers=no_retry)
    return subscription


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
    checks = [(f"org:{org}:requests", plan.requests_per_minute, 1),
              (f"org:{org}:tokens", plan.tokens_per_minute, max(tokens, 1))]  # fmt: skip
    if api_key:
        checks.append((f"key:{api_key.pk}:requests", plan.key_requests_per_minute, 1))
    org_limit, token_limit, *rest = ratelimit.take_many(checks)  # one round trip for all three
    key_limit = rest[0] if rest else None
    requests = min((d for d in (key_limit, org_limit) if d is not None), key=lambda d: d.remaining)
    headers = ratelimit.headers(requests, token_limit)
    for decision, what in ((key_limit, "requests for this API key"), (org_limit, "requests for your organization"),
                           (token_limit, "tokens for your organization")):  # fmt: skip
        if decision is not None and not decision.allowed:
            wait = max(1, int(decision.reset_seconds + 0.999))
            raise QuotaError(
                f"Rate limit reached for {what}: {decision.limit} per minute on the {plan.name} plan. "
                f"Retry after {wait} s, slow down, or upgrade under Billing.",
                code="rate_limit_exceeded",
                headers={**headers, "retry-after": str(wait)},
            )
    return headers


def check_fine_tune_concurrency(subscription: Subscription) -> None:
    from apps.jobs.models import ACTIVE_STATUSES, Job, JobKind

    active = Job.objects.filter(
        organization_id=subscription.organization_id, kind=JobKind.FINE_TUNE, status__in=ACTIVE_STATUSES
    ).count()
    if active >= subscription.plan.concurrent_fine_tunes:
        raise QuotaError(
            f"You have {active} fine-tuning job(s) running or queued, the most the {subscription.plan.name} "
            "plan allows at once. Wait for one to finish, cancel one, or upgrade under Billing.",
            code="concurrency_limit_exceeded",
            headers={"x-should-retry": "false"},
        )
