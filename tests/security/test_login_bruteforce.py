"""T28: failed logins are limited by django-allauth (`ACCOUNT_RATE_LIMITS` in saas/settings.py), on the
dashboard's login page and on the admin's alike, in the same counters.

- 10 failures a minute from one address, whatever the accounts;
- 5 failures in 5 minutes, or 20 in an hour, for one account from one address
  (`login_failed_from_ip`, apps/dashboard/adapter.py): the owner, elsewhere, still logs in;
- 60 failures an hour for one account from all addresses together.

Past a limit the next attempt is refused before the password is checked, a right password too.
Allauth answers with the login form again (200) and its error; it counts in Django's cache, which
is Redis, so every web process shares the counts. tests/conftest.py turns the limits off for the
other tests and empties allauth's counts before every test.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from redis import Redis

import saas.settings as project_settings
from tests.conftest import PASSWORD, make_user

WRONG = "The email address and/or password you specified are not correct."
TOO_MANY = "Too many failed login attempts. Try again later."
NOT_STAFF = (
    "Please enter the correct email and password for a staff account. Note that both fields may be "
    "case-sensitive."
)
PER_IP = 10
PER_ACCOUNT_AT_IP = 5  # in 5 minutes
PER_ACCOUNT_AT_IP_HOURLY = 20
PER_ACCOUNT = 60  # in an hour, all addresses together
COUNTS = "allauth:rl:allauth.account:"


@pytest.fixture(autouse=True)
def login_limits(settings: Any) -> None:
    """The project's own limits, which tests/conftest.py turns off for every other test."""
    configured = project_settings.ACCOUNT_RATE_LIMITS
    assert configured == {
        "login_failed": f"{PER_IP}/m/ip,{PER_ACCOUNT}/h/key",
        "login_failed_from_ip": f"{PER_ACCOUNT_AT_IP}/5m/key,{PER_ACCOUNT_AT_IP_HOURLY}/h/key",
    }
    settings.ACCOUNT_RATE_LIMITS = configured


def address(n: int) -> str:
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def log_in(email: str, password: str, ip: str = "203.0.113.7") -> tuple[Any, bool]:
    """The login page's answer, and whether the client is now logged in."""
    client = Client(REMOTE_ADDR=ip)
    response = client.post("/accounts/login/", {"login": email, "password": password})
    return response, "_auth_user_id" in client.session


def admin_log_in(email: str, password: str, ip: str = "203.0.113.7") -> tuple[Any, bool]:
    client = Client(REMOTE_ADDR=ip)
    response = client.post("/admin/login/", {"username": email, "password": password, "next": "/admin/"})
    return response, "_auth_user_id" in client.session


def assert_refused(attempt: tuple[Any, bool], message: str) -> None:
    response, logged_in = attempt
    assert response.status_code == 200
    assert not logged_in
    errors = response.context["form"].non_field_errors()
    assert errors == [message], errors


def age_counts(seconds: float) -> None:
    """Moves every recorded failure `seconds` into the past, as if that time had gone by: allauth
    keeps each count as the list of its failures' timestamps."""
    redis = Redis.from_url(project_settings.REDIS_URL)
    for raw in redis.scan_iter(match=f"mw:*:{COUNTS}*"):
        key = raw.decode().split(":", 2)[2]  # the cache's own name, without "mw:<version>:"
        if key.endswith(":lock"):
            continue
        cache.set(key, [stamp - seconds for stamp in cache.get(key, [])], 3600)


