"""Sending a task by name without waiting on a broker that is down."""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from apps.core.redis import broker_client

logger = logging.getLogger(__name__)


def send_now(task_name: str, args: list[Any]) -> bool:
    """One connection attempt, not kombu's retries: with the broker down those would hold the web
    request for ~6 s (measured). False when the broker is unreachable; callers rely on the reaper
    to send it again, since the database row is the truth. The app is the one `saas/celery.py`
    configures at start (it makes itself the default in every thread)."""
    try:
        with current_app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=0)
            # No time limits in the message: Celery would stamp it with the limits of the task as the
            # sending process registered it, and the worker would obey those over its own settings.
            current_app.send_task(
                task_name, args=args, retry=False, producer=producer, time_limit=None, soft_time_limit=None
            )
    except (KombuOperationalError, RedisError, OSError):
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
        pipe = broker_client(timeout=0.5).pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        return int(sum(pipe.execute()))
    except (RedisError, OSError):
        return None
