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

With `--classifier`, the fine-tunes are LoRA classifiers of MiniLM-L6 instead (r=8 on query and
value, and a 4-label head of their own, as `method.classification.lora` trains them), and a call
classifies one short text.

    python bench/adapters.py [--adapters 50] [--rounds 2] [--max-tokens 16] [--threads 0] [--classifier]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/adapters.py` puts bench/, not the root, on the path

WORK = ROOT / "var" / "bench-adapters"
PROMPT = "Give me three tips for a good night's sleep."
TEXT = "The app crashes every time I try to upload a photo."
LABELS = ["billing", "bug", "praise", "question"]
# What a fine-tune's directory holds besides weights: what serving an adapter reads.
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def make_fine_tunes(
    base: Path, count: int, merged: int, classifier: bool = False
) -> tuple[list[Path], list[Path]]:
    """`count` adapter directories (adapter/ + tokenizer + config) and `merged` full copies."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.runtime.lora import attach_lora, resolve_lora, save_adapter, save_servable
    from workers.runtime.training import load_model

    shutil.rmtree(WORK, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if classifier:  # as the classifier trainer builds it: the head (what the base lacks) trained whole
        model, fresh = load_model(str(base), LABELS, tokenizer.pad_token_id)
        peft_model = attach_lora(
            model, resolve_lora({}, model), None, task_type="SEQ_CLS", modules_to_save=fresh
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        peft_model = attach_lora(model, resolve_lora({}, model), None)
    adapters, copies = [], []
    for index in range(count):
        torch.manual_seed(index)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:  # B starts at zero: a small update, like a short fine-tune's
                    parameter.normal_(0, 0.01)
                elif "modules_to_save" in name:  # each classifier its own head
                    parameter.normal_(0, 0.02)
        directory = WORK / f"ft-{index:02d}"
        save_adapter(peft_model, directory / "adapter")
        tokenizer.save_pretrained(directory)
        if classifier:
            classifier_model: Any = peft_model.get_base_model()
            classifier_model.config.architectures = [
                type(classifier_model).__name__
            ]  # as save_pretrained sets
            classifier_model.config.save_pretrained(directory)  # its labels and head
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
    parser.add_argument("--classifier", action="store_true", help="LoRA classifiers of MiniLM-L6 instead")
    args = parser.parse_args()

    import torch

    from workers.runtime.catalog import prepare_smollm2
    from workers.runtime.classify import classify
    from workers.runtime.generate import generate
    from workers.runtime.models import ModelCache, estimate_nbytes
    from workers.runtime.specs import ClassifyRequest, GenerateRequest

    if args.threads:
        torch.set_num_threads(args.threads)
    to_classify = ClassifyRequest(texts=(TEXT,))
    request = GenerateRequest(
        messages=({"role": "user", "content": PROMPT},), max_tokens=args.max_tokens, temperature=0
    )
    if args.classifier:
        from bench.finetune import minilm_dir

        base = minilm_dir()
        what = f"MiniLM-L6, {args.adapters} LoRA classifiers (r=8, query+value, a 4-label head)"
    else:
        base = prepare_smollm2(args.cache_dir)
        what = f"SmolLM2-135M-Instruct, {args.adapters} LoRA fine-tunes (r=8, q_proj+v_proj)"

    def call(loaded: Any) -> int:
        if args.classifier:
            return classify(loaded, to_classify).input_tokens
        return generate(loaded, request).completion_tokens

    adapters, copies = make_fine_tunes(base, args.adapters, merged=2, classifier=args.classifier)

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
            turns: list[tuple[str, Callable[[], Any]]] = [
                ("one model", lambda: one.get(str(copies[0]))),
                ("adapters, round-robin", partial(ours.get_adapted, str(base), str(directory))),
            ]
            if index % 10 == 0:  # each a full load: a few of them suffice for the median
                turns.append(("merged, round-robin", partial(before.get, str(copies[index // 10 % 2]))))
            shift = (round_index + index) % len(turns)
            for name, get in turns[shift:] + turns[:shift]:
                tick = time.perf_counter()
                tokens[name] += call(get())
                times[name].append(time.perf_counter() - tick)
    load_after = os.getloadavg()

    floor = statistics.median(times["one model"])
    one_call = (
        "one short text classified"
        if args.classifier
        else f"a chat call of up to {args.max_tokens} greedy tokens"
    )
    print(
        f"\n{what}, {one_call}, SERVE_QUANTIZATION=auto ({ours.get(str(base)).quantization}), "
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
