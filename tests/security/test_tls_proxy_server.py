"""T32 on a real server: gunicorn with the production settings of .env.example, behind a
TLS-terminating proxy that says `X-Forwarded-Proto: https` (BEHIND_TLS_PROXY=true).

HTTPS requests get HSTS with the configured max-age and includeSubDomains; plain HTTP is
redirected to https and gets no HSTS (browsers ignore it there). docker-compose's healthcheck of the
web container passes against the same server.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.chaos.conftest import Process, free_port
from tests.conftest import ROOT, Worker, wait_for, worker_env
from tests.test_deploy import production_env

# The server uses the test database (for /healthz): that marker has pytest-django create it.
pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def production() -> dict[str, str]:
    env = production_env()
    assert env["BEHIND_TLS_PROXY"] == "true" and env["DEBUG"] == "false"
    return env


@contextmanager
def gunicorn(env: dict[str, str], directory: Path) -> Iterator[str]:
    """gunicorn on 127.0.0.1 with `env`, on the test database and Redis; yields its URL."""
    tests = worker_env()
    env = {
        **env,
        "DATABASE_URL": tests["DATABASE_URL"],
        "REDIS_URL": tests["REDIS_URL"],
        "VAR_DIR": str(directory),
        "MEDIA_ROOT": str(directory / "media"),
        "STATIC_ROOT": str(directory / "static"),
        # No collectstatic here: pages find their static files the way tests and `make run` do.
        "WHITENOISE_USE_FINDERS": "true",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    # gunicorn itself believes X-Forwarded-Proto from 127.0.0.1 (its forwarded_allow_ips default).
    # In production the proxy connects from another host, where it does not: only Django's
    # SECURE_PROXY_SSL_HEADER decides, so here gunicorn trusts no front end either.
    web = Process(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "saas.wsgi:application",
            "-b",
            f"127.0.0.1:{port}",
            "-k",
            "gthread",
            "-w",
            "1",
            "--threads",
            "4",
            "--timeout",
            "60",
            "--forwarded-allow-ips",
            "192.0.2.1",
        ],
        env,
        "gunicorn-tls",
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if web.process.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{web.log.read_text()[-3000:]}")
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            return True
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=120, interval=0.5, message="gunicorn did not start")
        yield url
    finally:
        web.stop()


@pytest.fixture(scope="module")
def server(django_db_setup: None, production: dict[str, str], tmp_path_factory: Any) -> Iterator[str]:
    """The production configuration behind the proxy (shared by the tests of this module)."""
    with gunicorn(production, tmp_path_factory.mktemp("tls")) as url:
        yield url


def host(production: dict[str, str]) -> str:
    return production["ALLOWED_HOSTS"].split(",")[0]


def test_https_through_the_proxy_gets_hsts(server: str, production: dict[str, str]) -> None:
    expected = f"max-age={int(production['SECURE_HSTS_SECONDS'])}; includeSubDomains"
    if production["SECURE_HSTS_PRELOAD"] == "true":
        expected += "; preload"
    headers = {"Host": host(production), "X-Forwarded-Proto": "https"}
    response = httpx.get(f"{server}/healthz", headers=headers, timeout=30)
    # 503 only for want of a worker heartbeat (no worker runs here); the headers are the point.
    checks = response.json()["checks"]
    assert checks["database"] == {"ok": True} and checks["redis"] == {"ok": True}, response.text
    assert response.headers["strict-transport-security"] == expected
    page = httpx.get(f"{server}/accounts/login/", headers=headers, timeout=30)
    assert page.status_code == 200
    assert page.headers["strict-transport-security"] == expected
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    csrf = page.headers["set-cookie"]
    assert csrf.startswith("csrftoken=") and "Secure" in csrf and "SameSite=Lax" in csrf


def test_plain_http_is_redirected_to_https(server: str, production: dict[str, str]) -> None:
    assert production["SECURE_SSL_REDIRECT"] == "true"
    for headers in ({"Host": host(production)}, {"Host": host(production), "X-Forwarded-Proto": "http"}):
        response = httpx.get(f"{server}/healthz", headers=headers, timeout=30)
        assert response.status_code == 301
        assert response.headers["location"] == f"https://{host(production)}/healthz"
        assert "strict-transport-security" not in response.headers


def test_an_unknown_host_is_refused(server: str, production: dict[str, str]) -> None:
    headers = {"Host": "evil.example", "X-Forwarded-Proto": "https"}
    assert httpx.get(f"{server}/healthz", headers=headers, timeout=30).status_code == 400


def test_without_the_proxy_setting_a_forwarded_proto_is_not_believed(
    django_db_setup: None, production: dict[str, str], tmp_path: Path
) -> None:
    """The control of the tests above: any client can send X-Forwarded-Proto. Only a server told
    that a TLS proxy stands in front (BEHIND_TLS_PROXY) may take it for a secure request."""
    with gunicorn({**production, "BEHIND_TLS_PROXY": "false"}, tmp_path) as url:
        headers = {"Host": host(production), "X-Forwarded-Proto": "https"}
        response = httpx.get(f"{url}/healthz", headers=headers, timeout=30)
        assert response.status_code == 301
        assert response.headers["location"] == f"https://{host(production)}/healthz"
        assert "strict-transport-security" not in response.headers


# --- docker-compose's healthcheck of the web container ---------------------------------------------
COMPOSE_URL = "http://127.0.0.1:8000"


def compose_healthcheck() -> list[str]:
    """The web service's healthcheck command, exactly as docker-compose.yml has it."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = compose["services"]["web"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], test
    return list(test[2:])


def run_healthcheck(
    arguments: list[str], server: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Runs the command with this machine's Python, against `server` instead of the container's
    port 8000 (the one change), in the environment the container gets from .env."""
    joined = "\0".join(arguments)
    assert joined.count(COMPOSE_URL) == 1, arguments
    command = [sys.executable, *joined.replace(COMPOSE_URL, server).split("\0")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_the_compose_healthcheck_passes_with_the_production_settings(
    server: str, production: dict[str, str]
) -> None:
    # /healthz also wants a worker's heartbeat: a real worker, as in the compose file.
    worker = Worker()
    try:
        headers = {"Host": host(production), "X-Forwarded-Proto": "https"}
        healthy = lambda: httpx.get(f"{server}/healthz", headers=headers, timeout=30).status_code == 200  # noqa: E731
        wait_for(healthy, timeout=60, message="no worker heartbeat reached /healthz")
        result = run_healthcheck(compose_healthcheck(), server, production)
        assert result.returncode == 0, result.stderr
        # The control: the former command, without the proxy's headers, is refused (400, bad Host).
        former = ["-c", f"import urllib.request; urllib.request.urlopen('{COMPOSE_URL}/healthz')"]
        result = run_healthcheck(former, server, production)
        assert result.returncode == 1 and "HTTP Error 400: Bad Request" in result.stderr, result.stderr
    finally:
        worker.stop()
