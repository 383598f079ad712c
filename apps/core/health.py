"""`/healthz`: the database, Redis and a recent worker heartbeat, as JSON.

Workers write their heartbeats here too (`record_worker_heartbeat`, from a bootstep in
`saas/celery.py`), so the key and its payload have one home.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from redis.exceptions import RedisError

from apps.core.redis import broker_client

WORKER_HEARTBEAT_KEY = "modelworks:worker-heartbeat:"


def record_worker_heartbeat(worker_name: str, queues: list[str], ttl: int) -> None:
    """`modelworks:worker-heartbeat:<hostname>`, expiring on its own: a dead worker simply
    disappears. A broker that is down is not an error here: the worker notices it itself, and
    `/healthz` says so."""
    try:
        payload = json.dumps({"at": time.time(), "queues": queues})
        broker_client(timeout=2).set(WORKER_HEARTBEAT_KEY + worker_name, payload, ex=ttl)
    except RedisError:
        pass


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any driver error means "down"; the message says which
        return {"ok": False, "error": type(exc).__name__}


def _redis_and_workers() -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        client = broker_client(timeout=2)
        client.ping()
        now = time.time()
        workers = []
        for key in client.scan_iter(match=WORKER_HEARTBEAT_KEY + "*", count=100):
            raw = client.get(key)
            if raw is None:
                continue
            beat = json.loads(raw)
            age = now - float(beat["at"])
            if age <= settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS:
                name = key.decode()[len(WORKER_HEARTBEAT_KEY) :]
                workers.append({"name": name, "queues": beat.get("queues", []), "age_seconds": round(age, 1)})
    except RedisError as exc:
        return {"ok": False, "error": type(exc).__name__}, {"ok": False, "error": "redis unavailable"}
    queues = sorted({q for w in workers for q in w["queues"]})
    missing = [q for q in ("gpu", "serve", "default") if q not in queues]
    worker_check: dict[str, Any] = {
        "ok": bool(workers) and not missing,
        "count": len(workers),
        "queues": queues,
    }
    if not workers:
        worker_check["error"] = (
            f"no worker heartbeat in the last {settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS:g} s"
        )
    elif missing:
        worker_check["error"] = "no worker consumes: " + ", ".join(missing)
    return {"ok": True}, worker_check


def healthz(request: HttpRequest) -> JsonResponse:
    redis_check, worker_check = _redis_and_workers()
    checks = {"database": _database(), "redis": redis_check, "worker": worker_check}
    failing = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "ok" if not failing else "error", "failing": failing, "checks": checks}
    return JsonResponse(body, status=200 if not failing else 503)
