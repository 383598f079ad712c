"""Request and token limits counted atomically in Redis (sliding window over two fixed windows).

Every web process shares the counters, so two processes can never each let the last request
through. The estimate of the sliding window is the current window's count plus the previous
window's count weighted by how much of it still overlaps.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apps.core.redis import client, script

WINDOW_SECONDS = 60

# KEYS: current window key, previous window key. ARGV: limit, cost, previous-window weight,
# key lifetime in seconds, 1 to count or 0 only to ask.
# Adds `cost` only if the weighted total stays within the limit; returns the total after.
_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local total = current + previous * tonumber(ARGV[3])
local cost = tonumber(ARGV[2])
if total + cost > tonumber(ARGV[1]) then
  return {0, math.floor(total)}
end
if ARGV[5] == '1' then
  redis.call('INCRBY', KEYS[1], cost)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
  return {1, math.floor(total + cost)}
end
return {1, math.floor(total)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float


def take(
    scope: str, limit: int, cost: int = 1, now: float | None = None, window: int = WINDOW_SECONDS
) -> Decision:
    """Counts `cost` against `scope` unless that would pass `limit` within the sliding window."""
    return _run(scope, limit, cost, now, window, count=True)


def peek(
    scope: str, limit: int, cost: int = 1, now: float | None = None, window: int = WINDOW_SECONDS
) -> Decision:
    """Whether `take` would allow `cost` now, without counting anything."""
    return _run(scope, limit, cost, now, window, count=False)


def take_many(
    checks: Sequence[tuple[str, int, int]], now: float | None = None, window: int = WINDOW_SECONDS
) -> list[Decision]:
    """Several `take(scope, limit, cost)` in one round trip to Redis, each decided on its own
    exactly as separate calls would be (the request path counts three limits at once)."""
    now = time.time() if now is None else now
    # EVAL, not the registered script: in a pipeline, redis-py asks SCRIPT EXISTS first, a round trip.
    pipe = client().pipeline(transaction=False)
    for scope, limit, cost in checks:
        keys, args = _args(scope, limit, cost, now, window, count=True)
        pipe.eval(_SCRIPT, len(keys), *keys, *args)
    return [
        _decision(result, limit, now, window)
        for result, (_, limit, _) in zip(pipe.execute(), checks, strict=True)
    ]


def _run(scope: str, limit: int, cost: int, now: float | None, window: int, *, count: bool) -> Decision:
    now = time.time() if now is None else now
    keys, args = _args(scope, limit, cost, now, window, count=count)
    result = script(client(), _SCRIPT)(keys=keys, args=args)
    return _decision(result, limit, now, window)


def _decision(result: Any, limit: int, now: float, window: int) -> Decision:
    """The script's (allowed, total after) as a Decision; the window resets at its next multiple."""
    allowed, total = result
    return Decision(
        bool(allowed), limit, max(limit - int(total), 0), window - (now - int(now // window) * window)
    )


def _args(
    scope: str, limit: int, cost: int, now: float, window: int, *, count: bool
) -> tuple[list[str], list[Any]]:
    """The script's keys (this window's and the previous window's counters) and arguments."""
    index = int(now // window)
    weight = 1 - (now - index * window) / window
    # A key must outlive the window after its own, where it is still weighed in.
    lifetime = 2 * window + 10
    keys = [f"mw:rl:{scope}:{index}", f"mw:rl:{scope}:{index - 1}"]
    return keys, [limit, cost, weight, lifetime, int(count)]


def duration(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`."""
    seconds = max(math.ceil(seconds), 0)
    minutes, rest = divmod(seconds, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def headers(requests: Decision, tokens: Decision) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(requests.limit),
        "x-ratelimit-remaining-requests": str(requests.remaining),
        "x-ratelimit-reset-requests": duration(requests.reset_seconds),
        "x-ratelimit-limit-tokens": str(tokens.limit),
        "x-ratelimit-remaining-tokens": str(tokens.remaining),
        "x-ratelimit-reset-tokens": duration(tokens.reset_seconds),
    }


# --- Requests in flight ---------------------------------------------------------------------------
# KEYS: the scope's sorted set (member: a request's token, score: when it started). ARGV: now, the
# oldest start still counted, limit, token, key lifetime. Entries older than a request can live are
# dropped first, so a web process that died mid-request frees its slots by itself.
_SLOT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
"""


def take_slot(scope: str, limit: int, lifetime: float, now: float | None = None) -> str | None:
    """Holds one of `limit` slots of `scope` until `release_slot` (or `lifetime` seconds, for a
    holder that died). Returns the slot's token, or None when all are held."""
    now = time.time() if now is None else now
    token = secrets.token_hex(8)
    key = f"mw:rl:{scope}:inflight"
    taken = script(client(), _SLOT_SCRIPT)(
        keys=[key], args=[now, now - lifetime, limit, token, math.ceil(lifetime) + 10]
    )
    return token if taken else None


def release_slot(scope: str, token: str) -> None:
    client().zrem(f"mw:rl:{scope}:inflight", token)
