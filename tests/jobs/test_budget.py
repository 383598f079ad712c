"""max_cost and the organization's spend limit stop a running fine-tune gracefully."""

from __future__ import annotations

from typing import Any

import pytest

from apps.billing.models import UsageRecord
from apps.jobs.models import Job
from tests.conftest import billed, wait_for
from tests.jobs.test_worker_faults import SLOW_JOB

pytestmark = pytest.mark.integration


def run_until_done(api: Any, body_extra: dict[str, Any]) -> Job:
    from tests.conftest import sentiment_csv
    from tests.jobs.test_fine_tune_flow import upload

    file_id = upload(api, sentiment_csv(160))
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    response = api.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "tiny-bert",
            "training_file": file_id,
            "method": {"type": "classification", "classification": {"hyperparameters": SLOW_JOB}},
            **body_extra,
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]
    return wait_for(
        lambda: (j := Job.objects.get(public_id=job_id)).status in ("succeeded", "failed", "cancelled") and j,
        timeout=120,
    )


def test_max_cost_stops_the_job_at_its_budget(api: Any, celery_worker: Any, tiny_base: Any) -> None:
    job = run_until_done(api, {"max_cost": 6000})
    assert job.status == "succeeded", job.error
    assert job.status_reason == "budget_reached"
    assert billed(job) == {"trained_tokens": job.trained_tokens}
    assert 0 < job.billed_cost <= 6000
    assert job.fine_tuned_model is not None  # the model of what ran is kept
    body = api.get(f"/v1/fine_tuning/jobs/{job.public_id}").json()
    assert body["status_reason"] == "budget_reached"


def test_the_spend_limit_stops_a_running_job(
    api: Any, celery_worker: Any, tiny_base: Any, alice_org: Any
) -> None:
    from apps.billing.quotas import subscription_for

    subscription = subscription_for(alice_org)
    subscription.spend_limit = 5000
    subscription.save(update_fields=["spend_limit"])
    job = run_until_done(api, {})
    assert job.status == "succeeded", job.error
    assert job.status_reason == "spend_limit_reached"
    assert billed(job) == {"trained_tokens": job.trained_tokens}
    assert 0 < job.billed_cost <= 5000
    assert sum(UsageRecord.objects.filter(organization=alice_org).values_list("cost", flat=True)) <= 5000
