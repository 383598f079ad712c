"""How an inference request's answer travels from its worker to the waiting web request
(apps/jobs/relay.py, apps/jobs/serving.py), against real Redis and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from django.utils import timezone

from apps.billing.quotas import subscription_for
from apps.core.redis import client
from apps.jobs import actions, relay, serving
from apps.jobs.admission import Admitted
from apps.jobs.models import Job, JobKind

REQUEST = {"endpoint": "classifications", "texts": ["crash"]}


def request_job(project: Any, model: Any) -> Job:
    return actions.create_job(
        kind=JobKind.CLASSIFICATION, project=project, model=model, model_name=model.name, request=REQUEST
    )


def test_an_answer_nobody_waits_for_is_not_kept(db: None, alice_project: Any, tiny_classifier: Any) -> None:
    job = request_job(alice_project, tiny_classifier)
    relay.request_abort(job.public_id)  # the request timed out, or its client left

    relay.push_answer(job.public_id, {"data": ["x" * 100_000]})

    assert client().lrange(f"mw:job:{job.public_id}:events", 0, -1) == [b'{"type":"done"}']


def test_a_lost_attempts_done_is_not_taken_for_the_answer(
    transactional_db: None, alice_project: Any, tiny_classifier: Any, settings: Any
) -> None:
    settings.INFERENCE_TIMEOUT_SECONDS = 20
    job = request_job(alice_project, tiny_classifier)
    stale = actions.claim(job.public_id, owner="host-a:1", with_files=False)
    assert stale is not None
    admitted = Admitted(
        job=job, request=REQUEST, headers={}, subscription=subscription_for(alice_project.organization)
    )

    def attempts() -> None:
        # the first attempt lost the job (the reaper gave it away) and says done without writing
        Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        owner = actions.claim(job.public_id, owner="host-b:2", with_files=False)
        assert owner is not None
        assert not actions.finish_request(stale, {"data": ["stale"]}, {"classified_texts": 1})
        relay.push(job.public_id, {"type": "done"})
        time.sleep(0.3)
        # then the attempt that owns it answers
        assert actions.finish_request(owner, {"data": []}, {"classified_texts": 1})
        relay.push_answer(job.public_id, {"data": []})

    failures: list[BaseException] = []

    def run() -> None:
        try:
            attempts()
        except BaseException as exc:  # noqa: BLE001  (reported by the test below)
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    body = serving.answer(admitted)
    thread.join()

    assert not failures, failures
    assert body["object"] == "classification" and body["data"] == []
