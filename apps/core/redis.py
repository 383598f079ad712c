"""The Redis clients the web and worker processes share, each built once per process and address.

`client()` holds our own state on REDIS_URL (relayed results, rate limits); `broker_client()` asks the
Celery broker questions whose answer may be "unknown" (queue lengths, worker heartbeats).
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from redis import Redis
from redis.commands.core import Script


def client() -> Redis:
    """No read timeout: a relay blocks on BLPOP for as long as its request may wait."""
    return _relay_client(settings.REDIS_URL)


def broker_client(timeout: float) -> Redis:
    """Short timeouts: these questions are asked on the request path and by health checks, where
    not knowing is an answer too."""
    return _broker_client(settings.CELERY_BROKER_URL, timeout)


# Keyed by address, so a process (or a test) that points a setting elsewhere gets a client for it.
@lru_cache(maxsize=4)
def _relay_client(url: str) -> Redis:
    return Redis.from_url(url, socket_timeout=None, socket_connect_timeout=5, health_check_interval=30)


@lru_cache(maxsize=8)
def _broker_client(url: str, timeout: float) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


@lru_cache(maxsize=32)
def script(redis: Redis, source: str) -> Script:
    """`source` registered on `redis`: called by its SHA (EVALSHA), the body sent only when Redis
    does not know it yet (a restart, a flush), instead of sent and compiled on every call."""
    return redis.register_script(source)
