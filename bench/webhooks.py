"""Stripe webhook latency (docs/reliability.md, T20): the handler that only verifies, records and
enqueues, next to the old one that applied each event in the request, measured in the same run.

Starts its own stack with bench/load.py's helpers: a fresh `mw_bench_webhooks` database (PostgreSQL
on 127.0.0.1:5432 when it answers, else the embedded server under var/), a private redis-server,
one Celery worker on `default` (it applies what the new handler queues), a fake Stripe
(tests/fake_stripe.py, in its own process) that serves each organization's subscription, and
gunicorn (gthread, as bench/load.py runs it). Five organizations on Pro, each a Stripe customer.
--stripe-latency makes each fake Stripe answer take as long as a real API round trip: the old
handler waited for it inside the request, the new one leaves it to the worker.

The baseline: gunicorn serves `application` below, the project's own WSGI app plus one bench-only
route, /bench/stripe/webhook-sync, which runs what the handler did before: verify, record, then lock
the event and the organization, re-fetch the subscription from Stripe and apply it, in the request
(`apply_event_now`, the code the worker runs). The new handler is the real /billing/stripe/webhook.
Both get the same load: `customer.subscription.updated` events shaped like the recorded fixtures,
each with its own id, spread over the five organizations, signed before the run, sent open-loop at
--rate events/s for --duration s (a request that waits for a free client counts from when it was
due, so a slow server cannot hide its queue). Then the bench waits until the worker has applied
every event the new handler queued, and prints how long that took.

    python bench/webhooks.py [--rate 20] [--duration 30] [--stripe-latency 0.25]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/webhooks.py` puts bench/, not the root, on the path

from bench.load import (  # noqa: E402
    GUNICORN_THREADS,
    GUNICORN_WORKERS,
    database_url,
    stack_env,
    start_gunicorn,
    start_redis,
    start_worker,
    stop_stack,
    wait_until,
)

DATABASE = "mw_bench_webhooks"
LOGS = ROOT / "var" / "bench-webhooks"
TEMPLATE = (
    ROOT
    / "tests"
    / "billing"
    / "fixtures"
    / "entitlement_lifecycle"
    / "04_customer.subscription.updated.json"
)
SECRET = "whsec_bench_webhooks"
ORGANIZATIONS = 5
CLIENT_THREADS = 32
NEW, OLD = "/billing/stripe/webhook", "/bench/stripe/webhook-sync"

SEED = r"""
import json, sys, django
django.setup()
from apps.projects import onboarding
from apps.accounts.models import User
from apps.billing.models import Plan, Subscription
from apps.billing.quotas import subscription_for
price, customers = sys.argv[1], json.loads(sys.argv[2])
Plan.objects.filter(slug="pro").update(stripe_price_id=price)
for i, customer in enumerate(customers):
    org = onboarding.create_organization(User.objects.create_user(f"bench{i}@example.com", "bench-password-1"), f"Bench {i}")
    Subscription.objects.filter(pk=subscription_for(org).pk).update(stripe_customer_id=customer)
"""

FAKE_STRIPE = r"""
import json, sys, time
from tests.fake_stripe import FakeStripe
fake = FakeStripe()
latency, route = float(sys.argv[1]), fake._route
def slow_route(*args):  # each answer takes as long as a round trip to the real API
    time.sleep(latency)
    return route(*args)
fake._route = slow_route
for obj in json.loads(sys.stdin.read()):
    fake.serve(obj)
print(fake.url, flush=True)
while True:
    time.sleep(3600)
