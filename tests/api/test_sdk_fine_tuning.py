"""Contract: the official openai SDK, strict, against a live server and a real worker."""

from __future__ import annotations

import io
from typing import Any

import openai
import pytest

from apps.jobs import actions
from apps.jobs.models import Job
from tests.api.test_fine_tuning import make_file
from tests.conftest import sentiment_csv, wait_for

pytestmark = pytest.mark.integration


def sdk(live_server: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=live_server.url + "/v1", api_key=key, max_retries=0, _strict_response_validation=True
    )


def test_the_sdk_fine_tunes_end_to_end(
    live_server: Any, alice_key: str, carol_key: str, celery_worker: Any, tiny_base: Any
) -> None:
    client = sdk(live_server, alice_key)
    file = client.files.create(file=("train.csv", io.BytesIO(sentiment_csv(60))), purpose="fine-tune")
    file = client.files.wait_for_processing(file.id, poll_interval=0.2, max_wait_seconds=30)
    assert file.status == "processed"

    job = client.fine_tuning.jobs.create(
        model="tiny-bert",
        training_file=file.id,
        suffix="sdk",
        seed=7,
        metadata={"team": "search"},
        extra_body={
            "method": {
                "type": "classification",
                "classification": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}},
            }
        },
    )
    assert job.status in ("queued", "running") and job.seed == 7 and job.metadata == {"team": "search"}

    listed = client.fine_tuning.jobs.list(limit=5, metadata={"team": "search"})
    assert [j.id for j in listed.data] == [job.id]

    done = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        timeout=120,
    )
    assert done.status == "succeeded" and done.fine_tuned_model and done.error is None
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any(e.type == "metrics" for e in events)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoints.data and checkpoints.data[0].fine_tuning_job_id == job.id
    assert client.models.retrieve(done.fine_tuned_model).owned_by.startswith("org-")

    # a second job cancelled while queued or running
    second = client.fine_tuning.jobs.create(model="tiny-bert", training_file=file.id)
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status in ("cancelled", "running")
    wait_for(lambda: client.fine_tuning.jobs.retrieve(second.id).status == "cancelled", timeout=30)

    # carol sees none of it
    outsider = sdk(live_server, carol_key)
    with pytest.raises(openai.NotFoundError) as caught:
        outsider.fine_tuning.jobs.retrieve(job.id)
    assert caught.value.body["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        outsider.models.retrieve(done.fine_tuned_model)
    assert outsider.fine_tuning.jobs.list().data == []


def test_sdk_error_classes(live_server: Any, alice_key: str, tiny_base: Any) -> None:
    client = sdk(live_server, alice_key)
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.create(model="no-such-model", training_file="file-x")
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="tiny-bert", training_file="file-nope")
    assert bad.value.body["param"] == "training_file"


def test_a_pause_cannot_undo_a_requested_cancel(
    live_server: Any, alice_key: str, alice_project: Any, tiny_base: Any
) -> None:
    # given a fine-tune its worker has claimed (the worker sees a stop request at its next step)
    client = sdk(live_server, alice_key)
    job = client.fine_tuning.jobs.create(model="tiny-bert", training_file=make_file(alice_project).public_id)
    assert actions.claim(job.id) is not None

    # when it is cancelled, then paused before its worker stops
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.pause(job.id)

    # then the cancel stands, and the job says it is on its way out
    assert cancelled.status == "running" and cancelled.to_dict()["status_reason"] == "cancel_requested"
    assert refused.value.body == {
        "message": f"Job {job.id} is being cancelled; it cannot be paused.",
        "type": "invalid_request_error",
        "param": "id",
        "code": "invalid_request",
    }
    assert Job.objects.get(public_id=job.id).stop_requested == actions.STOP_CANCEL
    retrieved = client.fine_tuning.jobs.retrieve(job.id)
    assert retrieved.to_dict()["status_reason"] == "cancel_requested"


def test_a_pause_requested_shows_as_pausing_on_the_running_job(
    live_server: Any, alice_key: str, alice_project: Any, tiny_base: Any
) -> None:
    client = sdk(live_server, alice_key)
    job = client.fine_tuning.jobs.create(model="tiny-bert", training_file=make_file(alice_project).public_id)
    assert job.to_dict()["status_reason"] is None
    assert actions.claim(job.id) is not None

    # `pausing` and `paused` are not among the SDK's statuses: the default client reads them...
    lenient = openai.OpenAI(base_url=live_server.url + "/v1", api_key=alice_key, max_retries=0)
    paused = lenient.fine_tuning.jobs.pause(job.id)
    assert paused.status == "pausing" and paused.to_dict()["status_reason"] == "pause_requested"
    # ...and one built with strict response validation rejects them (docs/api.md says so)
    with pytest.raises(openai.APIResponseValidationError):
        client.fine_tuning.jobs.retrieve(job.id)
    # a cancel still wins over a pause that has not happened yet
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "running" and cancelled.to_dict()["status_reason"] == "cancel_requested"