def test_the_counts_live_in_redis(settings: Any) -> None:
    cache_settings = settings.CACHES["default"]
    assert cache_settings["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert cache_settings["LOCATION"] == settings.REDIS_URL


def test_five_failures_lock_the_account_at_that_address_only(db: None, settings: Any) -> None:
    user = make_user("dana@example.com")
    assert log_in(user.email, PASSWORD)[1]  # the positive control
    for _ in range(PER_ACCOUNT_AT_IP):
        assert_refused(log_in(user.email, "wrong-password"), WRONG)
    assert_refused(log_in(user.email, PASSWORD), TOO_MANY)
    # The owner, from another address, still logs in: a guesser cannot lock them out this way.
    assert log_in(user.email, PASSWORD, ip="198.51.100.9")[1]
    # The count is in the shared Redis cache, not in this process.
    redis = Redis.from_url(settings.CACHES["default"]["LOCATION"])
    assert list(redis.scan_iter(match=f"mw:*:{COUNTS}login_failed_from_ip:*"))


def test_other_accounts_can_still_log_in(db: None) -> None:
    user = make_user("dana@example.com")
    other = make_user("erin@example.com")
    for _ in range(PER_ACCOUNT_AT_IP):
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


def test_one_address_cannot_exhaust_the_accounts_own_limit(db: None) -> None:
    user = make_user("dana@example.com")
    # Five failures every five minutes from one address, for an hour's worth of windows.
    for _ in range(PER_ACCOUNT_AT_IP_HOURLY // PER_ACCOUNT_AT_IP):
        for _ in range(PER_ACCOUNT_AT_IP):
            assert_refused(log_in(user.email, "wrong-password"), WRONG)
        age_counts(5 * 60)
    # That address has had its hour's worth: refused, for this account...
    assert_refused(log_in(user.email, PASSWORD), TOO_MANY)
    # ...while the account's own count (20 of 60) leaves the owner free elsewhere.
    assert log_in(user.email, PASSWORD, ip="198.51.100.9")[1]


def test_sixty_failures_from_many_addresses_lock_the_account(db: None) -> None:
    user = make_user("dana@example.com")
    addresses = [address(n) for n in range(PER_ACCOUNT // PER_ACCOUNT_AT_IP)]
    for ip in addresses[:-1]:
        for _ in range(PER_ACCOUNT_AT_IP):
            assert_refused(log_in(user.email, "wrong-password", ip=ip), WRONG)
    for _ in range(PER_ACCOUNT_AT_IP - 1):
        assert_refused(log_in(user.email, "wrong-password", ip=addresses[-1]), WRONG)
    assert log_in(user.email, PASSWORD, ip=address(100))[1]  # 59 failures: still open, and not reset
    assert_refused(log_in(user.email, "wrong-password", ip=addresses[-1]), WRONG)  # the 60th
    assert_refused(log_in(user.email, PASSWORD, ip=address(101)), TOO_MANY)
    # A refusal from a fresh address is not counted against that address.
    assert log_in("nobody@example.com", "x", ip=address(101))[0].status_code == 200
    age_counts(3600)
    assert log_in(user.email, PASSWORD, ip=address(101))[1]


# --- Django admin (T26: its login is limited like the others) ----------------------------------
@pytest.fixture
def staff(db: None) -> Any:
    user = make_user("root@example.com")
    user.is_staff = user.is_superuser = True
    user.save()
    return user


def test_the_admin_login_refuses_the_right_password_after_the_limit(staff: Any) -> None:
    assert admin_log_in(staff.email, PASSWORD)[1]  # the positive control
    for _ in range(PER_ACCOUNT_AT_IP):
        assert_refused(admin_log_in(staff.email, "wrong-password"), NOT_STAFF)
    for _ in range(12 - PER_ACCOUNT_AT_IP):
        assert_refused(admin_log_in(staff.email, "wrong-password"), TOO_MANY)
    assert_refused(admin_log_in(staff.email, PASSWORD), TOO_MANY)
    # The dashboard's login shares the count: switching pages gains nothing.
    assert_refused(log_in(staff.email, PASSWORD), TOO_MANY)
    assert admin_log_in(staff.email, PASSWORD, ip="198.51.100.9")[1]


def test_failures_on_the_dashboard_count_on_the_admin_login(staff: Any) -> None:
    for _ in range(PER_ACCOUNT_AT_IP - 2):
        assert_refused(log_in(staff.email, "wrong-password"), WRONG)
    for _ in range(2):
        assert_refused(admin_log_in(staff.email, "wrong-password"), NOT_STAFF)
    assert_refused(admin_log_in(staff.email, PASSWORD), TOO_MANY)


def test_a_non_staff_user_still_cannot_log_in_to_the_admin(db: None) -> None:
    user = make_user("dana@example.com")
    response, logged_in = admin_log_in(user.email, PASSWORD)
    assert_refused((response, logged_in), NOT_STAFF)
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    # A right password is no failure: the staff-only refusal leaves the count alone.
    for _ in range(PER_ACCOUNT_AT_IP):
        assert_refused(admin_log_in(user.email, PASSWORD), NOT_STAFF)
    assert log_in(user.email, PASSWORD)[1]