"""


# --- The baseline handler, served by this module's WSGI app only -------------------------------------
def synchronous_webhook(request: Any) -> Any:
    """The handler as it was: the event is applied before the answer."""
    from django.http import JsonResponse

    from apps.billing import stripe_api
    from apps.billing.webhooks import apply_event_now

    try:
        event = stripe_api.construct_event(request.body, request.headers.get("Stripe-Signature"))
    except stripe_api.InvalidWebhook:
        return JsonResponse({"error": "invalid signature"}, status=400)
    try:
        outcome = apply_event_now(event)
    except Exception:  # as before: kept on the event row, 500 so Stripe delivers it again
        return JsonResponse({"received": True, "outcome": "failed"}, status=500)
    return JsonResponse({"received": True, "outcome": outcome})


urlpatterns: list[Any] = []


@functools.cache
def _django_application() -> Any:
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.urls import include, path
    from django.views.decorators.csrf import csrf_exempt
    from django.views.decorators.http import require_POST

    wsgi = get_wsgi_application()
    urlpatterns.extend(
        [
            path(OLD.lstrip("/"), csrf_exempt(require_POST(synchronous_webhook))),
            path("", include("saas.urls")),
        ]
    )
    settings.ROOT_URLCONF = __name__  # read per request
    return wsgi


def application(environ: dict[str, Any], start_response: Any) -> Any:
    """gunicorn's entry point: the project's app, plus the baseline route."""
    return _django_application()(environ, start_response)


# --- The stack ------------------------------------------------------------------------------------
def subscriptions(template: dict[str, Any]) -> list[dict[str, Any]]:
    """One subscription per organization, copies of the fixture's with their own ids."""
    out = []
    for i in range(ORGANIZATIONS):
        obj = json.loads(json.dumps(template["data"]["object"]))
        obj["id"], obj["customer"] = f"sub_bench{i:02d}", f"cus_bench{i:02d}"
        obj["items"]["data"][0]["subscription"] = obj["id"]
        out.append(obj)
    return out


@dataclass
class Stack:
    url: str
    database_url: str
    template: dict[str, Any]
    subscriptions: list[dict[str, Any]]


@contextlib.contextmanager
def stack(stripe_latency: float) -> Iterator[Stack]:
    keep: list[Any] = []
    work = Path(tempfile.mkdtemp(prefix="mw-webhooks-"))
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        db = database_url(keep, DATABASE)
        redis_port, redis = start_redis(work, LOGS)
        processes.append(redis)
        template = json.loads(TEMPLATE.read_text())
        subs = subscriptions(template)
        fake = subprocess.Popen(
            [sys.executable, "-c", FAKE_STRIPE, str(stripe_latency)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        processes.append(fake)  # type: ignore[arg-type]
        assert fake.stdin is not None and fake.stdout is not None
        fake.stdin.write(json.dumps(subs).encode())
        fake.stdin.close()
        stripe_url = fake.stdout.readline().decode().strip()
        env = stack_env(db, redis_port, work)
        env.update(
            STRIPE_SECRET_KEY="sk_test_bench", STRIPE_WEBHOOK_SECRET=SECRET, STRIPE_API_BASE=stripe_url
        )
        print("webhooks: migrating a fresh database ...", flush=True)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=600,
        )
        price = subs[0]["items"]["data"][0]["price"]["id"]
        subprocess.run(
            [sys.executable, "-c", SEED, price, json.dumps([s["customer"] for s in subs])],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=120,
        )
        processes.append(start_worker("default", "bench-webhooks@%h", env, LOGS))
        url = start_gunicorn("bench.webhooks:application", env, LOGS, processes)
        import httpx

        def ready() -> bool:
            # /healthz answers 503 until workers consume every queue; ours consumes `default` only.
            checks = httpx.get(f"{url}/healthz", timeout=5).json()["checks"]
            return bool(checks["database"]["ok"] and checks["redis"]["ok"] and checks["worker"]["count"])

        wait_until(ready, 120, "gunicorn with a worker heartbeat")
        yield Stack(url=url, database_url=db, template=template, subscriptions=subs)
    finally:
        stop_stack(processes, keep, work)


# --- Load -------------------------------------------------------------------------------------------
def signed_events(s: Stack, label: str, count: int) -> list[tuple[str, bytes, str]]:
    """(event id, body, Stripe-Signature) for `count` distinct events, signed now."""
    import stripe

    out = []
    for i in range(count):
        event = json.loads(json.dumps(s.template))
        event["id"] = f"evt_bench_{label}_{i:05d}"
        event["created"] = int(time.time())
        event["data"]["object"] = s.subscriptions[i % len(s.subscriptions)]
        body = json.dumps(event, indent=2).encode()
        out.append(
            (event["id"], body, stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET))
        )
    return out


