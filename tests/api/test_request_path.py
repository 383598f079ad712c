"""The request path's copies of keys, plans and models (apps.core.hotcache): a warm request writes
its job and reads nothing else from PostgreSQL, and every change to what it copied reaches the
very next request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import ApiKey
from apps.billing.models import Plan
from apps.core import hotcache
from apps.core.hotcache import HotCache
from apps.core.redis import client
from apps.jobs.models import Job
from apps.projects.actions import revoke_api_key

pytestmark = pytest.mark.integration


@pytest.fixture
def uncapped(alice_org: Any) -> Any:
    """alice's organization on a plan without a spend cap: nothing to reserve, so no lock either."""
    plan = Plan.objects.create(
        slug="metered", name="Metered", included_credit=0, usage_beyond_credit=True, position=9
    )
    subscription = alice_org.subscription
    subscription.plan, subscription.spend_limit = plan, None
    subscription.save()
    return subscription


def classify(api: Any, model: Any) -> Any:
    return api.post("/v1/classifications", {"model": model.name, "input": "crash"}, format="json")


def test_a_warm_request_writes_its_job_and_reads_nothing_else(
    api: Any, celery_worker: Any, tiny_classifier: Any, uncapped: Any
) -> None:
    for _ in range(2):  # the copies are made (the key twice: the first use writes its last_used_at)
        assert classify(api, tiny_classifier).status_code == 200

    with CaptureQueriesContext(connection) as queries:
        response = classify(api, tiny_classifier)

    assert response.status_code == 200, response.content
    assert response.json()["data"][0]["labels"][0]["label"] in {"billing", "bug", "praise"}
    statements = [query["sql"] for query in queries]
    assert len(statements) == 1 and statements[0].startswith('INSERT INTO "jobs_job"'), statements
    # and the answer it was handed does not stay in Redis
    job = Job.objects.latest("created_at")
    assert job.result is not None and job.result["data"] == response.json()["data"]
    assert not client().exists(f"mw:job:{job.public_id}:events")


def _revoke(alice: Any, **_: Any) -> None:
    revoke_api_key(alice, ApiKey.objects.get())


def _deactivate(alice: Any, **_: Any) -> None:
    alice.is_active = False
    alice.save()


def _leave(alice: Any, alice_org: Any, **_: Any) -> None:
    alice.memberships.filter(organization=alice_org).delete()


def _delete_model(tiny_classifier: Any, **_: Any) -> None:
    tiny_classifier.delete()


def _exclude_model(uncapped: Any, tiny_classifier: Any, **_: Any) -> None:
    plan = uncapped.plan
    plan.allowed_models = ["*", f"!{tiny_classifier.name}"]
    plan.save()


def _grace_over(uncapped: Any, **_: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    uncapped.grace_until = timezone.now() - timedelta(seconds=1)
    uncapped.save()


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        (_revoke, 401, "invalid_api_key"),
        (_deactivate, 401, "invalid_api_key"),
        (_leave, 401, "invalid_api_key"),
        (_delete_model, 404, "model_not_found"),
        (_exclude_model, 403, "model_not_allowed"),
        (_grace_over, 429, "insufficient_quota"),
    ],
    ids=[
        "key revoked",
        "creator deactivated",
        "creator left",
        "model deleted",
        "plan excludes it",
        "grace over",
    ],
)
def test_a_change_reaches_the_next_request(
    change: Callable[..., None],
    status: int,
    code: str,
    api: Any,
    celery_worker: Any,
    alice: Any,
    alice_org: Any,
    tiny_classifier: Any,
    uncapped: Any,
) -> None:
    assert classify(api, tiny_classifier).status_code == 200  # the copies are made

    change(alice=alice, alice_org=alice_org, tiny_classifier=tiny_classifier, uncapped=uncapped)
    response = classify(api, tiny_classifier)

    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code


# --- The cache itself -------------------------------------------------------------------------------
class Counted:
    def __init__(self) -> None:
        self.loads = 0

    def __call__(self) -> dict[str, Any]:
        self.loads += 1
        return {"name": "row", "tags": ["a"]}


def test_a_copy_serves_the_requests_until_a_change(db: None) -> None:
    cache: HotCache[dict[str, Any]] = HotCache("test")
    load = Counted()
    with hotcache.request_scope():
        cache.get("k", load)
    with hotcache.request_scope():
        got = cache.get("k", load)
    assert load.loads == 1 and got == {"name": "row", "tags": ["a"]}

    hotcache.invalidate()
    with hotcache.request_scope():
        cache.get("k", load)
    assert load.loads == 2


def test_what_a_caller_changes_in_its_copy_stays_its_own(db: None) -> None:
    cache: HotCache[dict[str, Any]] = HotCache("test")
    with hotcache.request_scope():
        mine = cache.get("k", Counted())
        assert mine is not None
        mine["tags"].append("changed")
        assert cache.get("k", Counted()) == {"name": "row", "tags": ["a"]}


def test_nothing_is_kept_outside_a_request_or_without_redis(db: None, settings: Any) -> None:
    cache: HotCache[dict[str, Any]] = HotCache("test")
    load = Counted()
    cache.get("k", load)
    cache.get("k", load)
    assert load.loads == 2  # pages and workers read the database

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    with hotcache.request_scope():
        cache.get("k", load)
    with hotcache.request_scope():
        cache.get("k", load)
    assert load.loads == 4


def test_a_missing_row_is_not_kept(db: None) -> None:
    cache: HotCache[dict[str, Any]] = HotCache("test")
    with hotcache.request_scope():
        assert cache.get("k", lambda: None) is None
        assert cache.get("k", Counted()) == {"name": "row", "tags": ["a"]}


def test_a_copy_expires_after_hot_cache_seconds(db: None, settings: Any) -> None:
    settings.HOT_CACHE_SECONDS = 0.05
    cache: HotCache[dict[str, Any]] = HotCache("test")
    load = Counted()
    with hotcache.request_scope():
        cache.get("k", load)
        time.sleep(0.1)
        cache.get("k", load)
    assert load.loads == 2


def test_a_flushed_redis_does_not_bring_old_copies_back(db: None) -> None:
    from apps.core.redis import client

    cache: HotCache[dict[str, Any]] = HotCache("test")
    load = Counted()
    with hotcache.request_scope():
        cache.get("k", load)
    client().delete(hotcache.GENERATION_KEY)  # as after a restart without persistence
    with hotcache.request_scope():
        cache.get("k", load)
    assert load.loads == 2
