"""Admission: what work must pass before it may use compute, in one place for the API, the
dashboard and the workers.

- The plan: entitlement (a failed payment's grace period), the models it includes, how many
  fine-tunes, batches and requests may run at once, rate limits, and load shedding.
- The spend cap, by reservation. Work holds a share of what its organization may still spend this
  month: a request the most it can cost, a fine-tune its estimate, a batch each chunk before it
  runs; a running job asks for more as it goes. Shares are taken under the organization's row lock,
  and spend plus every share held never passes the cap. A share is used up by billing (which
  happens as the work is done) and the rest is released when the job ends or pauses, so the bill
  passes the cap by no more than what one request, one training step or one batch line costs
  beyond its share (docs/api.md, "Spend cap").
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Count, F, IntegerField, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce

from apps.accounts.models import ApiKey, Organization, User
from apps.billing import quotas
from apps.billing.models import Subscription
from apps.billing.quotas import QuotaError
from apps.jobs import inference
from apps.jobs.models import ACTIVE_STATUSES, Job, JobKind, JobStatus
from apps.projects.models import Project
from apps.registry.models import Model

# The SDK retries a 429 unless told not to: a share held by running work comes back when it ends.
RESERVED_RETRY_AFTER_SECONDS = 5


def lock_organization(organization_id: int) -> Organization:
    """Admissions of one organization take turns on its row. FOR NO KEY UPDATE, not FOR UPDATE: the
    inserts that only reference the row (jobs, usage records, in a job's finishing transaction that
    holds the job's lock) take KEY SHARE, which this does not block, so the two never deadlock."""
    return Organization.objects.select_for_update(no_key=True).get(pk=organization_id)


def held(organization_id: int) -> int:
    """What the organization's waiting and running work holds of its cap and has not billed yet.
    Only unfinished jobs count: a finished job's share is released whatever its column says."""
    total = Job.objects.filter(
        organization_id=organization_id, status__in=ACTIVE_STATUSES, reserved_cost__gt=0
    ).aggregate(total=Sum("reserved_cost"))["total"]
    return int(total or 0)


def reserve(subscription: Subscription, wanted: int) -> int:
    """Inside the organization's lock: a share of what it may still spend this month, up to `wanted`
    micro-dollars (0 for an organization without a cap). 429 insufficient_quota when nothing is left:
    without retry when the month's spend reached the cap, with retry-after when work in progress
    holds the rest."""
    cap = quotas.spend_cap(subscription)
    if cap is None:
        return 0
    spent = quotas.month_spend(subscription.organization_id)
    holding = held(subscription.organization_id)
    left = cap - spent - holding
    if left > 0:
        return min(max(wanted, 0), left)
    if spent >= cap:
        raise quotas.cap_reached(subscription, cap)
    raise QuotaError(
        quotas.reserved_message(cap, spent, holding),
        code="insufficient_quota",
        headers={"retry-after": str(RESERVED_RETRY_AFTER_SECONDS)},
    )


# --- Concurrency ------------------------------------------------------------------------------------
def _check_running(subscription: Subscription, kinds: tuple[str, ...], limit: int, what: str) -> None:
    active = Job.objects.filter(
        organization_id=subscription.organization_id, kind__in=kinds, status__in=ACTIVE_STATUSES
    ).count()
    if active >= limit:
        raise _running_limit(subscription, active, what)


def _running_limit(subscription: Subscription, active: int, what: str) -> QuotaError:
    return QuotaError(
        f"You have {active} {what} running or queued, the most the {subscription.plan.name} plan allows at "
        "once. Wait for one to finish, cancel one, or upgrade under Billing.",
        code="concurrency_limit_exceeded",
        headers={"x-should-retry": "false"},
    )


def check_fine_tune_concurrency(subscription: Subscription, devices: int = 1) -> None:
    """Under the organization's lock, so two submissions cannot both take the last place. A paused
    job holds no place; resuming it must find one. A job on several devices takes a place for each:
    two jobs on one GPU each, or one on two, use the same of the plan's capacity."""
    limit = subscription.plan.concurrent_fine_tunes
    active = Job.objects.filter(
        organization_id=subscription.organization_id, kind=JobKind.FINE_TUNE, status__in=ACTIVE_STATUSES
    ).aggregate(
        jobs=Count("pk"),
        places=Coalesce(Sum(Coalesce(Cast(KeyTextTransform("devices", "request"), IntegerField()), 1)), 0),
    )
    if active["places"] + devices <= limit:
        return
    if devices == 1 and active["places"] == active["jobs"]:  # one place a job: the usual words
        raise _running_limit(subscription, active["jobs"], "fine-tuning job(s)")
    raise QuotaError(
        f"This job needs {devices} of the {subscription.plan.name} plan's {limit} places for fine-tunes "
        f"at once, and your running or queued fine-tunes take {active['places']} (a job takes one for each "
        "of its devices). Ask for fewer devices, wait for a job to finish, or upgrade under Billing.",
        code="concurrency_limit_exceeded",
        headers={"x-should-retry": "false"},
    )


def check_batch_concurrency(subscription: Subscription, what: str = "batch(es)") -> None:
    """Eval runs take the plan's places for batches: both run a file of work on the same workers."""
    _check_running(
        subscription, (JobKind.BATCH, JobKind.EVAL_RUN), subscription.plan.concurrent_batches, what
    )


# --- Inference requests -----------------------------------------------------------------------------
@dataclass
class Admitted:
    """An admitted inference request: its job, the rate-limit headers for the response, and the
    in-flight slot it holds until `release()` (the caller's `finally`, once it stops waiting)."""

    job: Job
    request: dict[str, Any]
    headers: dict[str, str]
    subscription: Subscription
    slot: str | None = field(default=None, repr=False)

    def release(self) -> None:
        if self.slot is not None:
            quotas.release_request_slot(self.subscription, self.slot)
            self.slot = None


Parser = Callable[[Project, Any], tuple[Model, dict[str, Any]]]


def admit_inference(
    project: Project, parse: Parser, body: Any, *, api_key: ApiKey | None = None, user: User | None = None
) -> Admitted:
    """Every check of a chat, completion, classification or embedding request, in order, then its job.
    A refused request costs the customer nothing: the in-flight slot and the reservation are given
    back, and the rate limits count only what is admitted."""
    subscription = quotas.check_quota(project.organization)
    model, parsed = parse(project, body)
    quotas.check_model(subscription, model.name)
    inference.check_backlog(model)  # before the limits: a shed request counts against none of them
    slot = quotas.take_request_slot(subscription)
    capped = quotas.spend_cap(subscription) is not None
    try:
        # Only a reservation needs a transaction (the lock, the sum, the job that holds it); without
        # a cap, the job is one INSERT in autocommit, not BEGIN, SAVEPOINT and COMMIT round trips too.
        with transaction.atomic() if capped else nullcontext():
            reserved = 0
            if capped:
                lock_organization(project.organization_id)
                reserved = reserve(subscription, inference.largest_cost(model, parsed))
            headers = quotas.check_rate(subscription, api_key, inference.estimate_tokens(parsed))
            job = inference.submit(project, model, parsed, api_key=api_key, user=user, reserved_cost=reserved)
    except BaseException:
        quotas.release_request_slot(subscription, slot)
        raise
    return Admitted(job=job, request=parsed, headers=headers, subscription=subscription, slot=slot)


# --- Running jobs -----------------------------------------------------------------------------------
def top_up(job_pk: int, attempt: int, wanted: int) -> int | None:
    """A running job asks for `wanted` more of its organization's cap. Returns what it got (maybe
    less, 0 when nothing is left), or None when this attempt no longer owns the job.

    Without a cap it gets all of it, and holds it all the same: a cap set while the job runs (a
    spend limit, a move to the Free plan) counts that share as taken, and the job asks again, and
    is refused, once it has used it."""
    with transaction.atomic():
        row = Job.objects.filter(pk=job_pk, attempt=attempt, status=JobStatus.RUNNING).values(
            "organization_id"
        )
        found = row.first()
        if found is None:
            return None
        organization = lock_organization(found["organization_id"])
        subscription = quotas.subscription_for(organization)
        try:
            granted = reserve(subscription, wanted) if quotas.spend_cap(subscription) is not None else wanted
        except QuotaError:
            return 0
        if granted and not Job.objects.filter(pk=job_pk, attempt=attempt, status=JobStatus.RUNNING).update(
            reserved_cost=F("reserved_cost") + granted
        ):
            return None
    return granted


class SpendShare:
    """A running job's share of its organization's spend cap, in the job's own terms: the total
    cost (billed and to come, over all its attempts) it may reach without asking again."""

    def __init__(self, job: Job) -> None:
        self.job_pk, self.attempt = job.pk, job.attempt
        self.limit = job.billed_cost + job.reserved_cost
        self.fenced = False  # this attempt no longer owns the job

    def allows(self, cost: int, ahead: int = 0) -> bool:
        """Whether the job may reach a total cost of `cost`. When its share is too small it asks for
        what is missing plus `ahead` (what it expects to need after that, so that it asks rarely).
        It asks whether or not its organization has a cap now: the cap may change while it runs."""
        if cost <= self.limit:
            return True
        granted = top_up(self.job_pk, self.attempt, cost - self.limit + max(ahead, 0))
        if granted is None:
            self.fenced = True
            return False
        self.limit += granted
        return cost <= self.limit
