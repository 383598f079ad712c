"""T28: failed API-key authentications are limited per client IP (10 a minute by default).

Past the limit every request from that IP that presents a key gets 429, the right key too: a
different answer to one guess would tell the attacker it was the right one. The counts live in
Redis (apps.billing.ratelimit), shared by every web process; tests/conftest.py empties them
before each test.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from typing import Any

import httpx
import pytest
from rest_framework.test import APIClient

from apps.accounts.models import ApiKey

INVALID = "Incorrect API key provided. You can find your API keys on the dashboard's API keys page."
MISSING = "You didn't provide an API key. Send it in the Authorization header as 'Bearer sk-…'."
TOO_MANY = "Too many requests with an incorrect API key from your IP address. Retry after {wait} s."
LIMIT = 10
ATTACKER = "203.0.113.7"
BYSTANDER = "198.51.100.9"
PROXY = "10.0.0.2"


def wrong_key() -> str:
    """A key in the right format (prefix, length) that no one holds: it reaches the database."""
    alphabet = string.ascii_letters + string.digits
    return ApiKey.PREFIX + "".join(secrets.choice(alphabet) for _ in range(40))


def call(key: str | None, ip: str = ATTACKER, **headers: str) -> Any:
    client = APIClient()
    if key is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client.get("/v1/models", REMOTE_ADDR=ip, **headers)


def assert_401(response: Any, message: str = INVALID) -> None:
    assert response.status_code == 401, response.content
    assert response.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


def assert_429(response: Any) -> None:
    assert response.status_code == 429, response.content
    wait = int(response["retry-after"])
    # At most the window plus the share of it that one failure weighs (see apps.api.auth).
    assert 1 <= wait <= 60 + 60 // LIMIT + 1
    assert response.json() == {
        "error": {
            "message": TOO_MANY.format(wait=wait),
            "type": "rate_limit_exceeded",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert response["x-request-id"].startswith("req_")


def fail_up_to_the_limit(ip: str = ATTACKER, **headers: str) -> None:
    for _ in range(LIMIT):
        assert_401(call(wrong_key(), ip, **headers))


def test_ten_wrong_keys_are_401_and_the_eleventh_is_429(db: None, settings: Any) -> None:
    assert settings.API_KEY_FAILURE_LIMIT == LIMIT and settings.API_KEY_FAILURE_WINDOW_SECONDS == 60
    fail_up_to_the_limit()
    assert_429(call(wrong_key()))
    assert_429(call(wrong_key()))


def test_the_right_key_is_refused_too_while_the_ip_is_blocked(alice_key: str) -> None:
    assert call(alice_key).status_code == 200
    fail_up_to_the_limit()
    assert_429(call(alice_key))
    # Whatever is presented, even a malformed header: the answer says nothing about the key.
    assert_429(call(None, HTTP_AUTHORIZATION=f"Basic {alice_key}"))


def test_another_ip_is_unaffected(alice_key: str) -> None:
    fail_up_to_the_limit()
    assert_429(call(alice_key))
    assert call(alice_key, BYSTANDER).status_code == 200
    assert_401(call(wrong_key(), BYSTANDER))


def test_successes_and_missing_keys_do_not_count(alice_key: str) -> None:
    for _ in range(2 * LIMIT):
        assert call(alice_key).status_code == 200
        assert_401(call(None), MISSING)
    fail_up_to_the_limit()
    assert_429(call(wrong_key()))


def test_a_success_does_not_reset_the_count(alice_key: str) -> None:
    for _ in range(LIMIT - 1):
        assert_401(call(wrong_key()))
    assert call(alice_key).status_code == 200
    assert_401(call(wrong_key()))
    assert_429(call(alice_key))


def test_the_block_lifts_once_the_window_has_passed(alice_key: str, settings: Any) -> None:
    settings.API_KEY_FAILURE_WINDOW_SECONDS = 1
    # Start at the beginning of a one-second window, so the burst below falls in one window and
    # the sliding count cannot decay while it runs.
    time.sleep(1 - time.time() % 1)
    fail_up_to_the_limit()
    blocked = call(alice_key)
    assert_429(blocked)
    # A client that waits what retry-after says gets through (here at most 2 s: the rest of the
    # window plus a tenth of it, rounded up).
    time.sleep(int(blocked["retry-after"]))
    assert call(alice_key).status_code == 200


def test_forwarded_for_is_ignored_when_not_behind_the_tls_proxy(db: None, settings: Any) -> None:
    assert settings.BEHIND_TLS_PROXY is False
    for n in range(LIMIT):
        assert_401(call(wrong_key(), HTTP_X_FORWARDED_FOR=f"192.0.2.{n}"))
    assert_429(call(wrong_key(), HTTP_X_FORWARDED_FOR="192.0.2.200"))


def test_behind_the_tls_proxy_the_address_it_appended_is_the_client(alice_key: str, settings: Any) -> None:
    settings.BEHIND_TLS_PROXY = True
    # The client may write anything left of the entry the proxy appends; only that entry counts.
    for n in range(LIMIT):
        assert_401(call(wrong_key(), PROXY, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, {ATTACKER}"))
    assert_429(call(alice_key, PROXY, HTTP_X_FORWARDED_FOR=f"192.0.2.99, {ATTACKER}"))
    assert_429(call(alice_key, PROXY, HTTP_X_FORWARDED_FOR=ATTACKER))
    # Other clients behind the same proxy are not blocked with the attacker.
    assert call(alice_key, PROXY, HTTP_X_FORWARDED_FOR=BYSTANDER).status_code == 200
    assert call(alice_key, PROXY, HTTP_X_FORWARDED_FOR=f"{ATTACKER}, {BYSTANDER}").status_code == 200
    # Without the header (a request that skipped the proxy) the peer address counts.
    assert_401(call(wrong_key(), PROXY))


def test_an_ipv6_client_is_counted_by_its_64_prefix(alice_key: str) -> None:
    for n in range(LIMIT):
        assert_401(call(wrong_key(), f"2001:db8:1:2::{n + 1:x}"))
    assert_429(call(alice_key, "2001:db8:1:2:ffff:ffff:ffff:ffff"))
    assert call(alice_key, "2001:db8:1:3::1").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_wrong_keys_get_exactly_ten_401s(live_server: Any) -> None:
    """20 guesses at once from one IP, against a threaded server: the check and the count are one
    Redis step, so no two requests can both take the last failure allowed."""
    start = threading.Barrier(20)
    statuses: list[int] = []
    lock = threading.Lock()

    def guess() -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            start.wait()
            response = client.get("/v1/models", headers={"Authorization": f"Bearer {wrong_key()}"})
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [401] * LIMIT + [429] * (20 - LIMIT)
