from __future__ import annotations

import base64
import json
import re
import threading
from typing import Any

import pytest
from celery import current_app

from saas.celery import app
from tests.test_boundaries import run_python


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


def test_a_task_is_pushed_as_the_message_celery_itself_sends(db: None) -> None:
    # given the same task sent by Celery's send_task and by our direct push
    from apps.core import broker
    from apps.core.redis import broker_client
    from tests.conftest import purge_queues

    redis = broker_client(timeout=5)
    purge_queues()
    try:
        with current_app.producer_or_acquire() as producer:
            current_app.send_task(
                "jobs.run_inference",
                args=["clfjob-x", 2],
                producer=producer,
                time_limit=None,
                soft_time_limit=None,
                ignore_result=True,
            )
        assert broker.send_now("jobs.run_inference", ["clfjob-x", 2])
        ours, celery = (json.loads(raw) for raw in redis.lrange("serve", 0, -1))  # LPUSH: newest first
    finally:
        purge_queues()

    # then they differ only in what is unique to each message (ids, the sender, the unused reply queue)
    unique_headers, unique_properties = (
        ("id", "root_id", "origin"),
        ("correlation_id", "reply_to", "delivery_tag"),
    )
    for message in (ours, celery):
        assert (
            message["headers"]["root_id"]
            == message["headers"]["id"]
            == message["properties"]["correlation_id"]
        )
        for key in unique_headers:
            message["headers"].pop(key)
        for key in unique_properties:
            message["properties"].pop(key)
    assert ours == celery
    assert json.loads(base64.b64decode(ours["body"]))[0] == ["clfjob-x", 2]


@pytest.mark.parametrize(
    ("url", "pushed"),
    [
        ("redis://:p%40ss@127.0.0.1:6379/5", True),
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=required", True),
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=CERT_REQUIRED", True),  # kombu's spelling, made redis-py's
        ("redis+socket:///var/run/redis.sock", False),
        ("amqp://guest@127.0.0.1//", False),
    ],
)
def test_a_redis_broker_is_pushed_to_with_what_kombu_reads_in_its_url(url: str, pushed: bool) -> None:
    import ssl

    from apps.core.broker import _pusher

    pusher = _pusher(url)

    assert (pusher is not None) == pushed
    if pusher is not None and url.startswith("rediss"):
        assert pusher.connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"
        assert pusher.connection_pool.make_connection().cert_reqs == ssl.CERT_REQUIRED


@pytest.mark.integration
def test_a_real_worker_runs_a_pushed_task(celery_worker: Any) -> None:
    from apps.core import broker
    from tests.conftest import wait_for

    assert broker.send_now("system.ping", ["pushed"])

    ran = re.compile(r"Task system\.ping\[[0-9a-f-]{36}\] succeeded")
    assert wait_for(lambda: ran.search(celery_worker.log.read_text(errors="replace")), timeout=30)


# Every task `workers/tasks.py` declares, with the queue its decorator names.
TASK_QUEUES = {
    "system.ping": "default",
    "files.validate": "default",
    "jobs.run_fine_tune": "gpu",
    "jobs.reap": "default",
    "evals.start_parity_run": "default",
    "jobs.run_inference": "serve",
    "jobs.run_proxy": "default",
    "jobs.run_batch": "gpu",
    "jobs.run_proxy_batch": "default",
    "jobs.run_eval": "gpu",
    "jobs.run_proxy_eval": "default",
    "billing.process_stripe_event": "default",
    "billing.report_usage": "default",
    "billing.check_spend_alerts": "default",
    "billing.reconcile_events": "default",
    "webhooks.deliver": "default",
    "webhooks.send_due": "default",
}


def test_the_app_finds_every_task_by_autodiscovery() -> None:
    """In a fresh interpreter that imports only the wiring, as `celery -A saas worker` does: the
    tasks are shared tasks, so they are the app's only if autodiscovery imported them."""
    out = run_python(
        """
import json, django
from saas.celery import app
django.setup()
app.loader.import_default_modules()
print(json.dumps({name: task.queue for name, task in app.tasks.items() if not name.startswith("celery.")}))
"""
    )
    assert json.loads(out) == TASK_QUEUES


def test_every_thread_sends_through_the_configured_app() -> None:
    """`celery.current_app` is per thread; a web server's request threads must get our app, not a
    bare default one that would send to a broker nobody configured."""
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(current_app.main or ""))
    thread.start()
    thread.join()
    assert seen == ["modelworks"]
    assert current_app.conf.broker_url == app.conf.broker_url


@pytest.mark.integration
def test_a_real_worker_lists_every_task(celery_worker: Any) -> None:
    registered = app.control.inspect(timeout=10).registered() or {}
    assert len(registered) == 1
    assert set(TASK_QUEUES) <= set(next(iter(registered.values())))


def test_a_message_carries_no_time_limit_of_the_process_that_sent_it(db: None) -> None:
    # given a sending process that has the tasks registered (the reaper runs in a worker; a test or a
    # shell may import them), with limits that need not be the consuming worker's
    import workers.tasks  # noqa: F401
    from apps.core import broker
    from apps.core.redis import broker_client
    from tests.conftest import purge_queues

    assert app.tasks["jobs.run_fine_tune"].time_limit is not None
    purge_queues()
    try:
        # when a job is published by name
        assert broker.send_now("jobs.run_fine_tune", ["ftjob-limits", 1])
        (raw,) = broker_client(timeout=5).lrange("gpu", 0, -1)
        # then the message leaves the limits to the worker's own task (its settings)
        assert json.loads(raw)["headers"]["timelimit"] == [None, None]
    finally:
        purge_queues()
