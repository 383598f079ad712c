"""Open streams against the rest of the API: do 50 streaming chat requests slow everything else?

The same real stack as bench/overhead.py (PostgreSQL and Redis from DATABASE_URL / REDIS_URL,
gunicorn gthread with enough threads for every stream, a Celery worker on `-Q gpu,serve,default -c 1`),
serving a tiny GPT-2 as a tenant's generation model. First, with nothing else running, `GET
/healthz` and `GET /v1/models` (authenticated) are timed in turn, one at a time, for a few
seconds: the baseline. Then 50 streaming chat requests open at once (each holds a gunicorn
thread and waits on Redis for its tokens while the worker generates for up to 8 of them at a
time), and the same two requests are timed for as long as any stream is open. All traffic is on
127.0.0.1. The run takes about a minute.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python bench/streams.py [--streams 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/streams.py` puts bench/, not the root, on the path

from bench.overhead import (  # noqa: E402  (after the path fix above)
    MODELS,
    Client,
    Process,
    environment,
    free_port,
    percentile,
    purge_queues,
    register,
    setup_django,
    start_web,
    start_worker,
    tenant,
)

MODEL = "ft:bench:streams:tiny-gpt2"
PROBES = (("GET /healthz", "/healthz"), ("GET /v1/models", "/v1/models"))


@dataclass
class Stream:
    """One streaming chat request, read to its end in its own thread."""

    status: int = 0
    chunks: int = 0
    first_byte_ms: float = 0.0
    total_ms: float = 0.0
    done: bool = False  # ended with `data: [DONE]`
    error: str = ""  # an exception, a non-200 status or an in-band error event
    finished: threading.Event = field(default_factory=threading.Event)


def run_stream(port: int, key: str, body: dict[str, Any], start: threading.Barrier, stream: Stream) -> None:
    start.wait()
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body).encode(),
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        stream.status = response.status
        if response.status != 200:
            stream.error = f"HTTP {response.status}: {response.read()[:200]!r}"
            return
        while line := response.readline():
            if not stream.first_byte_ms:
                stream.first_byte_ms = (time.perf_counter() - began) * 1000
            if line.startswith(b"data: [DONE]"):
                stream.done = True
            elif line.startswith(b"data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    stream.error = f"in-band error: {event['error']}"
                stream.chunks += 1
        if not stream.done and not stream.error:
            stream.error = "the stream ended without [DONE]"
    except Exception as exc:  # any failure is counted and shown, not raised in a thread
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.total_ms = (time.perf_counter() - began) * 1000
        connection.close()
        stream.finished.set()


def probe(client: Client, until: Any, minimum: int, failures: list[str]) -> dict[str, list[float]]:
    """Times the probe requests in turn, one at a time, while `until()` is False (and at least
    `minimum` rounds)."""
    timings: dict[str, list[float]] = {label: [] for label, _ in PROBES}
    rounds = 0
    while rounds < minimum or not until():
        for label, path in PROBES:
            started = time.perf_counter()
            try:
                status, raw = client.request("GET", path)
            except OSError as exc:
                failures.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            timings[label].append((time.perf_counter() - started) * 1000)
            if status != 200:
                failures.append(f"{label}: HTTP {status} {raw[:200]!r}")
        rounds += 1
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=200, help="tokens each stream asks for")
    parser.add_argument("--baseline-seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    parser.add_argument(
        "--threads", type=int, default=64, help="gunicorn threads per worker (>= streams + probes)"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads in the Celery worker (0: default)"
    )
    args = parser.parse_args()
    started_load = os.getloadavg()
    began = time.monotonic()

    with environment("modelworks_bench") as env:
        if args.torch_threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.torch_threads)
        setup_django(env)
        from tests.tiny_models import build_tiny_gpt2

        path = MODELS / "tiny-gpt2"
        if not (path / "model.safetensors").exists():
            build_tiny_gpt2(path)
        org, key = tenant(env, "bench-streams@example.com", "Bench streams")
        register(org, MODEL, "generation", path, [], 256)
        purge_queues()
        port = free_port()
        processes: list[Process] = []
        failures: list[str] = []
        try:
            processes.append(start_worker(env, "bench-streams"))
            processes.append(start_web(env, port, workers=args.workers, threads=args.threads))
            client = Client(port, key, timeout=30)
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "tell me a story"}],
                "max_tokens": args.max_tokens,
                "stream": True,
            }
            # warm-up: the worker loads the model, gunicorn and the connections settle
            warm = Stream()
            run_stream(port, key, body, threading.Barrier(1), warm)
            if warm.error:
                raise SystemExit(f"the warm-up stream failed: {warm.error}")
            probe(client, lambda: True, 20, failures)

            deadline = time.monotonic() + args.baseline_seconds
            baseline = probe(client, lambda: time.monotonic() >= deadline, 20, failures)

            streams = [Stream() for _ in range(args.streams)]
            barrier = threading.Barrier(args.streams + 1)
            threads = [
                threading.Thread(target=run_stream, args=(port, key, body, barrier, s), daemon=True)
                for s in streams
            ]
            for thread in threads:
                thread.start()
            barrier.wait()
            opened = time.monotonic()
            time.sleep(0.2)  # let the requests reach the server before timing anything
            loaded = probe(client, lambda: all(s.finished.is_set() for s in streams), 10, failures)
            window = time.monotonic() - opened
            for thread in threads:
                thread.join(timeout=120)
            client.close()
        finally:
            for process in reversed(processes):
                process.stop()

    failed = [s for s in streams if s.error or s.status != 200]
    print(
        f"\nload average {started_load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (1 min); "
        f"{os.cpu_count()} cores; gunicorn gthread {args.workers}x{args.threads}, Celery prefork -c 1, "
        f"tiny GPT-2 (2 layers), up to {args.max_tokens} tokens a stream"
    )
    print(
        f"\n{args.streams} concurrent streams: {args.streams - len(failed)} ended with [DONE] and no error, "
        f"{len(failed)} failed; {sum(s.chunks for s in streams)} events in all; open for {window:.1f} s"
    )
    print(
        f"  time to first byte p50 {percentile([s.first_byte_ms for s in streams], 50):.0f} ms, "
        f"p99 {percentile([s.first_byte_ms for s in streams], 99):.0f} ms; whole stream p50 "
        f"{percentile([s.total_ms for s in streams], 50) / 1000:.1f} s, "
        f"max {max(s.total_ms for s in streams) / 1000:.1f} s"
    )
    print(
        f"\n  {'':16} {'idle p50':>9} {'idle p99':>9} {'streams p50':>12} {'streams p99':>12} "
        f"{'ratio p50':>10} {'ratio p99':>10} {'samples':>9}"
    )
    for label, _ in PROBES:
        idle, busy = baseline[label], loaded[label]
        i50, i99, b50, b99 = (
            percentile(idle, 50),
            percentile(idle, 99),
            percentile(busy, 50),
            percentile(busy, 99),
        )
        print(
            f"  {label:16} {i50:7.1f}ms {i99:7.1f}ms {b50:10.1f}ms {b99:10.1f}ms {b50 / i50:9.2f}x "
            f"{b99 / i99:9.2f}x {len(idle):4}/{len(busy):<4}"
        )
    print(f"\nany request failed: {'yes' if failed or failures else 'no'}")
    for line in [s.error for s in failed][:5] + failures[:5]:
        print(f"  {line}")
    print(f"total run time {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
