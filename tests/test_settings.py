"""Fail-closed configuration: outside development (DEBUG off) a process does not start without its
secrets, and says which one is missing. `make run` (DEBUG on) starts without them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# What every Django process does first: load the settings.
LOAD_SETTINGS = "import django; django.setup(); print('started')"


def start(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "FIELD_ENCRYPTION_KEY")}
    return subprocess.run(
        [sys.executable, "-c", LOAD_SETTINGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "DJANGO_SETTINGS_MODULE": "saas.settings", **env},
    )


SECRET = "a-real-secret-" + "x" * 50
FERNET_KEY = "dGVzdHMtb25seS1maWVsZC1lbmNyeXB0aW9uLWtleSE="


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FIELD_ENCRYPTION_KEY": FERNET_KEY}, "SECRET_KEY is not set, or is still an example value."),
        (
            {"SECRET_KEY": "", "FIELD_ENCRYPTION_KEY": FERNET_KEY},
            "SECRET_KEY is not set, or is still an example value.",
        ),
        (
            {
                "SECRET_KEY": "change-me-to-a-long-random-string-of-at-least-fifty-characters-0123456789",
                "FIELD_ENCRYPTION_KEY": FERNET_KEY,
            },
            "SECRET_KEY is not set, or is still an example value.",
        ),
        (
            {"SECRET_KEY": SECRET},
            "FIELD_ENCRYPTION_KEY is not set. It encrypts organizations' own OpenAI keys",
        ),
        (
            {"SECRET_KEY": SECRET, "FIELD_ENCRYPTION_KEY": "not-a-fernet-key"},
            "FIELD_ENCRYPTION_KEY is not a Fernet key (32 url-safe base64-encoded bytes).",
        ),
    ],
)
def test_without_debug_a_missing_secret_stops_the_start(env: dict[str, str], message: str) -> None:
    result = start(DEBUG="false", **env)

    assert result.returncode != 0
    assert "started" not in result.stdout
    assert f"django.core.exceptions.ImproperlyConfigured: {message}" in result.stderr, result.stderr[-2000:]


def test_with_both_secrets_the_start_goes_on() -> None:
    result = start(DEBUG="false", SECRET_KEY=SECRET, FIELD_ENCRYPTION_KEY=FERNET_KEY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "started" in result.stdout


def test_development_starts_without_secrets() -> None:
    """`make run` sets DEBUG and keeps both secrets under var/; a bare DEBUG start works too."""
    result = start(DEBUG="true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "started" in result.stdout


def test_an_unknown_sharding_stops_the_start() -> None:
    result = start(DEBUG="true", TRAINING_SHARDING="zero3")
    assert result.returncode != 0
    assert (
        "django.core.exceptions.ImproperlyConfigured: TRAINING_SHARDING must be one of auto, ddp, fsdp, "
        "not 'zero3'" in result.stderr
    ), result.stderr[-2000:]
