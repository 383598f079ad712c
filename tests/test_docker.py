"""The Docker image and docker-compose.yml, checked by reading them (Docker does not run here): no
local secrets in the image, the web port only for the TLS proxy, and every gunicorn (`make run`'s
too) with a keep-alive that outlives a load balancer's and an access log without tokens."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

# The usual idle timeout of what stands in front (AWS ALB's default, nginx's keepalive_timeout).
BALANCER_IDLE_SECONDS = 60


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


# --- The build context ------------------------------------------------------------------------------


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `**` any depth, `*` and `?` within one name."""
    parts = re.split(r"(\*\*|\*|\?)", glob.strip().strip("/"))
    wildcards = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part) or re.escape(part) for part in parts))


def dockerignored(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last pattern that matches it or one
    of its folders decides, and `!` patterns take paths back in."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern(pattern.removeprefix("!"))
        if any(regex.fullmatch("/".join(parts[:depth])) for depth in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def test_the_image_never_holds_local_secrets() -> None:
    for secret in (
        ".env",
        ".env.production",
        ".env.local",
        "var/secret_key",
        "var/field_encryption_key",
        "var/postgres/base/1/1259",
        "var/media/files/org-1/file-1",
    ):
        assert dockerignored(secret), secret
    for needed in (
        ".env.example",
        "saas/settings.py",
        "saas/gunicorn_conf.py",
        "apps/core/crypto.py",
        "static/css/app.css",
        "manage.py",
    ):
        assert not dockerignored(needed), needed


# --- The web port -------------------------------------------------------------------------------------


def test_only_the_loopback_reaches_a_published_port() -> None:
    """The web service believes X-Forwarded-For from its TLS proxy: a port published on every
    interface would let any client send its own."""
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", (name, port)
    assert services["web"]["ports"] == ["127.0.0.1:8000:8000"]


# --- gunicorn -------------------------------------------------------------------------------------------


def run_py_command() -> list[str]:
    spec = importlib.util.spec_from_file_location("modelworks_run", ROOT / "scripts" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return list(run.web_command("8000"))


def compose_command() -> list[str]:
    shell, flag, script = shlex.split(compose()["services"]["web"]["command"])
    assert (shell, flag) == ("sh", "-c")
    [gunicorn] = [part for part in script.split("&&") if part.strip().startswith("gunicorn")]
    return shlex.split(gunicorn)


def dockerfile_command() -> list[str]:
    [cmd] = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    return list(json.loads(cmd.removeprefix("CMD ")))


def gunicorn_config(command: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings gunicorn itself derives from `command` (its config file included)."""
    from gunicorn.app.wsgiapp import WSGIApplication

    assert command[0].endswith("gunicorn"), command
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["gunicorn", *command[1:]])
    return WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg


@pytest.mark.parametrize("source", [run_py_command, compose_command, dockerfile_command])
def test_every_gunicorn_outlives_the_balancers_idle_timeout_and_redacts_its_log(
    source: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = gunicorn_config(source(), monkeypatch)

    assert config.keepalive > BALANCER_IDLE_SECONDS
    assert config.worker_class_str == "gthread"  # the sync worker ignores keep-alive
    assert config.accesslog == "-"
    assert config.logger_class.__name__ == "RedactingLogger"
