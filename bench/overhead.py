"""Serving overhead: what a classification request adds by going through the API and the queue.

Real parts, as in production: PostgreSQL and Redis from DATABASE_URL / REDIS_URL (migrated
first; when unset, the local servers on 127.0.0.1 or embedded ones under var/), gunicorn (gthread)
and a Celery worker (`-Q gpu,serve,default -c 1`) as subprocesses. A tiny BERT classifier (with
`--minilm`, also MiniLM-L6 with a fresh 3-label head) is registered as a servable model of a
tenant made by `manage.py create_tenant`, on a benchmark plan with limits high enough never to
refuse. Use a scratch database: the tenant, the plan and the models stay in it.

After a warm-up, N sequential `POST /v1/classifications` of one short text alternate with N
direct `classify()` calls on the same model in this process (alternating spreads the noise of a
busy machine over both). The overhead of request i is its API latency minus direct call i:
HTTP, auth, quota and rate checks, the job row, the broker, the worker's claim and heartbeat
thread, the result and usage transaction, the relay back through Redis.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python bench/overhead.py [--n 200] [--minilm]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/overhead.py` puts bench/, not the root, on the path

from bench.load import BENCH_SECRETS  # noqa: E402

BIN = Path(sys.executable).parent
VAR = ROOT / "var"
LOGS = VAR / "bench-logs"
MODELS = VAR / "bench-models"
TEXT = "The app crashes every time I try to upload a photo."


# --- Services and processes (shared with bench/streams.py) ------------------------------------


def ensure_database(url: str) -> None:
    """Creates the database DATABASE_URL names when it does not exist yet."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(
        urlunsplit(parts._replace(path="/postgres")), autocommit=True, connect_timeout=5
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


