"""Stripe for billing tests: localstripe (a stateful fake Stripe) behind our own fake.

localstripe pins old libraries, so it lives in its own virtualenv, created on first use under
`var/localstripe-venv` (about 15 s, once) and started once per session on a free port. Our fake
(`tests/fake_stripe.py`) answers what localstripe lacks and forwards the rest to it; the real
`stripe` SDK is pointed at the fake through `STRIPE_API_BASE`.
"""

from __future__ import annotations

import fcntl
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Worker, purge_queues, wait_for, worker_env
from tests.fake_stripe import FakeStripe, LocalStripe, sign

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "var" / "localstripe-venv"
LOCALSTRIPE = "localstripe==1.15.10"
API_KEY = "sk_test_modelworks"
WEBHOOK_SECRET = "whsec_test_modelworks"

# Serve on 127.0.0.1 only (its own launcher binds "::"), and never write its state to
# /tmp/localstripe.pickle (shared by every localstripe on the machine).
LAUNCH = """
import sys
import localstripe.resources as resources
resources.Store.dump_to_disk = lambda self: None
from aiohttp import web
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def ensure_localstripe_venv() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "localstripe-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions may start at once
        if not stamp.exists() or stamp.read_text() != LOCALSTRIPE:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", LOCALSTRIPE],
                check=True,
            )
            stamp.write_text(LOCALSTRIPE)
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    python = ensure_localstripe_venv()
    port = free_port()
    (ROOT / "var" / "test-logs").mkdir(parents=True, exist_ok=True)
    log = open(ROOT / "var" / "test-logs" / f"localstripe-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen([str(python), "-c", LAUNCH, str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            LocalStripe(url, API_KEY).get("/v1/balance")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"localstripe did not start; see {log.name}") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def fake_stripe_server(localstripe_url: str) -> Iterator[FakeStripe]:
    fake = FakeStripe(localstripe_url)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def localstripe(localstripe_url: str) -> LocalStripe:
    return LocalStripe(localstripe_url, API_KEY)


@pytest.fixture
def fake_stripe(
    billing_plans: None, settings: Any, fake_stripe_server: FakeStripe, localstripe: LocalStripe
) -> FakeStripe:
    """A clean Stripe for each test, with the Pro and Team prices, and settings pointing at it."""
    from apps.billing.models import Plan

    fake_stripe_server.reset()
    localstripe.flush()
    settings.STRIPE_SECRET_KEY = API_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = fake_stripe_server.url
    settings.SITE_URL = "http://testserver"
    for slug, price, cents in (("pro", "price_pro", 4900), ("team", "price_team", 19900)):
        localstripe.create_price(price, cents, slug.title())
        Plan.objects.filter(slug=slug).update(stripe_price_id=price)
    return fake_stripe_server


def signed_post(client: Any, payload: bytes, header: str | None) -> Any:
    extra = {"HTTP_STRIPE_SIGNATURE": header} if header is not None else {}
    return client.generic(
        "POST", "/billing/stripe/webhook", payload, content_type="application/json", **extra
    )


@pytest.fixture
def deliver(client: Any) -> Callable[..., Any]:
    """Delivers an event to the webhook as Stripe does: JSON body, signed with the endpoint secret."""

    def post(event: dict[str, Any], *, timestamp: int | None = None, secret: str = WEBHOOK_SECRET) -> Any:
        payload = json.dumps(event, indent=2).encode()
        return signed_post(client, payload, sign(payload, secret, timestamp))

    return post


@pytest.fixture
def deliver_and_apply(deliver: Callable[..., Any]) -> Callable[..., Any]:
    """Delivers an event, then applies it here as the worker's task would (called as a function).
    For tests about what an event leads to rather than how it gets applied; those use `billing_worker`."""
    from workers.tasks import process_stripe_event

    def post(event: dict[str, Any], **kwargs: Any) -> Any:
        response = deliver(event, **kwargs)
        assert response.status_code == 200, response.content
        process_stripe_event(event["id"])
        return response

    return post


def start_billing_worker(fake: FakeStripe, extra_env: dict[str, str] | None = None) -> Worker:
    """A real worker on the default queue, with our Stripe settings pointing at the fake."""
    purge_queues()
    env = {"STRIPE_SECRET_KEY": API_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "STRIPE_API_BASE": fake.url}
    return Worker(queues="default", env=worker_env({**env, **(extra_env or {})}))


@pytest.fixture(scope="module")
def _module_billing_worker(django_db_setup: None, fake_stripe_server: FakeStripe) -> Iterator[Worker]:
    # One per module: starting a worker costs seconds, and every event it applies is its own.
    worker = start_billing_worker(fake_stripe_server)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def billing_worker(transactional_db: None, fake_stripe: FakeStripe, _module_billing_worker: Worker) -> Worker:
    """A real Celery worker that applies the events the webhook records (it needs committed rows)."""
    return _module_billing_worker


def processed(event_id: str, timeout: float = 30) -> Any:
    """The event's row once a worker has applied it."""
    from apps.billing.models import StripeEvent

    return wait_for(
        lambda: StripeEvent.objects.filter(event_id=event_id, processed_at__isnull=False).first(),
        timeout=timeout,
        message=f"event {event_id} was not processed",
    )


@pytest.fixture
def pro_alice(
    alice_client: Any,
    alice_org: Any,
    fake_stripe: FakeStripe,
    localstripe: LocalStripe,
    deliver_and_apply: Callable[..., Any],
) -> dict[str, Any]:
    """alice's organization on Pro, through Checkout and its webhook. Returns the completed session."""
    response = alice_client.post("/billing/checkout", {"plan": "pro"})
    assert response.status_code == 303, response.content.decode()[:2000]
    session = fake_stripe.complete_checkout(response["Location"].rsplit("/", 1)[1])
    deliver_and_apply(fake_stripe.add_event("checkout.session.completed", session, delivered=True))
    # ... and, as Stripe does, the first invoice's
    invoice = localstripe.get(f"/v1/subscriptions/{session['subscription']}")["latest_invoice"]
    deliver_and_apply(fake_stripe.add_event("invoice.paid", {"id": invoice}, delivered=True))
    return session
