"""Sending a task by name without waiting on a broker that is down."""

from __future__ import annotations

import logging
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
