"""Sending a task by name without waiting on a broker that is down."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


def send_now(task_name: str, args: list[Any]) -> bool:
    """One connection attempt, not kombu's retries: with the broker down those would hold the web
    request for ~6 s (measured). False when the broker is unreachable; callers rely on the reaper
    to send it again, since the database row is the truth."""
    from saas.celery import app

    try:
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=0)
            app.send_task(task_name, args=args, retry=False, producer=producer)
    except (KombuOperationalError, RedisError, OSError):
        logger.warning("could not send %s%s; it will be sent again later", task_name, args, exc_info=True)
        return False
    return True


# kombu's Redis transport keeps a queue's messages in one list per priority step ("serve" for the
# default priority, "serve\x06\x163" and so on for the others).
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEP = "\x06\x16"


@lru_cache(maxsize=1)
def _broker_redis() -> Any:
    from django.conf import settings
    from redis import Redis

    # Short timeouts: this is asked on the request path, and not knowing is an answer too.
    return Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=0.5, socket_connect_timeout=0.5)


def queue_length(queue: str) -> int | None:
    """Messages waiting in a queue (not yet taken by a worker), or None when the broker cannot
    say (down, or not Redis)."""
    from django.conf import settings

    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://", "unix://")):
        return None
    keys = [queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS]
    try:
        pipe = _broker_redis().pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        return int(sum(pipe.execute()))
    except (RedisError, OSError):
        return None
