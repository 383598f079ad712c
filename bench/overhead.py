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
HTTP, auth, quota and rate checks, the job row, the broker, the worker's claim, the result and
usage write, the relay back through Redis. Each request's time is split into its stages (from its
job row's timestamps and this process's clock), then N more requests come from 8 concurrent
clients. With `--baseline REF`, the code of that git ref runs the same measurement first, on the
same database and Redis, so that both figures come from one run.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python bench/overhead.py [--n 200] [--minilm] \
        [--baseline a38f03a]
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

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = LOGS / f"{name}.log"
        self._file = self.log.open("wb")
        self.popen = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
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


def start_web(env: dict[str, str], port: int, workers: int, threads: int, cwd: Path = ROOT) -> Process:
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
    web = Process("web", cmd, env, cwd)
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


def start_worker(env: dict[str, str], name: str, cwd: Path = ROOT) -> Process:
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
    worker = Process(name, cmd, env, cwd)
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
    """N sequential requests alternating with N direct calls; each request's stages from its job row
    and this process's clock (one machine, one clock)."""
    from workers.runtime.classify import classify
    from workers.runtime.specs import ClassifyRequest

    body = {"model": name, "input": TEXT}
    request = ClassifyRequest(texts=(TEXT,))
    api: list[float] = []
    direct: list[float] = []
    timed: list[tuple[float, float]] = []  # (sent, received) wall-clock seconds
    same_label = 0
    timed_from = None
    for i in range(warm_up + n):
        if i == warm_up:
            from django.utils import timezone

            timed_from = timezone.now()
        sent, started = time.time(), time.perf_counter()
        status, raw = client.request("POST", "/v1/classifications", body)
        api_ms = (time.perf_counter() - started) * 1000
        received = sent + api_ms / 1000
        if status != 200:
            raise SystemExit(f"request {i} failed: {status} {raw[:500]!r}")
        started = time.perf_counter()
        result = classify(loaded, request)
        direct_ms = (time.perf_counter() - started) * 1000
        if i >= warm_up:
            api.append(api_ms)
            direct.append(direct_ms)
            timed.append((sent, received))
            same_label += json.loads(raw)["data"][0]["labels"][0]["label"] == result.results[0][0].label
    if same_label != n:
        print(f"  warning: the API and the direct call disagreed on the top label {n - same_label} times")
    series = {"api": api, "direct": direct, "overhead": [a - d for a, d in zip(api, direct, strict=True)]}
    return {**series, **stages(name, timed_from, timed, percentile(direct, 50))}


def concurrent(port: int, key: str, name: str, clients: int, n: int) -> list[float]:
    """`clients` threads, each with its own connection, sending requests back to back: the latency
    of each of n requests in all (ms)."""
    import threading

    body = {"model": name, "input": TEXT}
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = max(1, n // clients)

    def run() -> None:
        client = Client(port, key)
        for _ in range(per_client):
            started = time.perf_counter()
            status, raw = client.request("POST", "/v1/classifications", body)
            if status != 200:
                raise SystemExit(f"a concurrent request failed: {status} {raw[:300]!r}")
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)
        client.close()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def stages(
    name: str, since: Any, timed: list[tuple[float, float]], model_ms: float
) -> dict[str, list[float]]:
    """Where the time goes, from the job rows (created: the web, just before its INSERT; started: the
    worker's claim; finished: the worker, just before its result and usage commit) and the sending
    and receiving times here. Requests and rows are matched in order: they ran one at a time."""
    from apps.jobs.models import Job

    rows = list(
        Job.objects.filter(model_name=name, created_at__gte=since)
        .order_by("created_at")
        .values_list("created_at", "started_at", "finished_at")
    )
    if len(rows) != len(timed):
        raise SystemExit(f"{len(timed)} requests but {len(rows)} jobs")
    web, queue, worker, back = [], [], [], []
    for (sent, received), (created, started, finished) in zip(timed, rows, strict=True):
        web.append((created.timestamp() - sent) * 1000)
        queue.append((started - created).total_seconds() * 1000)
        worker.append((finished - started).total_seconds() * 1000 - model_ms)
        back.append((received - finished.timestamp()) * 1000)
    return {"web": web, "queue": queue, "worker": worker, "back": back}


STAGES = (
    ("web: request in -> job created", "web"),
    ("queue: job created -> claimed", "queue"),
    ("worker, less the model (p50)", "worker"),
    ("result stored -> response out", "back"),
)


def report(title: str, sides: dict[str, dict[str, list[float]]]) -> None:
    names = list(sides)
    print(
        f"\n{title}: {len(sides[names[-1]]['api'])} sequential requests of one text ({len(TEXT)} characters)"
    )
    header = "".join(f"{side + ' p50':>14}{side + ' p99':>14}" for side in names)
    print(f"  {'':34}{header}")
    rows = [
        ("API + queue + worker (HTTP)", "api"),
        ("classify() in process", "direct"),
        ("overhead (API - direct, paired)", "overhead"),
        *STAGES,
        ("8 concurrent clients: latency", "concurrent"),
    ]
    for label, key in rows:
        cells = "".join(
            f"{percentile(sides[side][key], 50):14.1f}{percentile(sides[side][key], 99):14.1f}"
            for side in names
        )
        print(f"  {label:34}{cells}")
    ours = percentile(sides[names[-1]]["overhead"], 50)
    if len(names) == 2:
        before = percentile(sides[names[0]]["overhead"], 50)
        print(f"  p50 overhead {before:.1f} ms -> {ours:.1f} ms ({before / ours:.1f}x less)")
    p99 = percentile(sides[names[-1]]["overhead"], 99)
    print(
        f"  target p50 overhead <= 10 ms: {'met' if ours <= 10 else 'NOT met'} ({ours:.1f} ms); "
        f"p99 <= 20 ms: {'met' if p99 <= 20 else 'NOT met'} ({p99:.1f} ms)"
    )


def baseline_tree(ref: str) -> Path:
    """A checkout of `ref` (e.g. the last release) under var/, to run as the baseline."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=ROOT,
        check=True,
        text=True,
        capture_output=True,
    ).stdout.strip()
    tree = VAR / "bench-baseline" / sha[:12]
    if not (tree / "manage.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="timed requests (and direct calls) per model")
    parser.add_argument("--warm-up", type=int, default=20)
    parser.add_argument("--minilm", action="store_true", help="also measure MiniLM-L6 with a fresh head")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads (one worker process)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the second measure")
    parser.add_argument(
        "--baseline",
        default="",
        help="a git ref (e.g. a38f03a) whose code runs first, on the same database and Redis, as the "
        "baseline of the same run",
    )
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
        trees = {"ours": ROOT}
        if args.baseline:
            trees = {args.baseline[:10]: baseline_tree(args.baseline), **trees}
        loaded = [load_model(str(path), device="cpu") for _, path, _, _ in models]
        results: dict[str, dict[str, dict[str, list[float]]]] = {title: {} for title, *_ in models}
        for side, tree in trees.items():
            purge_queues()
            port = free_port()
            processes: list[Process] = []
            try:
                processes.append(start_worker(env, f"bench-overhead-{side}", tree))
                processes.append(start_web(env, port, workers=1, threads=args.threads, cwd=tree))
                client = Client(port, key)
                for (title, *_), name, model in zip(models, names, loaded, strict=True):
                    series = measure(client, name, model, args.n, args.warm_up)
                    series["concurrent"] = concurrent(port, key, name, args.clients, args.n)
                    results[title][side] = series
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
    for title, sides in results.items():
        report(title, sides)


if __name__ == "__main__":
    main()
