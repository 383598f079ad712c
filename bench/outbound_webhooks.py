"""Outbound webhooks (docs/api.md, "Webhooks"): 1,000 events to a receiver that fails half the time
and answers some requests too slowly, through the outbox, the workers and the sweep; next to a
fire-once sender (one POST per event, no retries), measured in the same run.

Starts its own stack with bench/load.py's helpers: a fresh `mw_bench_outbound` database, a private
redis-server, one Celery worker on `default` (4 processes: deliveries wait on the network) and
Celery beat (the sweep that sends retries, every second here). The receiver runs in this process:
each request is answered 500 with probability --fail, else after --slow-delay seconds (past the
2 s delivery timeout here) with probability --slow, else 200 at once.

Figures:
- delivered: events whose receiver saw a 2xx in time, of those emitted; for ours, also every
  delivery row `delivered`. Lost = emitted - delivered.
- wrong ids: requests whose `webhook-id` is not the id of the event in their body, or that carry
  an id never emitted (ours must be 0: every retry carries its event's id).
- seconds from the first event to the last delivery, and attempts per event.
- what writing the event costs the change that causes it: 1,000 transactions that update a job row
  and emit its event, next to the same transactions without the event (the baseline).

    python bench/outbound_webhooks.py [--events 1000] [--fail 0.5] [--slow 0.1] [--slow-delay 2.5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(
        0, str(ROOT)
    )  # `python bench/outbound_webhooks.py` puts bench/, not the root, on the path

import httpx  # noqa: E402

from bench.load import database_url, stack_env, start, start_redis, stop_stack, wait_until  # noqa: E402
from tests.webhooks.receiver import Receiver, Reply  # noqa: E402

DATABASE = "mw_bench_outbound"
LOGS = ROOT / "var" / "bench-outbound-webhooks"
TIMEOUT_SECONDS = 2.0
SETTINGS = {
    "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
    "WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "WEBHOOK_RETRY_MAX_SECONDS": "4",
    "WEBHOOK_SWEEP_SECONDS": "1",
    "WEBHOOK_REPUBLISH_SECONDS": "30",
}

# Runs in a Django process of the stack: one organization and its endpoint, then `count` events, each
# in its own transaction as a job's status change writes it. Prints the endpoint's secret.
SEED = """
import json, sys, time, django
django.setup()
from django.db import transaction
from apps.accounts.models import User
from apps.projects import onboarding
from apps.webhooks import actions

url, count = sys.argv[1], int(sys.argv[2])
user = User.objects.create_user(email="bench@example.com", password="bench-password-1")
organization = onboarding.create_organization(user, "Bench")
project = organization.projects.get()
endpoint, secret = actions.create_endpoint(project, user, name="bench", url=url, event_types=["batch.completed"])
ids = []
for n in range(count):
    with transaction.atomic():
        ids.append(actions.emit(project.pk, "batch.completed", f"batch_bench{n}").public_id)
print(json.dumps({"secret": secret, "ids": ids}))
"""

# The cost on the causing transaction: a job row updated with and without its event, alternating in
# blocks so a busy machine slows both alike. Prints {"with": s, "without": s}.
OUTBOX_COST = """
import json, sys, time, django
django.setup()
from django.db import transaction
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.models import Project
from apps.webhooks import actions

count = int(sys.argv[1])
project = Project.objects.get()
job = Job.objects.create(organization=project.organization, project=project, kind=JobKind.BATCH,
                         status=JobStatus.RUNNING, model_name="", request={})
