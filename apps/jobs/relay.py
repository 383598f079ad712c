"""Results and tokens travel from a worker to the waiting web request through a Redis list.

A list, not pub/sub: events pushed before the web request starts listening are not lost. Each
job has its own list, which expires on its own. Events are small JSON objects:
`{"type": "delta", ...}` while streaming, then one `{"type": "done"}` or `{"type": "error", ...}`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from apps.core.redis import client, script

EXPIRE_SECONDS = 900


def _key(job_id: str) -> str:
    return f"mw:job:{job_id}:events"


def _abort_key(job_id: str) -> str:
    return f"mw:job:{job_id}:abort"


def push(job_id: str, event: dict[str, Any]) -> None:
    pipe = client().pipeline(transaction=False)
    pipe.rpush(_key(job_id), json.dumps(event, separators=(",", ":")))
    pipe.expire(_key(job_id), EXPIRE_SECONDS)
    pipe.execute()


# KEYS: the job's list, its abort flag. ARGV: the answer's event, the event without the answer, the
# list's lifetime. A request that stopped waiting (it timed out, its client left) has set the flag:
# nobody will read the answer, so it is not parked in Redis for the list's lifetime.
_PUSH_ANSWER = """
local event = ARGV[1]
if redis.call('EXISTS', KEYS[2]) == 1 then
  event = ARGV[2]
end
redis.call('RPUSH', KEYS[1], event)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
"""


def push_answer(job_id: str, result: dict[str, Any]) -> None:
    """The final `done` event with the stored answer in it, so that the waiting request need not
    read the job back; without it when the request has stopped waiting."""
    answer = json.dumps({"type": "done", "result": result}, separators=(",", ":"))
    script(client(), _PUSH_ANSWER)(
        keys=[_key(job_id), _abort_key(job_id)], args=[answer, '{"type":"done"}', EXPIRE_SECONDS]
    )


def listen(job_id: str, timeout: float) -> Iterator[dict[str, Any] | None]:
    """Yields events as they arrive until a final one; yields None once if `timeout` passes."""
    deadline = time.monotonic() + timeout
    redis = client()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            yield None
            return
        # BLPOP's timeout is in whole seconds at best resolution 0.01 on Redis >= 6.
        item = redis.blpop([_key(job_id)], timeout=min(remaining, 5.0))
        if item is None:
            continue
        event = json.loads(item[1])
        if event.get("type") in ("done", "error"):
            # Before yielding: a caller that returns on the final event closes this generator there,
            # and the list (which may hold the whole answer) would stay until it expires.
            redis.delete(_key(job_id))
            yield event
            return
        yield event


def request_abort(job_id: str) -> None:
    """The client went away or timed out: the worker stops generating at its next token."""
    client().set(_abort_key(job_id), "1", ex=EXPIRE_SECONDS)


def abort_requested(job_id: str) -> bool:
    return bool(client().exists(_abort_key(job_id)))
