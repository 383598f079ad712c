"""Tokens that travel in URLs (invitations, password resets, email confirmations) never reach a log
line: neither gunicorn's access log, started exactly as `make run` and docker-compose start it, nor
Django's own request lines."""

from __future__ import annotations

import importlib.util
import io
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from apps.accounts.models import Invitation
from tests.chaos.conftest import Process, free_port
from tests.conftest import ROOT, wait_for, worker_env

INVITATION = secrets.token_urlsafe(32)
RESET_KEY = "cz7k1m-" + secrets.token_hex(16)  # allauth's <token>, after the user's base-36 id
CONFIRM_KEY = "MQ:1u2abc:" + secrets.token_urlsafe(24)  # allauth's signed confirmation key
TOKENS = (INVITATION, RESET_KEY, CONFIRM_KEY)


def paths() -> list[str]:
    return [
        f"/invitations/{INVITATION}/",
        f"/invitations/{secrets.token_urlsafe(32)}x/",  # an unknown token: a 404, logged as a warning
        f"/accounts/login/?next={quote(f'/invitations/{INVITATION}/', safe='')}",
        f"/accounts/password/reset/key/1-{RESET_KEY}/",
        f"/accounts/confirm-email/{quote(CONFIRM_KEY, safe=':')}/",
    ]


def invitation(alice_org: Any) -> Invitation:
    owner = alice_org.memberships.get().user  # an invitation is valid while its sender may invite
    return Invitation.objects.create(
        organization=alice_org,
        email="dave@example.com",
        token_hash=Invitation.hash_token(INVITATION),
        invited_by=owner,
    )


def assert_no_token(log: str) -> None:
    for token in TOKENS:
        assert token not in log and quote(token, safe="") not in log, log
    assert "/invitations/[redacted]/" in log, log  # the lines themselves are there


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        ('"GET /invitations/abc-DEF_123/ HTTP/1.1" 200', '"GET /invitations/[redacted]/ HTTP/1.1" 200'),
        (
            "GET /accounts/login/?next=%2Finvitations%2Fabc%2F&x=1",
            "GET /accounts/login/?next=%2Finvitations%2F[redacted]%2F&x=1",
        ),
        ("next=%252Finvitations%252Fabc%252F", "next=%252Finvitations%252F[redacted]%252F"),
        ("/accounts/password/reset/key/1-abc-123/", "/accounts/password/reset/key/[redacted]/"),
        (
            "%2Faccounts%2Fpassword%2Freset%2Fkey%2F1-abc%2F",
            "%2Faccounts%2Fpassword%2Freset%2Fkey%2F[redacted]%2F",
        ),
        ("/accounts/confirm-email/MQ%3A1u2%3Aabc/", "/accounts/confirm-email/[redacted]/"),
        ("Not Found: /invitations/abc/", "Not Found: /invitations/[redacted]/"),
        ("GET /v1/files/file-abc HTTP/1.1", "GET /v1/files/file-abc HTTP/1.1"),
    ],
)
def test_secrets_are_cut_from_urls_however_encoded(line: str, redacted: str) -> None:
    from apps.core.redaction import redact_url_secrets

    assert redact_url_secrets(line) == redacted


@contextmanager
def console_output() -> Iterator[io.StringIO]:
    """What the configured console handler (saas/settings.py, LOGGING) writes, for the duration."""
    [console] = [handler for handler in logging.getLogger().handlers if handler.name == "console"]
    assert isinstance(console, logging.StreamHandler)
    output = io.StringIO()
    previous = console.setStream(output)
    try:
        yield output
    finally:
        console.setStream(previous)


def test_djangos_request_lines_carry_no_token(client: Any, alice_org: Any) -> None:
    invitation(alice_org)

    with console_output() as output:
        statuses = [client.get(path).status_code for path in paths()]

    assert statuses[0] == 200 and statuses[1] == 404
    assert "Not Found: /invitations/[redacted]/" in output.getvalue()
    assert_no_token(output.getvalue())


def web_command(port: int) -> list[str]:
    """The web command of `make run` (scripts/run.py), on `port`, with fewer threads."""
    spec = importlib.util.spec_from_file_location("modelworks_run", ROOT / "scripts" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return [*run.web_command(str(port)), "--workers", "1", "--threads", "4"]


def test_the_gunicorn_access_log_carries_no_token(transactional_db: None, alice_org: Any) -> None:
    invitation(alice_org)
    port = free_port()
    web = Process(web_command(port), worker_env(), "gunicorn-redaction")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert web.process.poll() is None, web.log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, interval=0.5, message="gunicorn did not start")
        # The pages after an invitation link carry it in their Referer.
        referer = {"Referer": f"{url}/invitations/{INVITATION}/"}
        statuses = [httpx.get(url + path, headers=referer, timeout=30).status_code for path in paths()]
    finally:
        web.stop()

    assert statuses[0] == 200, statuses
    log = web.log.read_text()
    assert '"GET /invitations/[redacted]/ HTTP/1.1" 200' in log, log
    assert_no_token(log)