@dataclass
class Result:
    name: str
    latencies_ms: list[float]
    statuses: Counter[int]
    errors: int
    seconds: float

    def line(self) -> str:
        cuts = statistics.quantiles(self.latencies_ms, n=100) if len(self.latencies_ms) >= 2 else [0.0] * 99
        non_2xx = sum(n for code, n in self.statuses.items() if not 200 <= code < 300) + self.errors
        codes = " ".join(f"{code}:{n}" for code, n in sorted(self.statuses.items()))
        sent = len(self.latencies_ms) + self.errors
        return (
            f"{self.name:<34}{sent:>6}{sent / self.seconds:>8.1f}{cuts[49]:>9.1f}{cuts[98]:>9.1f}"
            f"{max(self.latencies_ms, default=0):>9.1f}{non_2xx:>9}   {codes}"
        )


HEADER = (
    f"{'handler':<34}{'sent':>6}{'ev/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'non-2xx':>9}   statuses"
)


def send(s: Stack, name: str, path: str, events: list[tuple[str, bytes, str]], rate: float) -> Result:
    """Open loop: event i is due at start + i / rate, whether or not earlier ones were answered."""
    import httpx

    local = threading.local()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = [0]
    lock = threading.Lock()

    def post(body: bytes, signature: str, due: float) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=s.url, timeout=30)
        try:
            response = local.client.post(
                path,
                content=body,
                headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
            )
        except httpx.HTTPError:
            with lock:
                errors[0] += 1
            return
        took = (time.monotonic() - due) * 1000
        with lock:
            latencies.append(took)
            statuses[response.status_code] += 1

    began = time.monotonic() + 0.2
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        for i, (_, body, signature) in enumerate(events):
            due = began + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(post, body, signature, due)
    return Result(name, latencies, statuses, errors[0], time.monotonic() - began)


def processed_count(s: Stack, prefix: str) -> int:
    import psycopg

    with psycopg.connect(s.database_url.replace("postgres://", "postgresql://", 1)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM billing_stripeevent WHERE event_id LIKE %s AND processed_at IS NOT NULL",
            (prefix + "%",),
        ).fetchone()
    return int(row[0]) if row else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per handler (default 30)")
    parser.add_argument(
        "--stripe-latency",
        type=float,
        default=0.0,
        help="seconds the fake Stripe takes to answer (default 0; real API calls take ~0.1-0.5)",
    )
    args = parser.parse_args()
    count = int(args.rate * args.duration)
    print(
        f"webhooks: {args.rate:g} events/s for {args.duration:g} s per handler; Stripe answers in "
        f"{args.stripe_latency * 1000:g} ms; gunicorn gthread "
        f"{GUNICORN_WORKERS}x{GUNICORN_THREADS}; one worker -c 1; load before: {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with stack(args.stripe_latency) as s:
        results = []
        for label, name, path in (
            ("old", "old: apply in the request", OLD),
            ("new", "new: verify, record, enqueue", NEW),
        ):
            events = signed_events(s, label, count)
            results.append(send(s, name, path, events, args.rate))
            if label == "old":
                time.sleep(2)
        sent_at = time.monotonic()
        wait_until(
            lambda: processed_count(s, "evt_bench_new_") == count, 300, "the worker applying every event"
        )
        drained = time.monotonic() - sent_at
        print(HEADER)
        for result in results:
            print(result.line())
        print(
            f"\nnew: the worker had applied all {count} queued events {drained:.1f} s after the last was sent "
            f"(old: {processed_count(s, 'evt_bench_old_')}/{count} applied in their requests); "
            f"load after: {os.getloadavg()[0]:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
