"""A fine-tune on two devices (`devices: 2`), end to end with a real worker: its ranks are CPU
processes talking over gloo, as on a multi-GPU worker they would be GPUs talking over NCCL
(docs/architecture.md, "Training on several devices")."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from apps.jobs.models import Job, JobStatus
from tests.conftest import Worker, billed, running_worker, sentiment_csv, use_plan, wait_for
from tests.jobs.test_fine_tune_flow import upload

pytestmark = pytest.mark.integration


def submit(api: Any, file_id: str, devices: int, epochs: int = 3, **extra: Any) -> str:
    response = api.post(
        "/v1/fine_tuning/jobs",
        {
            **extra,
            "model": "tiny-bert",
            "training_file": file_id,
            "seed": 7,
            "devices": devices,
            "method": {
                "type": "classification",
                "classification": {"hyperparameters": {"n_epochs": epochs, "batch_size": 8}},
            },
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    return str(response.json()["id"])


def ready(api: Any, organization: Any, settings: Any, rows: int) -> str:
    """Two devices allowed, a plan with a place for each (Pro), and a processed training file."""
    settings.TRAINING_MAX_DEVICES = 2
    use_plan(organization, "pro")
    file_id = upload(api, sentiment_csv(rows))
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    return file_id


def finished(api: Any, job_id: str) -> Any:
    body = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    return body["status"] in ("succeeded", "failed", "cancelled") and body


def metric_steps(api: Any, job_id: str) -> list[int]:
    events = api.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=200").json()["data"]
    return sorted(e["data"]["step"] for e in events if e["type"] == "metrics")


def ranks_running(job_id: str) -> int:
    """The job's torchrun and ranks still alive (their command names the job's work directory)."""
    found = subprocess.run(
        ["pgrep", "-f", f"workers.runtime.ranks .*{job_id}"], capture_output=True, text=True
    )
    return len(found.stdout.split())


def test_a_two_device_fine_tune_trains_bills_and_checkpoints_as_one_device_does(
    api: Any, celery_worker: Any, tiny_base: Any, alice_org: Any, settings: Any
) -> None:
    file_id = ready(api, alice_org, settings, rows=80)

    job_one, job_two = submit(api, file_id, 1), submit(api, file_id, 2)
    one = wait_for(lambda: finished(api, job_one), timeout=120)
    two = wait_for(lambda: finished(api, job_two), timeout=180)

    assert one["status"] == two["status"] == "succeeded", two
    assert two["devices"] == 2
    # the same global batches: the same steps and the same tokens, billed once
    assert two["trained_tokens"] == one["trained_tokens"] > 0
    assert billed(Job.objects.get(public_id=job_two)) == {"trained_tokens": two["trained_tokens"]}
    events = api.get(f"/v1/fine_tuning/jobs/{job_two}/events?limit=200").json()["data"]
    [banner] = [e["message"] for e in events if e["message"].startswith("Running training:")]
    assert "72 examples" in banner and "2 devices (cpu, data-parallel)" in banner
    # the same events, step by step, as the one-device run
    assert metric_steps(api, job_two) == metric_steps(api, job_one)
    assert set(metric_steps(api, job_two)) == set(range(1, 3 * 9 + 1))  # 72 training rows at batch 8
    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job_two}/checkpoints").json()["data"]
    assert checkpoints and all(c["step_number"] > 0 for c in checkpoints)
    # the model answers
    answer = api.post(
        "/v1/classifications", {"model": two["fine_tuned_model"], "input": "a great movie"}, format="json"
    )
    assert answer.status_code == 200, answer.content
    assert ranks_running(job_two) == 0


def test_max_cost_stops_two_devices_at_the_step_it_stops_one(
    api: Any, celery_worker: Any, tiny_base: Any, alice_org: Any, settings: Any
) -> None:
    from apps.billing.pricing import cost_of

    file_id = ready(api, alice_org, settings, rows=80)
    max_cost = cost_of("tiny-bert", "trained_tokens", 800)

    job_one = submit(api, file_id, 1, epochs=20, max_cost=max_cost)
    job_two = submit(api, file_id, 2, epochs=20, max_cost=max_cost)
    one = wait_for(lambda: finished(api, job_one), timeout=120)
    two = wait_for(lambda: finished(api, job_two), timeout=180)

    # the budget is checked before every step on two devices too: no step runs past it
    assert one["status_reason"] == two["status_reason"] == "budget_reached"
    first, second = Job.objects.get(public_id=job_one), Job.objects.get(public_id=job_two)
    assert second.trained_tokens == first.trained_tokens > 0
    assert second.billed_cost == first.billed_cost <= max_cost
    assert metric_steps(api, job_two) == metric_steps(api, job_one)


def test_a_cancelled_two_device_fine_tune_stops_every_rank(
    api: Any, celery_worker: Any, tiny_base: Any, alice_org: Any, settings: Any
) -> None:
    file_id = ready(api, alice_org, settings, rows=200)
    job_id = submit(api, file_id, 2, epochs=50)
    wait_for(lambda: (Job.objects.get(public_id=job_id).progress or {}).get("step", 0) >= 2, timeout=120)
    assert ranks_running(job_id) == 3  # torchrun and its two ranks
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200

    done = wait_for(lambda: finished(api, job_id), timeout=60)
    assert done["status"] == "cancelled"
    job = Job.objects.get(public_id=job_id)
    assert job.status == JobStatus.CANCELLED and job.trained_tokens > 0
    assert wait_for(lambda: ranks_running(job_id) == 0, timeout=30)


@pytest.fixture
def fsdp_worker(transactional_db: None) -> Iterator[Worker]:
    """A worker whose fine-tunes on several devices shard the model (TRAINING_SHARDING=fsdp), as a
    host sets it for models whose training state does not fit one of its GPUs."""
    with running_worker({"TRAINING_SHARDING": "fsdp"}) as worker:
        yield worker


def test_a_fine_tune_sharded_with_fsdp_trains_bills_and_serves_as_one_device_does(
    api: Any, fsdp_worker: Any, tiny_base: Any, alice_org: Any, settings: Any
) -> None:
    file_id = ready(api, alice_org, settings, rows=40)

    job_one, job_two = submit(api, file_id, 1, epochs=2), submit(api, file_id, 2, epochs=2)
    one = wait_for(lambda: finished(api, job_one), timeout=120)
    two = wait_for(lambda: finished(api, job_two), timeout=180)

    assert one["status"] == two["status"] == "succeeded", two
    events = api.get(f"/v1/fine_tuning/jobs/{job_two}/events?limit=200").json()["data"]
    [banner] = [e["message"] for e in events if e["message"].startswith("Running training:")]
    assert "2 devices (cpu, data-parallel, FSDP-sharded)" in banner
    assert two["trained_tokens"] == one["trained_tokens"] > 0
    assert billed(Job.objects.get(public_id=job_two)) == {"trained_tokens": two["trained_tokens"]}
    assert metric_steps(api, job_two) == metric_steps(api, job_one)
    # the saved model is whole: it is served like any other
    answer = api.post(
        "/v1/classifications", {"model": two["fine_tuned_model"], "input": "a great movie"}, format="json"
    )
    assert answer.status_code == 200, answer.content
    assert ranks_running(job_two) == 0
