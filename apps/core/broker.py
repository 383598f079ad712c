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
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import current_app
from kombu.exceptions import OperationalError as KombuOperationalError
from redis import Redis
from redis.exceptions import RedisError

from apps.core.redis import broker_client
from apps.core.tasks import DEFAULT, QUEUE_OF

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
    pusher = _pusher(current_app.conf.broker_write_url or current_app.conf.broker_url)
    if pusher is not None:
        return _push(pusher, task_name, args)
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


@lru_cache(maxsize=4)
def _pusher(url: str | None) -> Redis | None:
    """A client for the broker the Celery app sends to (its URL, not Django's setting: a test or a
    deployment may point the app elsewhere), or None where a plain LPUSH is not what kombu does:
    another transport, or a key prefix."""
    options = current_app.conf.broker_transport_options or {}
    if not url or not url.startswith(("redis://", "rediss://")) or options.get("global_keyprefix"):
        return None
    # kombu takes ssl_cert_reqs as ssl's constant names (CERT_REQUIRED); redis-py, only as
    # none/optional/required, and would fail every connection.
    parts = urlsplit(url)
    query = [
        (key, value.removeprefix("CERT_").lower() if key == "ssl_cert_reqs" else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    try:
        return Redis.from_url(
            urlunsplit(parts._replace(query=urlencode(query))),
            socket_timeout=PUBLISH_TIMEOUT_SECONDS,
            socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS,
        )
    except (ValueError, RedisError):
        logger.info("tasks are sent through Celery: redis-py cannot use the broker URL", exc_info=True)
        return None


def task_message(task_name: str, args: list[Any]) -> dict[str, Any]:
    """The message `send_task(task_name, args=args, ignore_result=True)` sends, with no time limits
    (the worker's own settings apply), as kombu's Redis transport stores it: the default exchange,
    routed by the task's queue, priority 0."""
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


def _push(pusher: Redis, task_name: str, args: list[Any]) -> bool:
    message = task_message(task_name, args)
    queue = message["properties"]["delivery_info"]["routing_key"]
    try:
        pusher.lpush(queue, json.dumps(message))
    except (RedisError, OSError):
        logger.warning("could not send %s%s; it will be sent again later", task_name, args, exc_info=True)
        return False
    return True


# kombu's Redis transport keeps a queue's messages in one list per priority step ("serve" for the
# default priority, "serve\x06\x163" and so on for the others).
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEP = "\x06\x16"


def queue_length(queue: str) -> int | None:
    """Messages waiting in a queue (not yet taken by a worker), or None when the broker cannot
    say (down, or not Redis)."""
    from django.conf import settings

    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://", "unix://")):
        return None
    keys = [queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS]
    try:
        # LLENs, not a script: the broker's user needs no scripting rights, as for Celery itself.
        pipe = broker_client(timeout=0.5).pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        return int(sum(pipe.execute()))
    except (RedisError, OSError):
        return None
