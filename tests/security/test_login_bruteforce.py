"""T28: dashboard logins are limited by django-allauth (`ACCOUNT_RATE_LIMITS` in saas/settings.py).

`login_failed` is "10/m/ip,5/5m/key": 5 failed logins for one account in 5 minutes, or 10 from one
IP in a minute, and the next attempt is refused before the password is checked, a right password
too. Allauth answers that attempt with the login form again (200) and its error; it counts in
Django's cache, which is Redis, so every web process shares the counts. tests/conftest.py turns
the limits off for the other tests and empties allauth's counts before every test.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from redis import Redis

import saas.settings as project_settings
from tests.conftest import PASSWORD, make_user

WRONG = "The email address and/or password you specified are not correct."
TOO_MANY = "Too many failed login attempts. Try again later."
PER_ACCOUNT = 5
PER_IP = 10


@pytest.fixture(autouse=True)
def login_limits(settings: Any) -> None:
    """The project's own limits, which tests/conftest.py turns off for every other test."""
    configured = project_settings.ACCOUNT_RATE_LIMITS
    assert configured == {"login_failed": f"{PER_IP}/m/ip,{PER_ACCOUNT}/5m/key"}
    settings.ACCOUNT_RATE_LIMITS = configured


def log_in(email: str, password: str, ip: str = "203.0.113.7") -> tuple[Any, bool]:
    """The login page's answer, and whether the client is now logged in."""
    client = Client(REMOTE_ADDR=ip)
    response = client.post("/accounts/login/", {"login": email, "password": password})
    return response, "_auth_user_id" in client.session


def assert_refused(attempt: tuple[Any, bool], message: str) -> None:
    response, logged_in = attempt
    assert response.status_code == 200
    assert not logged_in
    errors = response.context["form"].non_field_errors()
    assert errors == [message], errors


def test_the_counts_live_in_redis(settings: Any) -> None:
    cache = settings.CACHES["default"]
    assert cache["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert cache["LOCATION"] == settings.REDIS_URL


def test_five_failed_logins_lock_the_account_even_for_the_right_password(db: None, settings: Any) -> None:
    user = make_user("dana@example.com")
    assert log_in(user.email, PASSWORD)[1]  # the positive control
    for _ in range(PER_ACCOUNT):
        assert_refused(log_in(user.email, "wrong-password"), WRONG)
    assert_refused(log_in(user.email, PASSWORD), TOO_MANY)
    # From another address too: the per-account count is not per IP.
    assert_refused(log_in(user.email, PASSWORD, ip="198.51.100.9"), TOO_MANY)
    # The count is in the shared Redis cache, not in this process.
    redis = Redis.from_url(settings.CACHES["default"]["LOCATION"])
    assert list(redis.scan_iter(match="mw:*:allauth:rl:allauth.account:login_failed:*"))


def test_other_accounts_can_still_log_in(db: None) -> None:
    user = make_user("dana@example.com")
    other = make_user("erin@example.com")
    for _ in range(PER_ACCOUNT):
        assert_refused(log_in(user.email, "wrong-password"), WRONG)
    assert log_in(other.email, PASSWORD)[1]


def test_ten_failed_logins_from_one_ip_lock_that_ip(db: None) -> None:
    users = [make_user(f"user{n}@example.com") for n in range(PER_IP + 1)]
    # Two failures for each of five accounts: no account reaches its own limit.
    for user in users[:5]:
        for _ in range(2):
            assert_refused(log_in(user.email, "wrong-password"), WRONG)
    assert_refused(log_in(users[-1].email, PASSWORD), TOO_MANY)
    assert log_in(users[-1].email, PASSWORD, ip="198.51.100.9")[1]