@contextmanager
def environment(database: str) -> Iterator[dict[str, str]]:
    """The environment for every process of the benchmark: DATABASE_URL and REDIS_URL from the
    environment, else the servers on 127.0.0.1, else embedded ones (stopped at the end)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import services as found  # scripts/services.py

    env = {**BENCH_SECRETS, **os.environ}
    stop: list[Any] = []
    if not env.get("DATABASE_URL"):
        url = found.local_postgres_url(database)
        if url is None:
            url, server = found.embedded_postgres(database)
            stop.append(server)
        env["DATABASE_URL"] = url
    if "?host=" not in env["DATABASE_URL"]:
        ensure_database(env["DATABASE_URL"])
    if not env.get("REDIS_URL"):
        url = found.local_redis_url(15)
        if url is None:
            url, process = found.embedded_redis()
            stop.append(process)
        env["REDIS_URL"] = url
    env.setdefault("DJANGO_SETTINGS_MODULE", "saas.settings")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("LOG_LEVEL", "WARNING")  # request logs would cost time in the measured path
    try:
        yield env
    finally:
        for item in stop:
            if isinstance(item, subprocess.Popen):
                item.terminate()
                item.wait(timeout=10)


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, text=True, capture_output=True
    )
    return result.stdout


def setup_django(env: dict[str, str]) -> None:
    """This process talks to the same database (to register models); migrate it first."""
    manage(env, "migrate", "--no-input", "-v", "0")
    os.environ.update(
        {
            k: env[k]
            for k in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "LOG_LEVEL", *BENCH_SECRETS)
        }
    )
    import django

    django.setup()


def tenant(env: dict[str, str], email: str, organization: str) -> tuple[Any, str]:
    """A tenant from `create_tenant`, on a benchmark plan that never refuses: (organization, API key)."""
    from apps.accounts.models import Organization
    from apps.billing.models import Plan, Subscription

    created = json.loads(manage(env, "create_tenant", email, "--organization", organization))
    org = Organization.objects.get(public_id=created["organization"])
    plan, _ = Plan.objects.update_or_create(
        slug="benchmark",
        defaults={
            "name": "Benchmark",
            "included_credit": 0,
            "usage_beyond_credit": True,
            "requests_per_minute": 1_000_000,
            "tokens_per_minute": 2_000_000_000,
            "key_requests_per_minute": 1_000_000,
            "allowed_models": [],
            "position": 99,
        },
    )
    Subscription.objects.update_or_create(
        organization=org, defaults={"plan": plan, "spend_limit": None, "grace_until": None}
    )
    return org, str(created["api_key"])


def register(org: Any, name: str, task: str, path: Path, labels: list[str], context_length: int) -> Any:
    from apps.registry.models import Model

    model, _ = Model.objects.update_or_create(
        name=name,
        defaults={
            "organization": org,
            "task": task,
            "provider": "local",
            "artifact_key": f"local:{path}",
            "labels": labels,
            "context_length": context_length,
            "limits": {"servable": True},
        },
    )
    return model


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A subprocess in its own session, logging to var/bench-logs/; stopped by its own pid."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = LOGS / f"{name}.log"
        self._file = self.log.open("wb")
        self.popen = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise SystemExit(f"{self.name} exited:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._file.close()


def start_web(env: dict[str, str], port: int, workers: int, threads: int) -> Process:
    cmd = [
        str(BIN / "gunicorn"),
        "saas.wsgi",
        "-b",
        f"127.0.0.1:{port}",
        "-k",
        "gthread",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        "120",
        "--keep-alive",
        "30",
    ]
    web = Process("web", cmd, env)
    deadline = time.monotonic() + 60
    while True:
        web.check()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            connection.close()
            return web
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("gunicorn did not answer within 60 s") from None
            time.sleep(0.2)


def start_worker(env: dict[str, str], name: str) -> Process:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "saas",
        "worker",
        "-Q",
        "gpu,serve,default",
        "-c",
        "1",
        "-P",
        "prefork",
        "-n",
        f"{name}@%h",
        "-l",
        "info",
        "--without-mingle",
        "--without-gossip",
    ]
    worker = Process(name, cmd, env)
    deadline = time.monotonic() + 90
    while b" ready." not in worker.log.read_bytes():
        worker.check()
        if time.monotonic() > deadline:
            raise SystemExit("the worker was not ready within 90 s")
        time.sleep(0.2)
    return worker


def purge_queues() -> None:
    """Messages left from an earlier run would be picked up first."""
    from saas.celery import app

    with app.connection_for_write() as conn:
        for queue in ("gpu", "serve", "default"):
            conn.default_channel.queue_purge(queue)  # type: ignore[attr-defined]


class Client:
    """One keep-alive HTTP/1.1 connection, reopened if the server closed it."""

    def __init__(self, port: int, key: str | None = None, timeout: float = 120) -> None:
        self.port = port
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.connection.request(method, path, payload, self.headers)
                response = self.connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.connection.close()
                self.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


# --- The measurement ----------------------------------------------------------------------------


def build_models(minilm: bool) -> list[tuple[str, Path, list[str], int]]:
    from tests.tiny_models import build_tiny_bert

    labels = ["billing", "bug", "praise"]
    tiny = MODELS / "tiny-classifier"
    if not (tiny / "model.safetensors").exists():
        build_tiny_bert(tiny, labels=labels, seed=1)
    models = [("tiny BERT (2 layers)", tiny, labels, 128)]
    if minilm:
        from workers.runtime.catalog import build_minilm_classifier

        path = MODELS / "minilm-3"
        if not (path / "model.safetensors").exists():
            build_minilm_classifier(path, labels)
        models.append(("MiniLM-L6 (6 layers)", path, labels, 512))
    return models


def measure(client: Client, name: str, loaded: Any, n: int, warm_up: int) -> dict[str, list[float]]:
    from workers.runtime.classify import classify
    from workers.runtime.specs import ClassifyRequest

    body = {"model": name, "input": TEXT}
    request = ClassifyRequest(texts=(TEXT,))
    api: list[float] = []
    direct: list[float] = []
    same_label = 0
    timed_from = None
    for i in range(warm_up + n):
        if i == warm_up:
            from django.utils import timezone

            timed_from = timezone.now()
        started = time.perf_counter()
        status, raw = client.request("POST", "/v1/classifications", body)
        api_ms = (time.perf_counter() - started) * 1000
        if status != 200:
            raise SystemExit(f"request {i} failed: {status} {raw[:500]!r}")
        started = time.perf_counter()
        result = classify(loaded, request)
        direct_ms = (time.perf_counter() - started) * 1000
        if i >= warm_up:
            api.append(api_ms)
            direct.append(direct_ms)
            same_label += json.loads(raw)["data"][0]["labels"][0]["label"] == result.results[0][0].label
    if same_label != n:
        print(f"  warning: the API and the direct call disagreed on the top label {n - same_label} times")
    series = {"api": api, "direct": direct, "overhead": [a - d for a, d in zip(api, direct, strict=True)]}
    return {**series, **stages(name, timed_from)}


def stages(name: str, since: Any) -> dict[str, list[float]]:
    """Where the time goes, from the job rows: created (web, before the insert commits) → started
    (the worker claimed it) → finished (result and usage committed)."""
    from apps.jobs.models import Job

    rows = Job.objects.filter(model_name=name, created_at__gte=since).values_list(
        "created_at", "started_at", "finished_at"
    )
    queue = [(started - created).total_seconds() * 1000 for created, started, _ in rows]
    work = [(finished - started).total_seconds() * 1000 for _, started, finished in rows]
    return {"queue": queue, "worker": work}


def report(title: str, series: dict[str, list[float]]) -> None:
    print(f"\n{title}: {len(series['api'])} sequential requests of one text ({len(TEXT)} characters)")
    print(f"  {'':32} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, key in (
        ("API + queue + worker (HTTP)", "api"),
        ("classify() in process", "direct"),
        ("overhead (API - direct, paired)", "overhead"),
    ):
        values = series[key]
        print(
            f"  {label:32} {percentile(values, 50):8.1f} {percentile(values, 99):8.1f} "
            f"{sum(values) / len(values):8.1f}"
        )
    print("  where the API's time goes (from the job rows):")
    for label, key in (
        ("  created -> claimed by worker", "queue"),
        ("  claimed -> result committed", "worker"),
    ):
        values = series[key]
        print(
            f"  {label:32} {percentile(values, 50):8.1f} {percentile(values, 99):8.1f} "
            f"{sum(values) / len(values):8.1f}"
        )
    p50 = percentile(series["overhead"], 50)
    print(f"  target p50 overhead < 20 ms: {'met' if p50 < 20 else 'NOT met'} ({p50:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="timed requests (and direct calls) per model")
    parser.add_argument("--warm-up", type=int, default=20)
    parser.add_argument("--minilm", action="store_true", help="also measure MiniLM-L6 with a fresh head")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads (one worker process)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads in the worker and in this process alike (0: torch's default, one per core); "
        "one thread is fastest for a single short text, and spinning extra threads on a busy machine "
        "costs tens of milliseconds",
    )
    args = parser.parse_args()

    started_load = os.getloadavg()
    with environment("modelworks_bench") as env:
        if args.torch_threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.torch_threads)
        setup_django(env)
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)

        from workers.runtime.models import load_model

        models = build_models(args.minilm)
        org, key = tenant(env, "bench-overhead@example.com", "Bench overhead")
        names = [
            register(org, f"ft:bench:overhead:{i}", "classification", path, labels, ctx).name
            for i, (_, path, labels, ctx) in enumerate(models)
        ]
        purge_queues()
        port = free_port()
        processes: list[Process] = []
        try:
            processes.append(start_worker(env, "bench-overhead"))
            processes.append(start_web(env, port, workers=1, threads=args.threads))
            client = Client(port, key)
            results = []
            for (title, path, _, _), name in zip(models, names, strict=True):
                loaded = load_model(str(path), device="cpu")
                results.append((title, measure(client, name, loaded, args.n, args.warm_up)))
            client.close()
        finally:
            for process in reversed(processes):
                process.stop()
    load = os.getloadavg()
    print(f"\nload average {started_load[0]:.1f} at the start, {load[0]:.1f} at the end (1 min)")
    print(
        f"CPU, torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores; "
        f"gunicorn gthread 1x{args.threads}, Celery prefork -c 1; PostgreSQL and Redis on 127.0.0.1"
    )
    for title, series in results:
        report(title, series)


if __name__ == "__main__":
    main()