seconds = {"with": 0.0, "without": 0.0}
for block in range(count // 50):
    for label in ("without", "with") if block % 2 else ("with", "without"):
        started = time.perf_counter()
        for _ in range(50):
            with transaction.atomic():
                Job.objects.filter(pk=job.pk).update(progress={"completed": block})
                if label == "with":
                    actions.emit(project.pk, "batch.completed", job.public_id)
        seconds[label] += time.perf_counter() - started
print(json.dumps(seconds))
"""

DELIVERED = """
import django
django.setup()
from apps.webhooks.models import WebhookAttempt, WebhookDelivery
print(WebhookDelivery.objects.filter(status="delivered", event__type="batch.completed", event__payload__contains="batch_bench").count(),
      WebhookAttempt.objects.count())
"""


def django(env: dict[str, str], code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise SystemExit(f"outbound webhooks: helper failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def policy(rng: random.Random, fail: float, slow: float, slow_delay: float) -> Any:
    def reply() -> Reply:
        draw = rng.random()
        if draw < fail:
            return Reply(500)
        if draw < fail + slow:
            return Reply(200, delay=slow_delay)
        return Reply(200)

    return reply


def in_time(reply: Reply) -> bool:
    return 200 <= reply.status < 300 and reply.delay < TIMEOUT_SECONDS


def fire_once(receiver: Receiver, ids: list[str]) -> tuple[int, float]:
    """The baseline: each event POSTed once, in order, with the same timeout; no retries."""
    started = time.perf_counter()
    delivered = 0
    with httpx.Client(timeout=TIMEOUT_SECONDS) as client:
        for event_id in ids:
            body = json.dumps({"id": event_id, "object": "event", "type": "batch.completed", "data": {}})
            try:
                response = client.post(receiver.url, content=body, headers={"webhook-id": event_id})
            except httpx.TimeoutException:
                continue
            delivered += 200 <= response.status_code < 300
    return delivered, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument(
        "--fail", type=float, default=0.5, help="share of requests answered 500 (default 0.5)"
    )
    parser.add_argument(
        "--slow", type=float, default=0.1, help="share answered after --slow-delay (default 0.1)"
    )
    parser.add_argument(
        "--slow-delay", type=float, default=2.5, help="seconds (default 2.5; the timeout is 2)"
    )
    args = parser.parse_args()
    print(
        f"outbound webhooks: {args.events} events; receiver fails {args.fail:.0%}, answers "
        f"{args.slow:.0%} after {args.slow_delay:g} s (timeout {TIMEOUT_SECONDS:g} s); "
        f"load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    keep: list[Any] = []
    work = Path(tempfile.mkdtemp(prefix="mw-outbound-"))
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        db = database_url(keep, DATABASE)
        redis_port, redis = start_redis(work, LOGS)
        processes.append(redis)
        env = {**stack_env(db, redis_port, work), **SETTINGS}
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        # --- ours: the outbox, a worker with 4 processes, and beat's sweep --------------------------
        with Receiver(policy=policy(random.Random(1), args.fail, args.slow, args.slow_delay)) as receiver:
            celery = [sys.executable, "-m", "celery", "-A", "saas"]
            quiet = ["--without-mingle", "--without-gossip", "-l", "warning"]
            processes.append(
                start([*celery, "worker", "-Q", "default", "-c", "4", *quiet], env, LOGS / "worker.log")
            )
            processes.append(
                start([*celery, "beat", "-l", "warning", "-s", str(work / "beat")], env, LOGS / "beat.log")
            )
            started = time.monotonic()
            seeded = json.loads(django(env, SEED, receiver.url, str(args.events)))
            ids = seeded["ids"]
            emitted_in = time.monotonic() - started

            def all_delivered() -> bool:
                return int(django(env, DELIVERED).split()[0]) == len(ids)

            wait_until(all_delivered, 900, "every delivery")
            took = time.monotonic() - started
            delivered_rows, attempts = (int(x) for x in django(env, DELIVERED).split())
            received = list(receiver.received)
        emitted = set(ids)
        wrong = sum(
            1
            for r in received
            if r.headers.get("webhook-id") != json.loads(r.body)["id"]
            or r.headers.get("webhook-id") not in emitted
        )
        got = {r.headers["webhook-id"] for r in received if in_time(r.reply)}
        twice = sum(
            1
            for n in Counter(r.headers["webhook-id"] for r in received if in_time(r.reply)).values()
            if n > 1
        )

        # --- baseline: fire once ------------------------------------------------------------------
        with Receiver(policy=policy(random.Random(1), args.fail, args.slow, args.slow_delay)) as receiver:
            base_delivered, base_seconds = fire_once(receiver, ids)

        cost = json.loads(django(env, OUTBOX_COST, "1000"))
        print(f"\n{'sender':<44}{'delivered':>12}{'lost':>7}{'wrong ids':>11}{'seconds':>9}")
        print(
            f"{'ours: outbox, retries with backoff':<44}{len(got):>7}/{len(ids):<4}{len(ids) - len(got):>7}{wrong:>11}{took:>9.1f}"
        )
        print(
            f"{'baseline: one POST per event, no retry':<44}{base_delivered:>7}/{len(ids):<4}{len(ids) - base_delivered:>7}{0:>11}{base_seconds:>9.1f}"
        )
        print(
            f"\nours: {attempts} attempts for {len(ids)} events ({attempts / len(ids):.2f} each); "
            f"{delivered_rows} delivery rows delivered; {twice} events reached the receiver twice "
            f"(a 2xx the sender did not see in time; the same webhook-id both times); "
            f"the {len(ids)} events were written in {emitted_in:.1f} s"
        )
        ratio = cost["with"] / cost["without"]
        print(
            f"the change that causes an event: 1,000 job updates with the event written "
            f"{cost['with']:.2f} s, without {cost['without']:.2f} s ({ratio:.2f}x)"
        )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        stop_stack(processes, keep, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
