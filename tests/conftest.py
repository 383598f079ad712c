"""Shared fixtures: personas, a network guard, a real Celery worker, scaled-down timings.

alice owns an organization, bob is her teammate (member), carol is an outsider with her own
organization. Every endpoint and page test checks that carol gets 404 for alice's objects. erin
is an admin of alice's organization, for what only owners and admins may do.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pytest_env import SCALED_ENV

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"

# --- Network guard: nothing leaves the machine ----------------------------------------------------
_real_connect = socket.socket.connect


def _is_loopback(address: Any) -> bool:
    if isinstance(address, str | bytes):  # Unix socket
        return True
    host = address[0]
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    try:
        import ipaddress

        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise AssertionError(f"test tried to connect outside the machine: {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


# --- Django settings for tests --------------------------------------------------------------
@pytest.fixture(autouse=True)
def _test_settings(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.ACCOUNT_RATE_LIMITS = False


@pytest.fixture(scope="session")
def _test_redis() -> Any:
    from django.conf import settings
    from redis import Redis

    return Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5)


@pytest.fixture(autouse=True)
def _fresh_redis_state(_test_redis: Any) -> None:
    """Every test starts with no rate-limit counts in Redis (ours, and allauth's in the cache):
    every test client comes from 127.0.0.1, so one test's failed authentications would count
    against the next. And with a reaper that has never run: one that last ran in an earlier test
    would take the gap for a frozen machine. Only these keys go; the queues and the cache's other
    entries stay."""
    for pattern in ("mw:rl:*", "mw:*:allauth:rl:*", "mw:*:reaper:*"):
        keys = list(_test_redis.scan_iter(match=pattern, count=1000))
        if keys:
            _test_redis.delete(*keys)


# --- Personas ---------------------------------------------------------------------------------
def make_user(email: str, password: str = PASSWORD) -> Any:
    from allauth.account.models import EmailAddress

    from apps.accounts.models import User

    user = User.objects.create_user(email, password)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


@pytest.fixture
def billing_plans(db: None) -> None:
    """The plans and prices a migration seeds (every new organization starts on the Free plan).
    Transactional tests empty every table when they end, these included: put them back."""
    from apps.billing.models import Plan, Price
    from apps.billing.seed import seed_billing

    if not Plan.objects.exists():
        seed_billing(Plan, Price)


@pytest.fixture
def alice(billing_plans: None) -> Any:
    from apps.projects import onboarding

    user = make_user("alice@example.com")
    onboarding.create_organization(user, "Acme")
    return user


@pytest.fixture
def alice_org(alice: Any) -> Any:
    return alice.memberships.get().organization


@pytest.fixture
def alice_project(alice_org: Any) -> Any:
    return alice_org.projects.get()


@pytest.fixture
def bob(alice_org: Any) -> Any:
    from apps.accounts.models import Membership, Role

    user = make_user("bob@example.com")
    Membership.objects.create(organization=alice_org, user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def erin(alice_org: Any) -> Any:
    from apps.accounts.models import Membership, Role

    user = make_user("erin@example.com")
    Membership.objects.create(organization=alice_org, user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def carol(billing_plans: None) -> Any:
    from apps.projects import onboarding

    user = make_user("carol@example.com")
    onboarding.create_organization(user, "Outsiders Inc")
    return user


@pytest.fixture
def carol_project(carol: Any) -> Any:
    return carol.memberships.get().organization.projects.get()


@pytest.fixture
def alice_key(alice: Any, alice_project: Any) -> str:
    from apps.projects import actions

    _, raw = actions.create_api_key(alice_project, "test", alice)
    return raw


@pytest.fixture
def carol_key(carol: Any, carol_project: Any) -> str:
    from apps.projects import actions

    _, raw = actions.create_api_key(carol_project, "test", carol)
    return raw


def login(client: Any, user: Any) -> Any:
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.fixture
def alice_client(client: Any, alice: Any) -> Any:
    return login(client, alice)


@pytest.fixture
def carol_client(client: Any, carol: Any) -> Any:
    return login(client, carol)


@pytest.fixture
def api(alice_key: str) -> Any:
    """A DRF test client authenticated with alice's API key."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice_key}")
    return client


@pytest.fixture
def carol_api(carol_key: str) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {carol_key}")
    return client


# --- Billing ---------------------------------------------------------------------------------------
def billed(job: Any) -> dict[str, int]:
    """A job's billed quantity per unit. Work is billed as it is done (checkpoints, batch chunks, the
    end of each attempt), so a unit may have several records: each must start where the last ended
    (never the same units twice, no gap), and the job's running totals must agree with them."""
    totals: dict[str, int] = {}
    cost = 0
    for record in job.usage.order_by("unit", "start"):
        assert record.start == totals.get(record.unit, 0), f"{record.unit} billed from {record.start}"
        totals[record.unit] = record.start + record.quantity
        cost += record.cost
    job.refresh_from_db(fields=["billed_usage", "billed_cost"])
    assert job.billed_usage == totals and job.billed_cost == cost
    return totals


# --- A real Celery worker ------------------------------------------------------------------------
def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a worker that shares the test database and Redis."""
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    name = connection.settings_dict["NAME"]  # the test database, once pytest-django set it up
    host = db["HOST"]
    if host.startswith("/"):
        url = f"postgres://{db['USER']}@/{name}?host={host}&port={db['PORT']}"
    else:
        url = f"postgres://{db['USER']}@{host}:{db['PORT'] or 5432}/{name}"
    env = dict(os.environ)
    env.update(SCALED_ENV)
    env.update(
        DATABASE_URL=url,
        REDIS_URL=settings.REDIS_URL,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR),
        PYTHONUNBUFFERED="1",
    )
    # One BLAS thread per worker: on a 2-core machine shared with the test process, more threads
    # only contend (an epoch of the tiny model ran ~25x faster this way).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


class Worker:
    """A `celery worker` subprocess; tests kill only the PIDs it recorded."""

    def __init__(
        self,
        queues: str = "gpu,serve,default",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        name: str | None = None,
        log: Path | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.name = name or f"test-{os.getpid()}-{time.monotonic_ns()}@%h"
        self.log = log or ROOT / "var" / "test-logs" / f"worker-{time.monotonic_ns()}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "saas",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            "prefork",
            "-n",
            self.name,
            "-l",
            "info",
            "--without-mingle",
            "--without-gossip",
            *args,
        ]
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env or worker_env(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-4000:]}")
            if b" ready." in self.log.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log.read_text()[-4000:]}")

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        # What is left of the group: all of it after a timeout, or the pool children a test's
        # SIGKILL of the main process orphaned, which would go on computing into later tests.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait()
        self._log_file.close()


def purge_queues() -> None:
    from saas.celery import app

    with app.connection_for_write() as conn:
        for queue in ("gpu", "serve", "default"):
            conn.default_channel.queue_purge(queue)


@pytest.fixture
def celery_worker(transactional_db: None) -> Iterator[Worker]:
    """A real worker on both queues, against the test database and Redis."""
    with running_worker() as worker:
        yield worker


@contextlib.contextmanager
def running_worker(extra: dict[str, str] | None = None) -> Iterator[Worker]:
    """A real worker on both queues with `extra` in its environment, stopped at the end."""
    purge_queues()
    worker = Worker(env=worker_env(extra))
    try:
        yield worker
    finally:
        worker.stop()


def paced(train: float = 0.0, decode: float = 0.0) -> dict[str, str]:
    """A worker's environment so that each training step and each decoding step of its takes at
    least `train` and `decode` seconds (tests/paced.py): work sized to outlast something then
    does so on any machine."""
    return {
        "CELERY_WORKER_INCLUDE": "tests.paced",
        "TEST_MIN_TRAIN_STEP_SECONDS": str(train),
        "TEST_MIN_DECODE_STEP_SECONDS": str(decode),
    }


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    """Each test stores its blobs in its own folder, so it can see exactly what was written (and
    unpacks exported weights into its own model cache)."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    settings.MODEL_CACHE_DIR = tmp_path / "models"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    return root


@pytest.fixture
def catalog(db: None) -> None:
    """Transactional tests empty every table, the seeded catalog included: put it back."""
    from apps.registry.catalog import sync_catalog
    from apps.registry.models import Model

    sync_catalog(Model)


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout}s")


