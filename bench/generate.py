"""Generation throughput: one stream at a time against 8 concurrent requests in one batch.

SmolLM2-135M-Instruct (converted once from its GGUF into the model cache), 8 different chat
requests, up to 64 new tokens each, sampled (temperature 0.7, a seed per request):
- one stream: our `generate()` on each request in turn (what a worker does without batching);
- batched: our `generate_batch()` on all 8 at once (what it does with concurrent requests);
- transformers' `model.generate()` on each request in turn, for reference to our own loop.
Tokens are the completion tokens actually produced (a request may end early at EOS). The
methods take turns over `--rounds` rounds, so a busy machine slows them alike.

    python bench/generate.py [--cache-dir var/models] [--max-tokens 64] [--concurrency 8] [--threads 1]

On a shared, oversubscribed machine pass --threads 1 (see bench/classify.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/generate.py` puts bench/, not the root, on the path

TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "the first city built on Mars",
    "a chess game between two old friends",
    "a robot learning to bake bread",
    "a storm over a small fishing village",
    "a detective who can hear lies",
    "the last bookshop in a busy city",
    "a dragon who is afraid of heights",
    "a train that never stops",
    "a garden that grows in winter",
]


class Method:
    def __init__(self, name: str, run: Callable[[], int]) -> None:
        self.name = name
        self.run = run  # returns the completion tokens it produced
        self.seconds = 0.0
        self.tokens = 0

    def timed(self) -> None:
        started = time.perf_counter()
        self.tokens += self.run()
        self.seconds += time.perf_counter() - started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def requests(n: int, max_tokens: int) -> list[Any]:
    from workers.runtime.specs import GenerateRequest

    return [
        GenerateRequest(
            messages=({"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."},),
            max_tokens=max_tokens,
            temperature=0.7,
            seed=i,
        )
        for i in range(n)
    ]


def methods(model: Any, batch: list[Any]) -> list[Method]:
    import torch

    from workers.runtime.generate import generate, generate_batch, prompt_ids

    def one_stream() -> int:
        return sum(generate(model, request).completion_tokens for request in batch)

    def batched() -> int:
        return sum(result.completion_tokens for result in generate_batch(model, batch))

    def transformers_generate() -> int:
        produced = 0
        for request in batch:
            ids = torch.tensor([prompt_ids(model, request)])
            torch.manual_seed(request.seed)
            with torch.inference_mode():
                out = model.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=request.max_tokens,
                    do_sample=True,
                    temperature=request.temperature,
                    top_p=1.0,
                    top_k=0,
                )
            produced += out.shape[1] - ids.shape[1]
        return produced

    return [
        Method("ours: generate(), one stream", one_stream),
        Method(f"ours: generate_batch(), {len(batch)} at once", batched),
        Method("transformers generate(), one stream", transformers_generate),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on AMX CPUs and GPUs), float32, bfloat16")
    args = parser.parse_args()

    import torch

    from workers.runtime.catalog import prepare_smollm2
    from workers.runtime.generate import generate
    from workers.runtime.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(str(prepare_smollm2(args.cache_dir)), device="cpu", dtype=args.dtype)
    precision = str(next(model.model.parameters()).dtype).removeprefix("torch.")
    batch = requests(args.concurrency, args.max_tokens)
    generate(model, requests(1, 4)[0])  # warm-up
    timed = methods(model, batch)
    for round_index in range(args.rounds):
        shift = round_index % len(timed)
        for method in timed[shift:] + timed[:shift]:
            method.timed()

    print(
        f"\nSmolLM2-135M-Instruct, {args.concurrency} chat requests x up to {args.max_tokens} new tokens, "
        f"CPU, {precision} (dtype {args.dtype}), {torch.get_num_threads()} threads, "
        f"{args.rounds} interleaved rounds\n"
    )
    print(f"{'':42} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs one stream':>14}")
    baseline = timed[0]
    for method in timed:
        ratio = method.tokens_per_second / baseline.tokens_per_second
        print(
            f"{method.name:42} {method.tokens:7d} {method.seconds:8.1f} "
            f"{method.tokens_per_second:9.1f} {ratio:13.2f}x"
        )


if __name__ == "__main__":
    main()
