"""Many LoRA fine-tunes of one base on one worker: 50 adapters of SmolLM2-135M-Instruct called
round-robin, against calling one fine-tune again and again.

Three ways a worker answers, each call a short chat (greedy, up to `--max-tokens` new tokens), on the
worker's own model cache with its serving default (SERVE_QUANTIZATION=auto):
- one model: one fine-tune's merged weights, held in the cache and called every time (the floor);
- adapters (ours): 50 fine-tunes called in turn, each a view of the one cached base
  (`ModelCache.get_adapted`); a first round loads each adapter, the later rounds are timed;
- merged, round-robin (before): each fine-tune is a full model in the LRU cache. Called in turn, more
  fine-tunes than the cache holds miss on every call; two merged copies and a cache that holds one
  reproduce that without writing 50 copies of the weights to disk.

The adapters are random (r=8 on q_proj and v_proj, peft's default for Llama, as our training makes
them) rather than trained: their speed does not depend on what they learned. The calls of the
methods alternate, so a change in the machine's load slows each alike: compare the ratios.

    python bench/adapters.py [--adapters 50] [--rounds 2] [--max-tokens 16] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/adapters.py` puts bench/, not the root, on the path

WORK = ROOT / "var" / "bench-adapters"
PROMPT = "Give me three tips for a good night's sleep."
# What a fine-tune's directory holds besides weights: what serving an adapter reads.
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def make_fine_tunes(base: Path, count: int, merged: int) -> tuple[list[Path], list[Path]]:
    """`count` adapter directories (adapter/ + tokenizer + config) and `merged` full copies."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.runtime.lora import attach_lora, resolve_lora, save_adapter, save_servable

    shutil.rmtree(WORK, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = attach_lora(model, resolve_lora({}, model), None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    adapters, copies = [], []
    for index in range(count):
        torch.manual_seed(index)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:  # B starts at zero: a small update, like a short fine-tune's
                    parameter.normal_(0, 0.01)
        directory = WORK / f"ft-{index:02d}"
        save_adapter(peft_model, directory / "adapter")
        tokenizer.save_pretrained(directory)
        for name in SMALL_FILES:
            if (base / name).exists() and not (directory / name).exists():
                shutil.copy2(base / name, directory / name)
        adapters.append(directory)
        if index < merged:
            full = WORK / f"merged-{index:02d}"
            save_servable(peft_model, full)
            tokenizer.save_pretrained(full)
            copies.append(full)
    return adapters, copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds over all adapters")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from workers.runtime.catalog import prepare_smollm2
    from workers.runtime.generate import generate
    from workers.runtime.models import ModelCache, estimate_nbytes
    from workers.runtime.specs import GenerateRequest

    if args.threads:
        torch.set_num_threads(args.threads)
    base = prepare_smollm2(args.cache_dir)
    adapters, copies = make_fine_tunes(base, args.adapters, merged=2)
    request = GenerateRequest(
        messages=({"role": "user", "content": PROMPT},), max_tokens=args.max_tokens, temperature=0
    )

    def call(loaded: Any) -> int:
        return generate(loaded, request).completion_tokens

    ours = ModelCache(4 * 1024**3, device="cpu", quantization="auto")
    one = ModelCache(4 * 1024**3, device="cpu", quantization="auto")
    # Room for one merged model: every call of a round-robin misses, as with 50 in a 4 GiB cache.
    before = ModelCache(int(estimate_nbytes(str(copies[0])) * 1.5), device="cpu", quantization="auto")

    load_before = os.getloadavg()
    started = time.perf_counter()
    call(one.get(str(copies[0])))  # warm-up, and the one model's load
    cold = []
    for directory in adapters:  # the first round: each adapter read from disk once
        tick = time.perf_counter()
        call(ours.get_adapted(str(base), str(directory)))
        cold.append(time.perf_counter() - tick)
    times: dict[str, list[float]] = {"one model": [], "adapters, round-robin": [], "merged, round-robin": []}
    tokens = {name: 0 for name in times}
    for round_index in range(args.rounds):
        for index, directory in enumerate(adapters):
            turns = [
                ("one model", lambda: one.get(str(copies[0]))),
                ("adapters, round-robin", lambda d=directory: ours.get_adapted(str(base), str(d))),
            ]
            if index % 10 == 0:  # each a full load: a few of them suffice for the median
                turns.append(("merged, round-robin", lambda i=index: before.get(str(copies[i // 10 % 2]))))
            shift = (round_index + index) % len(turns)
            for name, get in turns[shift:] + turns[:shift]:
                tick = time.perf_counter()
                tokens[name] += call(get())
                times[name].append(time.perf_counter() - tick)
    load_after = os.getloadavg()

    floor = statistics.median(times["one model"])
    print(
        f"\nSmolLM2-135M-Instruct, {args.adapters} LoRA fine-tunes (r=8, q_proj+v_proj), a chat call of up to "
        f"{args.max_tokens} greedy tokens, SERVE_QUANTIZATION=auto ({ours.get(str(base)).quantization}), "
        f"{torch.get_num_threads()} threads, {args.rounds} timed rounds, {time.perf_counter() - started:.0f} s; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min), {os.cpu_count()} cores\n"
    )
    print(f"{'':26} {'calls':>6} {'p50 ms':>8} {'p90 ms':>8} {'vs one model':>13}")
    for name, seconds in times.items():
        ordered = sorted(seconds)
        p50, p90 = statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]
        print(f"{name:26} {len(ordered):6d} {p50 * 1000:8.1f} {p90 * 1000:8.1f} {p50 / floor:12.2f}x")
    adapter_bytes = ours.nbytes - ours.get(str(base)).nbytes
    print(
        f"\nfirst call of each adapter (read from disk): p50 {statistics.median(cold) * 1000:.1f} ms; "
        f"the cache holds the base ({ours.get(str(base)).nbytes / 2**20:.0f} MiB) and {args.adapters} adapters "
        f"({adapter_bytes / 2**20:.1f} MiB, {adapter_bytes / args.adapters / 2**20:.2f} MiB each); "
        f"merged, each fine-tune would take {estimate_nbytes(str(copies[0])) / 2**20:.0f} MiB"
    )
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
