from __future__ import annotations

from typing import Any

import pytest

from apps.core.health import WORKER_HEARTBEAT_KEY


@pytest.mark.django_db
def test_healthz_names_the_missing_worker(client: Any, settings: Any) -> None:
    from redis import Redis

    redis = Redis.from_url(settings.CELERY_BROKER_URL)
    for key in redis.scan_iter(match=WORKER_HEARTBEAT_KEY + "*"):
        redis.delete(key)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["worker"]
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"] == {"ok": True}


@pytest.mark.django_db
def test_healthz_reports_redis_down(client: Any, settings: Any) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    body = client.get("/healthz").json()
    assert body["failing"] == ["redis", "worker"]


@pytest.mark.integration
def test_healthz_is_ok_with_a_worker(client: Any, celery_worker: Any) -> None:
    from tests.conftest import wait_for

    response = wait_for(lambda: (r := client.get("/healthz")).status_code == 200 and r, timeout=20)
    assert response.json()["checks"]["worker"]["queues"] == ["default", "gpu", "serve"]
