from __future__ import annotations

from typing import Any

import pytest

from saas.celery import app


def test_celery_policy_is_set() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    vt = conf.broker_transport_options["visibility_timeout"]
    assert vt == conf.result_backend_transport_options["visibility_timeout"]
    from django.conf import settings

    # The visibility timeout outlives the longest hard time limit by an hour, or long jobs run twice.
    assert vt >= settings.GPU_TASK_TIME_LIMIT + 3600
    assert {q.name for q in conf.task_queues} == {"gpu", "serve", "default"}


def test_routes_send_training_and_serving_to_their_own_queues() -> None:
    router = app.amqp.router
    assert router.route({}, "jobs.run_fine_tune")["queue"].name == "gpu"
    assert router.route({}, "jobs.run_batch")["queue"].name == "gpu"
    assert router.route({}, "jobs.run_inference")["queue"].name == "serve"
    assert router.route({}, "jobs.run_proxy")["queue"].name == "default"
    assert router.route({}, "files.validate")["queue"].name == "default"
    assert router.route({}, "system.ping")["queue"].name == "default"


@pytest.mark.integration
def test_a_real_worker_answers_ping(celery_worker: Any) -> None:
    result = app.send_task("system.ping", args=["hello"], ignore_result=False)
    assert result.get(timeout=30)["pong"] == "hello"
