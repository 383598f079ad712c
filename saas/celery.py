"""The Celery app: queues, routing and the worker's liveness heartbeat.

Queues: `gpu` (training and local inference, one task at a time per GPU) and `default`
(validation, OpenAI proxy calls, billing, the reaper). Tasks are routed by name so the web
process can send them without importing worker code.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Celery, bootsteps
from kombu import Queue

from apps.core import tasks
from apps.core.health import record_worker_heartbeat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas.settings")

app = Celery("modelworks")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The app of every thread, not only the one that imported this module: tasks are `shared_task`s and
# `apps.core.broker` sends through `celery.current_app`, so neither imports this wiring.
app.set_default()
# gpu: training and batch jobs (a fresh worker child per task, so GPU memory is always released);
# serve: local inference, on workers that keep their models loaded between requests, so a
# fine-tune running for hours never makes a chat or a classification wait; default: the rest.
app.conf.task_queues = tuple(Queue(name) for name in tasks.QUEUES)
app.conf.task_default_queue = tasks.DEFAULT
# Sent by name from processes that do not register the tasks: the route says where each goes.
app.conf.task_routes = {name: {"queue": queue} for name, queue in tasks.QUEUE_OF.items()}
# Celery's Django fixup closes every database connection before and after each task unless this
# is set (it then closes them every this many tasks): a new PostgreSQL connection per task was a
# quarter of a serve worker's time around a small model. Connections are kept the way Django keeps
# a web request's instead, CONN_MAX_AGE and health checks (workers/tasks.py, around each task).
app.conf.CELERY_DB_REUSE_MAX = 1_000_000
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Writes the worker's heartbeat to Redis every few seconds (`apps.core.health`).

    `/healthz` reads these keys: a worker is alive if one was written recently.
    """

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        from django.conf import settings

        self.interval = settings.WORKER_HEARTBEAT_SECONDS
        self.ttl = int(settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS)
        self.worker_name: str = getattr(worker, "hostname", None) or socket.gethostname()
        self.queues = sorted(q.name for q in worker.app.amqp.queues.consume_from.values())
        self.beat()
        self.tref = worker.timer.call_repeatedly(self.interval, self.beat, priority=10)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()

    def beat(self) -> None:
        record_worker_heartbeat(self.worker_name, self.queues, self.ttl)


app.steps["worker"].add(WorkerHeartbeat)
