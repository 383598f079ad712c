"""Training is billed as it is done: a checkpoint when it is saved (it is a callable, exportable
model from that moment), and every attempt that ends (paused, cancelled, failed, lost, succeeded)
for what it added. A resume is admitted like a new job."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.billing.models import Plan, UsageRecord
from apps.billing.pricing import cost_of
from apps.billing.quotas import subscription_for
from apps.jobs import actions
from apps.jobs.models import Job, JobKind, JobStatus
from apps.registry.models import Model
from tests.conftest import Worker, billed, use_plan, wait_for
from tests.jobs.test_worker_faults import job_row, start_job


# --- The attack: pause near the end, export the pause checkpoint, cancel ---------------------------
@pytest.mark.integration
def test_a_paused_job_is_billed_for_its_checkpoint_and_cancelling_it_changes_nothing(
    api: Any, celery_worker: Worker, tiny_base: Any
) -> None:
    job_id = start_job(api)
    wait_for(lambda: (job_row(job_id).progress or {}).get("step", 0) >= 5, timeout=60)
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/pause").status_code == 200
    job = wait_for(lambda: (j := job_row(job_id)).status == JobStatus.PAUSED and j, timeout=30)
    # the pause checkpoint is a model that can be exported...
    checkpoint = job.checkpoints.order_by("-step").first()
    assert checkpoint is not None and checkpoint.trained_tokens > 0
    exported = api.get(f"/v1/models/{checkpoint.fine_tuned_model_checkpoint}/content")
    assert exported.status_code == 200
    # ...so the work it holds is billed, exactly that, at the base model's price
    assert billed(job) == {"trained_tokens": checkpoint.trained_tokens}
    assert job.billed_cost == cost_of("tiny-bert", "trained_tokens", checkpoint.trained_tokens) > 0
    # cancelling the paused job bills nothing more, and takes nothing back
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert billed(job_row(job_id)) == {"trained_tokens": checkpoint.trained_tokens}


@pytest.mark.integration
def test_every_checkpoint_model_is_billed_from_the_moment_it_can_be_called(
    api: Any, celery_worker: Worker, tiny_base: Any
) -> None:
    job_id = start_job(api)
    seen = 0
    while (job := job_row(job_id)).status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        time.sleep(0.2)
        # one snapshot of the database: the checkpoint models that exist in it, and what is billed
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            callable_now = list(Model.objects.filter(name__contains=job_id, limits__checkpoint=True))
            held = dict(job.checkpoints.values_list("step", "trained_tokens"))  # pruned later, not in here
            tokens = billed(job).get("trained_tokens", 0)
        for model in callable_now:
            step = int(model.name.rsplit("-", 1)[1])
            assert tokens >= held[step], model.name
            seen += 1
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert seen > 0
    assert billed(job) == {"trained_tokens": job.trained_tokens}


# --- Exactly once per unit of work ------------------------------------------------------------------
def running_job(project: Any, **fields: Any) -> Job:
    return Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=project.organization,
        project=project,
        model_name="tiny-bert",
        status=JobStatus.RUNNING,
        attempt=1,
        **fields,
    )


def test_work_is_billed_once_however_often_its_bill_is_written(alice_project: Any) -> None:
    job = running_job(alice_project)
    checkpoint = {"epoch": 1, "metrics": {}, "artifact_key": "checkpoints/x/step-10", "trained_tokens": 100}
    # a checkpoint bills the work up to it; written again (a retried write), it bills nothing more
    assert actions.add_checkpoint(job.pk, 1, step=10, usage={"trained_tokens": 100}, **checkpoint)
    assert actions.add_checkpoint(job.pk, 1, step=10, usage={"trained_tokens": 100}, **checkpoint)
    # the attempt's end bills what it added since
    assert actions.finish(job.pk, 1, JobStatus.SUCCEEDED, usage={"trained_tokens": 250}) is not None
    # a duplicated finish of the same attempt is fenced off and writes nothing
    assert actions.finish(job.pk, 1, JobStatus.SUCCEEDED, usage={"trained_tokens": 250}) is None
    job.refresh_from_db()
    assert billed(job) == {"trained_tokens": 250}
    assert list(job.usage.order_by("start").values_list("start", "quantity")) == [(0, 100), (100, 150)]
    # the records add up to the cost of the total, not a rounded-up micro-dollar per record
    assert job.billed_cost == cost_of("tiny-bert", "trained_tokens", 250)
    # and the same units cannot even be written twice
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRecord.objects.create(
            organization=alice_project.organization,
            job=job,
            model_name="tiny-bert",
            unit="trained_tokens",
            start=100,
            quantity=150,
            cost=1,
        )


def test_a_count_below_what_is_billed_bills_nothing(alice_project: Any) -> None:
    # (a batch re-run from its first line after a lost attempt counts from zero again)
    job = running_job(alice_project, billed_usage={"input_tokens": 500}, billed_cost=5)
    assert actions.bill_progress(job.pk, 1, {"input_tokens": 300})
    assert actions.bill_progress(job.pk, 1, {"input_tokens": 500})
    assert not job.usage.exists()
    assert actions.bill_progress(job.pk, 1, {"input_tokens": 650})
    assert list(job.usage.values_list("start", "quantity")) == [(500, 150)]
    # another attempt's late bill changes nothing
    assert not actions.bill_progress(job.pk, 2, {"input_tokens": 900})


# --- A resume is admitted like a new job ------------------------------------------------------------
@pytest.fixture
def paused(alice_project: Any, tiny_base: Any) -> Job:
    return Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=alice_project.organization,
        project=alice_project,
        model=tiny_base,
        model_name="tiny-bert",
        status=JobStatus.PAUSED,
        attempt=1,
        estimated_cost=900,
        billed_cost=300,
        request={"method": {"type": "classification"}},
    )


def resume(api: Any, job: Job) -> Any:
    return api.post(f"/v1/fine_tuning/jobs/{job.public_id}/resume")


def test_a_resume_is_refused_when_the_plan_no_longer_includes_the_model(
    api: Any, alice_org: Any, paused: Job
) -> None:
    plan = subscription_for(alice_org).plan
    Plan.objects.filter(pk=plan.pk).update(allowed_models=["*", "!tiny-*"])
    response = resume(api, paused)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert (
        response.json()["error"]["message"]
        == "The Free plan does not include 'tiny-bert'. Upgrade under Billing."
    )
    assert job_row(paused.public_id).status == JobStatus.PAUSED


def test_a_resume_must_find_a_free_place(api: Any, alice_project: Any, paused: Job) -> None:
    running_job(alice_project)  # the Free plan's one fine-tune at a time
    response = resume(api, paused)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert job_row(paused.public_id).status == JobStatus.PAUSED


def test_a_resume_is_refused_once_the_credit_is_used_up(api: Any, alice_org: Any, paused: Job) -> None:
    credit = subscription_for(alice_org).plan.included_credit
    UsageRecord.objects.create(
        organization=alice_org, model_name="tiny-bert", unit="trained_tokens", quantity=1, cost=credit
    )
    response = resume(api, paused)
    assert response.status_code == 429
    assert response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["message"] == (
        "You used this month's $5.00 of included credit on the Free plan. Upgrade under Billing to keep going."
    )
    assert job_row(paused.public_id).status == JobStatus.PAUSED


def test_a_resume_is_refused_after_the_grace_period(api: Any, alice_org: Any, paused: Job) -> None:
    subscription = use_plan(alice_org, "pro")
    subscription.grace_until = timezone.now() - timedelta(days=1)
    subscription.save(update_fields=["grace_until"])
    response = resume(api, paused)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert job_row(paused.public_id).status == JobStatus.PAUSED


def test_a_resumed_job_holds_what_it_still_needs_of_the_cap(api: Any, paused: Job) -> None:
    response = resume(api, paused)
    assert response.status_code == 200, response.content
    job = job_row(paused.public_id)
    assert job.status == JobStatus.QUEUED
    assert job.reserved_cost == 900 - 300  # its estimate, less what is already billed
