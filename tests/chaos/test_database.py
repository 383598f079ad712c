"""PostgreSQL outages (docs/reliability.md, T13), on a private embedded PostgreSQL the test stops and starts
with its own pg_ctl, behind a live gunicorn, a worker and a reaper process of its own.

(a) a fast restart under a request loop costs only the requests in flight;
(b) an outage shorter than the self-fence: the job keeps computing, is not reaped, succeeds; and
    the work loop waits at a call it cannot put off (a budget check, the writes before the finish);
(c) an outage longer than the self-fence: the worker abandons its attempt and the reaper re-runs
    the job from its checkpoint once PostgreSQL is back: succeeded, billed once.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import (
    WORKER_ENV,
    PrivatePostgres,
    Process,
    RedisServer,
    django_env,
    fine_tune_body,
    free_port,
    ledger_violations,
    reaper_process,
)
from tests.conftest import ROOT, Worker, sentiment_csv, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
logging.getLogger("httpx").setLevel(logging.WARNING)  # thousands of requests in T13a

DATABASE = "modelworks"
SEED = """
import json, sys, django
django.setup()
from apps.registry.models import Model
Model.objects.update_or_create(name="tiny-bert", defaults=dict(
    task="classification", artifact_key="local:" + sys.argv[1], context_length=128, is_fine_tunable=True,
    limits={"max_seq_length": 128, "methods": ["classification"], "servable": False}))