# --- Tiny models and data for job tests ---------------------------------------------------------

TINY_DIR = ROOT / "var" / "test-models"


@pytest.fixture(scope="session")
def tiny_bert_dir() -> Path:
    """A 2-layer BERT encoder built from a config, shared by the session (built once)."""
    pytest.importorskip("torch")
    from tests.tiny_models import build_tiny_bert

    path = TINY_DIR / "tiny-bert"
    if not (path / "model.safetensors").exists():
        build_tiny_bert(path)
    return path


@pytest.fixture
def tiny_base(db: None, tiny_bert_dir: Path) -> Any:
    """A catalog base model backed by the tiny BERT, fine-tunable for classification."""
    from apps.registry.models import Model

    return Model.objects.create(
        name="tiny-bert",
        task="classification",
        artifact_key=f"local:{tiny_bert_dir}",
        context_length=128,
        is_fine_tunable=True,
        limits={"max_seq_length": 128, "methods": ["classification"], "servable": False},
    )


@pytest.fixture
def student_base(tiny_base: Any) -> Any:
    """The tiny BERT base, open to distillation too: a student for the distillation tests."""
    tiny_base.limits = {**tiny_base.limits, "methods": ["classification", "distillation"]}
    tiny_base.save(update_fields=["limits"])
    return tiny_base


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    pytest.importorskip("torch")
    from tests.tiny_models import build_tiny_llama

    path = TINY_DIR / "tiny-llama"
    if not (path / "model.safetensors").exists():
        build_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir() -> Path:
    pytest.importorskip("torch")
    from tests.tiny_models import build_tiny_gpt2

    path = TINY_DIR / "tiny-gpt2"
    if not (path / "model.safetensors").exists():
        build_tiny_gpt2(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier_dir() -> Path:
    pytest.importorskip("torch")
    from tests.tiny_models import build_tiny_bert

    path = TINY_DIR / "tiny-classifier"
    if not (path / "model.safetensors").exists():
        build_tiny_bert(path, labels=["billing", "bug", "praise"], seed=1)
    return path


@pytest.fixture
def tiny_chat(db: None, tiny_gpt2_dir: Path) -> Any:
    """A servable generation model backed by the tiny GPT-2."""
    from apps.registry.models import Model

    return Model.objects.create(
        name="tiny-gpt2",
        task="generation",
        artifact_key=f"local:{tiny_gpt2_dir}",
        context_length=256,
        limits={"servable": True},
    )


@pytest.fixture
def tiny_classifier(alice_org: Any, tiny_classifier_dir: Path) -> Any:
    """alice's fine-tuned classifier (a tiny BERT with three labels)."""
    from apps.registry.models import Model

    return Model.objects.create(
        name="ft:tiny-bert:acme:tickets:ftjob-1",
        organization=alice_org,
        task="classification",
        artifact_key=f"local:{tiny_classifier_dir}",
        labels=["billing", "bug", "praise"],
        context_length=128,
        limits={"servable": True},
    )


POSITIVE = ["great", "wonderful", "amazing", "excellent", "happy", "good", "loved"]
NEGATIVE = ["terrible", "awful", "horrible", "bad", "sad", "hated", "poor"]


def sentiment_csv(rows: int = 120, seed: int = 0) -> bytes:
    """A learnable toy set: the label follows the sentiment word in the sentence."""
    import random

    rng = random.Random(seed)
    lines = ["text,label"]
    for i in range(rows):
        positive = i % 2 == 0
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        filler = " ".join(
            rng.choice(["the", "movie", "was", "really", "quite", "a", "day"])
            for _ in range(rng.randint(1, 6))
        )
        lines.append(f"{filler} {word} {filler},{'positive' if positive else 'negative'}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """After the session, end connections other processes (killed workers, server threads) left
    open on the test database, so it can be dropped."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def pro(alice_org: Any, catalog: None) -> Any:
    """alice's organization on the Pro plan (the Free plan leaves out `openai:*`)."""
    return use_plan(alice_org, "pro")


def use_plan(organization: Any, slug: str) -> Any:
    """Puts an organization on a plan (the Free plan allows one fine-tune at a time)."""
    from apps.billing.models import Plan
    from apps.billing.quotas import subscription_for

    subscription = subscription_for(organization)
    subscription.plan = Plan.objects.get(slug=slug)
    subscription.save(update_fields=["plan"])
    return subscription
