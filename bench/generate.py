"""Generation throughput and quality of each CPU serving variant, one stream and batched.

SmolLM2-135M-Instruct (converted once from its GGUF into the model cache), served as:
- fp32: float32 weights (what a CPU without AMX serves with SERVE_QUANTIZATION=none);
- bf16: bfloat16 weights (what an AMX CPU serves);
- fp16: float32 model whose Linear layers hold fp16 weights (fbgemm; SERVE_QUANTIZATION=fp16, "auto" on
  CPUs without AMX);
- int8: per-channel int8 weights, activations quantized per call (fbgemm; SERVE_QUANTIZATION=int8);
- transformers' `model.generate()` on the fp32 model, for reference to our own loop.

Speed: 8 different chat requests, up to 64 new tokens each, sampled (temperature 0.7, a seed per
request), by our `generate()` one request at a time (batch 1) and by `generate_batch()` all at once
(batch 8). Tokens are the completion tokens actually produced (a request may end early at EOS). The
methods take turns request by request over `--rounds` rounds, so a busy machine slows them
alike: compare ratios.

Quality against fp32: how many of 15 fixed prompts get the identical greedy completion (32 tokens),
and the perplexity of a fixed English paragraph.

    python bench/generate.py [--cache-dir var/models] [--max-tokens 64] [--concurrency 8] [--threads 1]

On a shared, oversubscribed machine pass --threads 1 (see bench/classify.py).
"""

from __future__ import annotations

import argparse
import math
import os
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
QUESTIONS = [
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "List three primary colours.",
    "How many legs does a spider have?",
    "Give me a synonym for happy.",
]
GREEDY_PROMPTS = [f"Write a long story about {topic}." for topic in TOPICS] + QUESTIONS
PERPLEXITY_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Before his "
    "invention, books were copied by hand, a slow and expensive process that kept them in the hands of "
    "monasteries, universities and the very rich. Within fifty years of the first printed Bible, presses "
    "were running in more than two hundred cities across Europe, and millions of books had been produced. "
    "Cheaper books spread literacy, helped standardise spelling and grammar, and allowed scientists to share "
    "their results quickly and accurately. Historians often argue that the Reformation, the Scientific "
    "Revolution and the rise of newspapers would have been impossible without the printing press."
)
# name -> (load dtype, SERVE_QUANTIZATION value)
VARIANTS = {
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "fp16": ("float32", "fp16"),
    "int8": ("float32", "int8"),
}


class Method:
    def __init__(self, name: str, run: Callable[[list[Any]], int], batched: bool = False) -> None:
        self.name = name
        self.run = run  # runs the requests it is given, returns the completion tokens produced
        self.batched = batched  # runs all requests at once, else one at a time
        self.seconds = 0.0
        self.tokens = 0

    def timed(self, batch: list[Any]) -> None:
        started = time.perf_counter()
        self.tokens += self.run(batch)
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


def methods(variants: dict[str, Any], batch: list[Any]) -> list[Method]:
    import torch

    from workers.runtime.generate import generate, generate_batch, prompt_ids

    def one_stream(model: Any) -> Callable[[list[Any]], int]:
        return lambda some: sum(generate(model, request).completion_tokens for request in some)

    def batched(model: Any) -> Callable[[list[Any]], int]:
        return lambda some: sum(result.completion_tokens for result in generate_batch(model, some))

    def transformers_generate(some: list[Any]) -> int:
        model = variants["fp32"]
        produced = 0
        for request in some:
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
        *(Method(f"{name}: generate(), batch 1", one_stream(model)) for name, model in variants.items()),
        Method("fp32: transformers generate(), batch 1", transformers_generate),
        *(
            Method(f"{name}: generate_batch(), batch {len(batch)}", batched(model), batched=True)
            for name, model in variants.items()
        ),
    ]


def greedy_texts(model: Any) -> list[str]:
    from workers.runtime.generate import generate
    from workers.runtime.specs import GenerateRequest

    return [
        generate(
            model,
            GenerateRequest(messages=({"role": "user", "content": prompt},), max_tokens=32, temperature=0.0),
        )
        .choices[0]
        .text
        for prompt in GREEDY_PROMPTS
    ]


def perplexity(model: Any) -> float:
    import torch

    ids = model.tokenizer(PERPLEXITY_TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        return math.exp(model.model(input_ids=ids, labels=ids).loss.item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from workers.runtime.catalog import prepare_smollm2
    from workers.runtime.generate import generate
    from workers.runtime.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    ref = str(prepare_smollm2(args.cache_dir))
    variants = {
        name: load_model(ref, device="cpu", dtype=dtype, quantization=quantization)
        for name, (dtype, quantization) in VARIANTS.items()
    }
    load_before = os.getloadavg()
    baseline_texts = greedy_texts(variants["fp32"])
    quality = {}
    for name, model in variants.items():
        texts = baseline_texts if name == "fp32" else greedy_texts(model)
        same = sum(a == b for a, b in zip(baseline_texts, texts, strict=True))
        quality[name] = (same, perplexity(model))

    batch = requests(args.concurrency, args.max_tokens)
    for model in variants.values():
        generate(model, requests(1, 4)[0])  # warm-up
    timed = methods(variants, batch)
    # Turns as short as one request each (the whole batch for batched methods), in a rotating
    # order: a change in the machine's load over the run slows every method alike.
    turns = [[request] for request in batch]
    for round_index in range(args.rounds):
        for turn_index, turn in enumerate([*turns, batch]):
            takers = [m for m in timed if m.batched == (turn is batch)]
            shift = (round_index + turn_index) % len(takers)
            for method in takers[shift:] + takers[:shift]:
                method.timed(turn)
    load_after = os.getloadavg()

    print(
        f"\nSmolLM2-135M-Instruct, {args.concurrency} chat requests x up to {args.max_tokens} new tokens, "
        f"CPU ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
        f"{args.rounds} interleaved rounds; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(1 min), {os.cpu_count()} cores\n"
    )
    print(f"{'':42} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs transformers':>16} {'vs fp32':>8}")
    reference = next(m for m in timed if "transformers" in m.name)
    for method in timed:
        same_batch = [
            m
            for m in timed
            if m.name.startswith("fp32: generate") and m.name.split(", ")[-1] == method.name.split(", ")[-1]
        ]
        vs_fp32 = method.tokens_per_second / same_batch[0].tokens_per_second if same_batch else 1.0
        print(
            f"{method.name:42} {method.tokens:7d} {method.seconds:8.1f} {method.tokens_per_second:9.1f} "
            f"{method.tokens_per_second / reference.tokens_per_second:15.2f}x {vs_fp32:7.2f}x"
        )
    print(f"\n{'quality vs fp32':42} {'identical greedy':>17} {'perplexity':>11} {'vs fp32':>8}")
    for name, (same, ppl) in quality.items():
        print(
            f"{name:42} {f'{same}/{len(GREEDY_PROMPTS)}':>17} {ppl:11.3f} {ppl / quality['fp32'][1] - 1:+7.1%}"
        )


if __name__ == "__main__":
    main()
