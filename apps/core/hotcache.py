"""Per-process copies of the rows every API request reads (its key, its organization's
subscription and plan, the model it names), so that the request path does not ask PostgreSQL for
them each time (docs/architecture.md, "The request path").

Copies are kept for at most HOT_CACHE_SECONDS, and explicitly invalidated: every change to a row
they copy (see `apps.api.apps` for the list) replaces a generation token in Redis, at once and
again after its transaction commits. Each /v1/ request reads the token once, at its start
(`apps.api.middleware.HotCacheMiddleware`), and a copy made under another token is not used. So a
revoked key, a changed plan or a deleted model takes effect at the next request in every process.
A request that could not read the token (Redis down), or a caller outside a /v1/ request (pages,
workers), reads the database as before.

The token is random, not a counter: a Redis restart or flush cannot bring an old value back and
make stale copies valid again.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import secrets
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError

from apps.core.redis import client

logger = logging.getLogger(__name__)

GENERATION_KEY = "mw:hot:generation"
MAX_ENTRIES = 10_000

T = TypeVar("T")

_generation: contextvars.ContextVar[str | None] = contextvars.ContextVar("hot_generation", default=None)


def read_generation() -> str | None:
    """The current token (made if there is none yet), or None when Redis cannot say."""
    try:
        redis = client()
        value = redis.get(GENERATION_KEY)
        if value is None:
            redis.set(GENERATION_KEY, secrets.token_hex(8), nx=True)
            value = redis.get(GENERATION_KEY)
    except (RedisError, OSError):
        logger.warning("could not read the cache generation; this request reads the database", exc_info=True)
        return None
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def request_scope() -> Iterator[None]:
    """The span of one request that may use the copies: the token is read once, here."""
    token = _generation.set(read_generation() if settings.HOT_CACHE_SECONDS > 0 else None)
    try:
        yield
    finally:
        _generation.reset(token)


def _replace_generation() -> None:
    try:
        client().set(GENERATION_KEY, secrets.token_hex(8))
    except (RedisError, OSError):
        # The copies then live out their HOT_CACHE_SECONDS: the most a change can take to show.
        logger.warning("could not invalidate the cached rows", exc_info=True)


def invalidate() -> None:
    """A row the copies are made of changed. Replaced now, so that this process and its tests see
    it at once, and again once the transaction commits: a request that read the old row between
    the two would otherwise keep a copy under the new token."""
    _replace_generation()
    transaction.on_commit(_replace_generation)


class HotCache(Generic[T]):
    """One kind of copy, by key. `get` returns a deep copy, so a caller that changes the object it
    got (a view saving its project) never changes what other threads read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[Hashable, tuple[str, float, T]] = {}

    def get(self, key: Hashable, load: Callable[[], T | None]) -> T | None:
        """The copy under `key`, or `load()`'s answer (kept when it is not None: a row that does
        not exist yet may be created at any moment, and must be found then)."""
        generation = _generation.get()
        if generation is None:
            return load()
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] == generation and entry[1] > now:
            return copy.deepcopy(entry[2])
        value = load()
        if value is not None:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # rare: a simple bound beats an LRU's bookkeeping on every hit
            self._entries[key] = (generation, now + settings.HOT_CACHE_SECONDS, copy.deepcopy(value))
        return value

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