"""


@dataclass
class Stack:
    pg: PrivatePostgres
    redis: RedisServer
    env: dict[str, str]
    url: str
    api_key: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )

    def query(self, sql: str, *params: Any) -> list[Any]:
        with self.pg.connect(DATABASE) as conn:
            return list(conn.execute(sql, params).fetchall())

    def job(self, job_id: str) -> dict[str, Any]:
        rows = self.query(
            "SELECT id, status, attempt, error, checkpoint_ref, trained_tokens, heartbeat_at "
            "FROM jobs_job WHERE public_id = %s",
            job_id,
        )
        keys = ("id", "status", "attempt", "error", "checkpoint_ref", "trained_tokens", "heartbeat_at")
        return dict(zip(keys, rows[0], strict=True))

    def job_or_none(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self.job(job_id)
        except Exception:  # PostgreSQL is down
            return None

    def usage(self, job_id: str) -> list[Any]:
        """(unit, total quantity) of the job's usage: work is billed as it is done, in several records
        (the ledger invariants check they follow on from each other)."""
        return self.query(
            "SELECT u.unit, SUM(u.quantity) FROM billing_usagerecord u JOIN jobs_job j ON j.id = u.job_id "
            "WHERE j.public_id = %s GROUP BY u.unit",
            job_id,
        )

    def events(self, job_id: str) -> list[str]:
        rows = self.query(
            "SELECT e.message FROM jobs_jobevent e JOIN jobs_job j ON j.id = e.job_id "
            "WHERE j.public_id = %s ORDER BY e.id",
            job_id,
        )
        return [r[0] for r in rows]


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def private_stack(private_pg: PrivatePostgres, tiny_bert_dir: Path, tmp_path_factory: Any) -> Iterator[Stack]:
    """A migrated database with a tenant and the tiny BERT, a private Redis, and gunicorn."""
    redis = RedisServer(tmp_path_factory.mktemp("pg-redis"))
    private_pg.create_database(DATABASE)
    env = django_env(private_pg.url(DATABASE), redis.url(), {**WORKER_ENV, "ALLOWED_HOSTS": "127.0.0.1"})
    _manage(env, "migrate", "--noinput", "-v", "0")
    tenant = json.loads(_manage(env, "create_tenant", "chaos@example.com", "--organization", "Chaos").strip())
    subprocess.run(
        [sys.executable, "-c", SEED, str(tiny_bert_dir)], cwd=ROOT, env=env, check=True, timeout=120
    )
    port = free_port()
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
            "2",
            "--threads",
            "4",
            "--timeout",
            "30",
        ],
        env,
        "gunicorn",
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, interval=0.5, message="gunicorn did not start")
        yield Stack(pg=private_pg, redis=redis, env=env, url=url, api_key=tenant["api_key"])
    finally:
        web.stop()
        redis.stop()


@pytest.fixture
def stack_worker(private_stack: Stack) -> Iterator[Any]:
    """Starts workers (and one reaper process, as beat would run it) on the private stack."""
    started: list[Any] = []
    stale = [float(private_stack.env["JOB_STALE_SECONDS"])]

    def start(extra: dict[str, str] | None = None) -> Worker:
        env = {**private_stack.env, **(extra or {})}
        stale.append(float(env["JOB_STALE_SECONDS"]))
        log = ROOT / "var" / "test-logs" / f"chaos-pg-worker-{time.monotonic_ns()}.log"
        worker = Worker(env=env, log=log)
        started.append(worker)
        reaper = reaper_process(env)
        started.append(reaper)
        return worker

    yield start
    # A scenario that failed may leave its job unfinished, and the Free plan runs one job at a time:
    # the next scenario would be refused. Cancel it while the workers and the reaper can still end
    # it (the reaper ends one whose worker gave it up once its heartbeat is stale).
    cancel_unfinished(private_stack, timeout=max(stale) + 30)
    for item in started:
        if isinstance(item, Worker):
            from tests.chaos.conftest import kill_worker

            kill_worker(item)
        else:
            item.stop()
    assert ledger_violations(private_stack.query) == {}


def submit(stack: Stack, *, rows: int = 40, epochs: int = 8) -> str:
    with stack.client() as client:
        uploaded = client.post(
            "/v1/files", files={"file": ("train.csv", sentiment_csv(rows))}, data={"purpose": "fine-tune"}
        )
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        wait_for(lambda: client.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=60)
        created = client.post("/v1/fine_tuning/jobs", json=fine_tune_body(file_id, epochs))
        assert created.status_code == 200, created.text
        return str(created.json()["id"])


def cancel_unfinished(stack: Stack, timeout: float) -> None:
    active = "SELECT public_id FROM jobs_job WHERE status IN ('validating_files', 'queued', 'running')"
    unfinished = [row[0] for row in stack.query(active)]
    if not unfinished:
        return
    with stack.client() as client:
        for job_id in unfinished:
            client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    wait_for(
        lambda: not stack.query(active), timeout=timeout, interval=0.5, message="a job is still unfinished"
    )


def wait_job(stack: Stack, job_id: str, predicate: Any, timeout: float, message: str = "") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = stack.job_or_none(job_id)
        return job if job is not None and predicate(job) else None

    return wait_for(check, timeout=timeout, interval=0.2, message=message or f"{job_id}: condition not met")


@contextmanager
def outage(stack: Stack) -> Iterator[None]:
    """PostgreSQL is stopped (fast shutdown: sessions are cut) until the block ends."""
    stack.pg.stop("fast")
    try:
        yield
    finally:
        stack.pg.start()


def has_checkpoint(job: dict[str, Any]) -> bool:
    return bool(job["checkpoint_ref"])


def is_finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def test_t13a_a_fast_restart_under_load_costs_only_the_requests_in_flight(private_stack: Stack) -> None:
    with private_stack.client() as client:
        files = client.get("/v1/files").json()["data"]
        path = f"/v1/files/{files[0]['id']}" if files else "/v1/files"
    results: list[tuple[float, int]] = []  # (time, status or 0 for a socket error)
    stop = threading.Event()

    def hammer() -> None:
        with private_stack.client() as client:
            while not stop.is_set():
                try:
                    status = client.get(path).status_code
                except httpx.HTTPError:
                    status = 0
                results.append((time.monotonic(), status))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    began = time.monotonic()
    with outage(private_stack):
        pass
    ended = time.monotonic()
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join()
    restart = ended - began
    before = [s for t, s in results if t < began]
    after = [s for t, s in results if t > ended + 2]
    failed = [s for _, s in results if not 200 <= s < 300]
    rps = len(before) / 3
    print(
        f"T13a: restart took {restart:.2f}s, {len(failed)} of {len(results)} requests failed, {rps:.0f} rps before"
    )
    assert before and after
    assert all(200 <= s < 300 for s in after), "requests still failing 2 s after the restart"
    # only the requests during the restart fail (they fail fast, so faster than the usual rps)
    outside = [(t, s) for t, s in results if not 200 <= s < 300 and not began - 0.5 <= t <= ended + 2]
    assert outside == []


def test_t13b_an_outage_shorter_than_the_self_fence_does_not_stop_the_job(
    private_stack: Stack, stack_worker: Any
) -> None:
    # Production proportions (self-fence 45 s < stale 90 s) scaled so a stop + start of PostgreSQL on
    # a busy machine (1-3 s) stays well inside the self-fence.
    timings = {"JOB_SELF_FENCE_SECONDS": "10", "JOB_STALE_SECONDS": "15"}
    worker = stack_worker(timings)
    job_id = submit(private_stack, rows=120, epochs=20)  # long enough to outlast the outage
    wait_job(private_stack, job_id, has_checkpoint, timeout=90, message="no checkpoint")
    with outage(private_stack):
        time.sleep(3)
    back = datetime.now(UTC)
    # the heartbeat comes back (a broken connection is replaced), long before the self-fence
    recovered = wait_job(
        private_stack,
        job_id,
        lambda j: is_finished(j) or j["heartbeat_at"] > back,
        timeout=5,
        message="the heartbeat did not recover after PostgreSQL returned",
    )
    assert recovered["heartbeat_at"] > back, "the heartbeat never recovered after PostgreSQL returned"
    job = wait_job(private_stack, job_id, is_finished, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1, "the job was re-run"
    assert private_stack.usage(job_id) == [("trained_tokens", job["trained_tokens"])]
    events = private_stack.events(job_id)
    assert not any("Worker lost" in e for e in events)
    log = worker.log.read_text(errors="replace")
    assert "heartbeat failed" in log or "progress write failed" in log, "the outage did not reach the job"
    assert "abandoning attempt" not in log


def test_t13b_the_work_loop_waits_out_a_short_outage_instead_of_ending_the_attempt(
    private_stack: Stack, stack_worker: Any
) -> None:
    # PostgreSQL is down from the first checkpoint until the work loop has to wait for it: the
    # training's writes are kept for later, so it runs on until a call it cannot put off (the budget
    # check asking the spend cap for more, or the writes before the finish) meets the outage, for
    # certain, not by chance. The self-fence leaves the short job ample time to reach its end.
    worker = stack_worker({"JOB_SELF_FENCE_SECONDS": "30", "JOB_STALE_SECONDS": "40"})
    job_id = submit(private_stack, rows=40, epochs=4)
    wait_job(private_stack, job_id, has_checkpoint, timeout=90, message="no checkpoint")
    with outage(private_stack):
        # the work loop waits at a call it cannot put off (the writes before the finish, or a budget
        # check); without that, the attempt ends as a transient failure
        wait_for(
            lambda: (
                "database unreachable from the work loop" in (log := worker.log.read_text(errors="replace"))
                or "transient failure" in log
            ),
            timeout=25,
            message="the work loop never met the outage",
        )
    job = wait_job(private_stack, job_id, is_finished, timeout=60)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1, "the job was re-run"
    assert private_stack.usage(job_id) == [("trained_tokens", job["trained_tokens"])]
    events = private_stack.events(job_id)
    assert events.count("The job has successfully completed.") == 1
    log = worker.log.read_text(errors="replace")
    assert "database unreachable from the work loop" in log
    assert "transient failure" not in log
    assert "abandoning attempt" not in log


def test_t13c_an_outage_longer_than_the_self_fence_reruns_the_job_from_its_checkpoint(
    private_stack: Stack, stack_worker: Any
) -> None:
    worker = stack_worker()  # scaled: self-fence 3 s, stale 4 s
    job_id = submit(private_stack, rows=80, epochs=16)
    wait_job(private_stack, job_id, has_checkpoint, timeout=90, message="no checkpoint")
    with outage(private_stack):
        # the heartbeat thread gives the attempt up after the self-fence (or a write at the end of
        # training fails first and the attempt ends as a transient failure)
        wait_for(
            lambda: (
                "abandoning attempt" in (log := worker.log.read_text(errors="replace"))
                or "transient failure" in log
            ),
            timeout=30,
            message="the worker did not give the attempt up",
        )
        time.sleep(2)
    back = time.monotonic()
    job = wait_job(private_stack, job_id, is_finished, timeout=150)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 2
    assert private_stack.usage(job_id) == [("trained_tokens", job["trained_tokens"])]
    events = private_stack.events(job_id)
    assert any("resuming from the last checkpoint" in e for e in events), events[-10:]
    print(f"T13c: succeeded {time.monotonic() - back:.1f}s after PostgreSQL returned")
