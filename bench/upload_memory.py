"""Web-worker memory during a 100 MB upload to /v1/files: our streaming path against a naive one.

Starts gunicorn (one sync worker) on a free 127.0.0.1 port against the databases named by
DATABASE_URL and REDIS_URL (the database is created if missing, then migrated, and a tenant is
made with `manage.py create_tenant`), streams a generated CSV to /v1/files from a generator (the
bench never holds the file either), and samples the worker's RSS every 10 ms.

Two runs, each with a fresh server:
- ours: the project's settings. MaxSizeUploadHandler counts bytes, Django spools anything over
  FILE_UPLOAD_MAX_MEMORY_SIZE to a temporary file, and storage moves that file into place.
- naive: the same code with MemoryFileUploadHandler only (and no spill threshold), i.e. a server
  that reads the whole body into memory before storing it.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mw_bench REDIS_URL=redis://127.0.0.1:6379/6 \\
        python bench/upload_memory.py [--megabytes 100]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/upload_memory.py` puts bench/, not the root, on the path

from bench.load import BENCH_SECRETS  # noqa: E402

PYTHON = sys.executable
ROW_BYTES = 100  # every generated row is exactly this long, so the size is known up front
HEADER = b"text,label\n"
NAIVE_SETTINGS = """\
from saas.settings import *  # noqa: F403

# Read the whole upload into memory, as a server without spooling would.
FILE_UPLOAD_HANDLERS = [
    "apps.projects.uploads.MaxSizeUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
]
FILE_UPLOAD_MAX_MEMORY_SIZE = 1 << 40
"""


@dataclass(frozen=True)
class Outcome:
    name: str
    baseline_mb: float
    peak_mb: float
    seconds: float
    status: int

    @property
    def increase_mb(self) -> float:
        return self.peak_mb - self.baseline_mb


def rows(count: int) -> Iterator[bytes]:
    """`count` CSV rows of ROW_BYTES each, about 1 MB at a time."""
    labels = ("positive", "negative", "neutral", "mixed")
    batch = []
    for index in range(count):
        text = f"review {index:09d} of a film that was long and often quite good"
        label = labels[index % len(labels)]
        row = f"{text},{label}".ljust(ROW_BYTES - 1, " ") + "\n"
        batch.append(row.encode())
        if len(batch) == 10_000:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)


def multipart(row_count: int, purpose: str) -> tuple[str, int, Iterator[bytes]]:
    """(content type, content length, body generator) for a streamed multipart upload."""
    boundary = "bench" + secrets.token_hex(12)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + len(HEADER) + row_count * ROW_BYTES + len(tail)

    def body() -> Iterator[bytes]:
        yield head
        yield HEADER
        yield from rows(row_count)
        yield tail

    return f"multipart/form-data; boundary={boundary}", length, body()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


class Server:
    """gunicorn with one sync worker; stopped by the PID it was started with."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "gunicorn",
                "saas.wsgi:application",
                "--workers",
                "1",
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--timeout",
                "600",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.worker = self._wait_for_worker()

    def _wait_for_worker(self) -> psutil.Process:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited early; see {self._log.name}")
            children = psutil.Process(self.process.pid).children()
            if children:
                try:
                    httpx.get(self.url + "/v1/files", timeout=2)
                    return children[0]
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise SystemExit("gunicorn did not start within 60 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 1_048_576


def measure(name: str, env: dict[str, str], api_key: str, row_count: int, log: Path) -> Outcome:
    server = Server(env, log)
    try:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=600) as client:
            # Warm up: the first upload imports and connects everything a request needs.
            content_type, length, body = multipart(10, "fine-tune")
            client.post(
                "/v1/files",
                content=body,
                headers={"Content-Type": content_type, "Content-Length": str(length)},
            )
            time.sleep(0.5)
            baseline = rss_mb(server.worker)

            peak = baseline
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_mb(server.worker))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            content_type, length, body = multipart(row_count, "fine-tune")
            started = time.monotonic()
            response = client.post(
                "/v1/files",
                content=body,
                headers={"Content-Type": content_type, "Content-Length": str(length)},
            )
            seconds = time.monotonic() - started
            done.set()
            sampler.join()
            peak = max(peak, rss_mb(server.worker))
            if response.status_code != 200:
                print(f"  {name}: HTTP {response.status_code} {response.text[:300]}")
            else:
                uploaded = response.json()
                assert uploaded["bytes"] == len(HEADER) + row_count * ROW_BYTES, uploaded
            return Outcome(name, baseline, peak, seconds, response.status_code)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=100, help="size of the uploaded CSV in MiB")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    if not database_url or not redis_url:
        raise SystemExit("set DATABASE_URL and REDIS_URL to the databases this bench may use")

    row_count = (args.megabytes * 1_048_576 - len(HEADER)) // ROW_BYTES
    file_bytes = len(HEADER) + row_count * ROW_BYTES
    work = Path(tempfile.mkdtemp(prefix="upload-memory-"))
    try:
        (work / "bench_naive_settings.py").write_text(NAIVE_SETTINGS)
        env = {**BENCH_SECRETS, **os.environ}
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            MEDIA_ROOT=str(work / "media"),
            MAX_UPLOAD_BYTES=str(2 * file_bytes),
            DJANGO_SETTINGS_MODULE="saas.settings",
            PYTHONPATH=os.pathsep.join([str(ROOT), str(work)]),
            LOG_LEVEL="WARNING",
        )
        ensure_database(database_url)
        manage(env, "migrate", "--noinput")
        tenant = json.loads(manage(env, "create_tenant", "upload-bench@example.com").strip().splitlines()[-1])

        print(
            f"Uploading a {file_bytes / 1_048_576:.1f} MiB CSV ({row_count:,} rows) to /v1/files, streamed."
        )
        print("RSS of the single gunicorn sync worker, sampled every 10 ms.\n")
        ours = measure("ours (spool to disk)", env, tenant["api_key"], row_count, work / "ours.log")
        naive = measure(
            "naive (all in memory)",
            {**env, "DJANGO_SETTINGS_MODULE": "bench_naive_settings"},
            tenant["api_key"],
            row_count,
            work / "naive.log",
        )

        print(f"{'':24} {'baseline MB':>12} {'peak MB':>10} {'increase MB':>12} {'seconds':>8} {'HTTP':>5}")
        for outcome in (ours, naive):
            print(
                f"{outcome.name:24} {outcome.baseline_mb:12.1f} {outcome.peak_mb:10.1f} "
                f"{outcome.increase_mb:12.1f} {outcome.seconds:8.2f} {outcome.status:5d}"
            )
        print(
            f"\nFile size: {file_bytes / 1_048_576:.1f} MiB. Increase ours / naive: "
            f"{ours.increase_mb:.1f} MB / {naive.increase_mb:.1f} MB."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
