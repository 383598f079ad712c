"""Sending a task by name without waiting on a broker that is down.

On a Redis broker, a task is sent as one LPUSH of the message Celery itself would send (its
protocol 2, as kombu's Redis transport stores it): `send_task` took 1.1 ms of Python per message
here, most of it building and routing what is always the same shape, and a SUBSCRIBE to a result
nobody reads; the LPUSH takes 0.05 ms. `tests/test_celery.py` checks the message against Celery's
own and that a worker runs it. Other brokers go through `send_task`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import uuid
from typing import Any

from celery import current_app
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from apps.core.redis import broker_client, script

logger = logging.getLogger(__name__)


# How long a publish may wait on the broker before the caller leaves the job to the reaper.
PUBLISH_TIMEOUT_SECONDS = 2.0
# The embedded part of a protocol 2 body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def send_now(task_name: str, args: list[Any]) -> bool:
    """One connection attempt, not kombu's retries: with the broker down those would hold the web
    request for ~6 s (measured). False when the broker is unreachable; callers rely on the reaper
    to send it again, since the database row is the truth. The app is the one `saas/celery.py`
    configures at start (it makes itself the default in every thread)."""
    if _pushes_directly():
        return _push(task_name, args)
    try:
        with current_app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=0)
            # No time limits in the message: Celery would stamp it with the limits of the task as the
            # sending process registered it, and the worker would obey those over its own settings.
            # ignore_result: else the result backend SUBSCRIBEs to a result nobody reads (PostgreSQL
            # holds the outcome), a round trip and a subscription kept per message.
            current_app.send_task(
                task_name,
                args=args,
                retry=False,
                producer=producer,
                time_limit=None,
                soft_time_limit=None,
                ignore_result=True,
            )
    except (KombuOperationalError, RedisError, OSError):
        logger.warning("could not send %s%s; it will be sent again later", task_name, args, exc_info=True)
        return False
    return True


def _pushes_directly() -> bool:
    from django.conf import settings

    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}
    return settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://", "unix://")) and not options.get(
        "global_keyprefix"
    )


def task_message(task_name: str, args: list[Any]) -> dict[str, Any]:
    """The message `send_task(task_name, args=args, ignore_result=True)` sends, with no time limits
    (the worker's own settings apply), as kombu's Redis transport stores it: the default exchange,
    routed by the task's queue, priority 0."""
    from apps.core.tasks import DEFAULT, QUEUE_OF

    task_id = str(uuid.uuid4())
    body = json.dumps([args, {}, _EMBED]).encode()
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task_name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": f"gen{os.getpid()}@{socket.gethostname()}",
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": None,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE_OF.get(task_name, DEFAULT)},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def _push(task_name: str, args: list[Any]) -> bool:
    message = task_message(task_name, args)
    queue = message["properties"]["delivery_info"]["routing_key"]
    try:
        broker_client(timeout=PUBLISH_TIMEOUT_SECONDS).lpush(queue, json.dumps(message))
    except (RedisError, OSError):
        logger.warning("could not send %s%s; it will be sent again later", task_name, args, exc_info=True)
        return False
    return True


# kombu's Redis transport keeps a queue's messages in one list per priority step ("serve" for the
# default priority, "serve\x06\x163" and so on for the others).
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEP = "\x06\x16"
# One command for every priority step's list: asked before each inference request is admitted.
_SUM_OF_LENGTHS = """
local n = 0
for _, key in ipairs(KEYS) do n = n + redis.call('LLEN', key) end
return n
"""


def queue_length(queue: str) -> int | None:
    """Messages waiting in a queue (not yet taken by a worker), or None when the broker cannot
    say (down, or not Redis)."""
    from django.conf import settings

    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://", "unix://")):
        return None
    keys = [queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS]
    try:
        return int(script(broker_client(timeout=0.5), _SUM_OF_LENGTHS)(keys=keys))
    except (RedisError, OSError):
        return None
