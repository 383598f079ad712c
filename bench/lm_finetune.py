"""Supervised fine-tuning throughput and memory: our `train_lm` against transformers' Trainer.

Both runs see the same chats (synthetic, mixed lengths, single- and multi-turn), tokenized the
same way (our chat-template encoder, so the token ids and the loss mask are identical), for one
epoch of the same number of steps at the same batch size, learning rate and schedule (no warmup,
no weight decay, linear decay, clipping at 1.0). The Trainer keeps its defaults otherwise, with
the usual SFT collator (`DataCollatorForSeq2Seq`: per-batch padding, labels padded with -100) and
no length grouping. Ours groups similar lengths and runs the LM head only where a token is learned.

Each run is its own subprocess, so its peak RSS (`ru_maxrss`) is its own. "Loop" time runs from
the first step to the last (our banner event to our last step event; the Trainer's
on_train_begin to on_train_end); "total" is the whole call, which for us also includes the
end-of-epoch evaluation on 16 held-out chats, a checkpoint (weights and optimizer state) and
saving the final model, and for the Trainer only `trainer.train()`: the total leans against us.
tokens/s counts non-padding tokens (prompt and reply), the same number for both.

Default model: the real SmolLM2-135M-Instruct (full fine-tune, fp32, CPU). `--model gpt2-small`
swaps in a randomly initialised 6-layer, 384-wide GPT-2 with SmolLM2's tokenizer for slower hosts.
Threads default to 1: on a shared 2-core host, two intra-op threads spin against other load and
make both runs several times slower and noisy; pass `--threads 2` on a quiet machine.

Ours also runs a second time with bf16 autocast (fp32 weights and AdamW), and a second table sets
it beside our float32 run: tokens/s in the loop, the ratio, and the loss on the 16 held-out chats.
The Trainer runs in float32, like our first run. `--skip-trainer` runs only that comparison.

    python bench/lm_finetune.py [--model smollm2|gpt2-small] [--steps 16] [--batch-size 8] [--lora]
        [--skip-trainer]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/lm_finetune.py` puts bench/, not the root, on the path


def words(text: str) -> list[str]:
    return text.split()


WORDS = words(
    "the a and of to in it is was that for on with as at by this from they we you he she but or an had "
    "not are have one all were when there can more some what about out up so people time day week year "
    "good new first last long great little old right big high different small large next early young "
    "important few public bad same able really just very also then after before model data train "
    "question answer explain why how where recipe travel code music history science garden weather"
)
N_VALID = 16


# --- data --------------------------------------------------------------------------------------


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high))).capitalize() + "."


def make_chats(n: int, seed: int) -> list[dict[str, Any]]:
    """Chats of very mixed length, as real SFT sets are: short Q&A next to long answers, a third of
    them with a system prompt, a fifth with a second exchange."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": sentence(rng, 4, 12)})
        for _turn in range(2 if rng.random() < 0.2 else 1):
            messages.append({"role": "user", "content": sentence(rng, 3, 40)})
            messages.append({"role": "assistant", "content": sentence(rng, 2, rng.choice((10, 30, 90)))})
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- models ------------------------------------------------------------------------------------


def prepare_model(name: str, work: Path) -> Path:
    from workers.runtime.catalog import prepare_smollm2

    smollm2 = prepare_smollm2(ROOT / "var" / "models")  # converted once, then reused
    if name == "smollm2":
        return smollm2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=384,
        n_layer=6,
        n_head=6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = work / "gpt2-small"
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --- the two runs (each in its own subprocess) -------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.start_wall = self.start_cpu = self.end_wall = self.end_cpu = 0.0

    def start(self) -> None:
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.end_wall, self.end_cpu = time.perf_counter(), time.process_time()

    def seconds(self) -> tuple[float, float]:
        return self.end_wall - self.start_wall, self.end_cpu - self.start_cpu


def make_spec(config: dict[str, Any], output: str) -> Any:
    from workers.runtime.specs import Hyperparameters, TrainSpec

    return TrainSpec(
        job_id="bench",
        base_model_dir=config["model_dir"],
        training_file=config["train"],
        validation_file=config["valid"],
        output_dir=output,
        hyperparameters=Hyperparameters(
            n_epochs=1,
            batch_size=config["batch_size"],
            learning_rate=config["learning_rate"],
            warmup_ratio=0.0,  # the Trainer's default schedule: no warmup, no weight decay
            weight_decay=0.0,
            max_seq_length=config["max_seq_length"],
            early_stopping_patience=0,
            seed=config["seed"],
        ),
        task="generation",
        lora={} if config["lora"] else None,
        precision=config.get("precision", "float32"),
    )


def encoded_train_set(config: dict[str, Any]) -> Any:
    from workers.runtime.lm_data import encode_split, load_lm_tokenizer, read_records

    spec = make_spec(config, "")
    tokenizer = load_lm_tokenizer(config["model_dir"])
    split, _ = encode_split(read_records(config["train"]), spec, tokenizer, config["max_seq_length"])
    return tokenizer, split


def run_ours(config: dict[str, Any], work: Path) -> dict[str, Any]:
    from workers.runtime.data import epoch_batches
    from workers.runtime.sft import train_lm
    from workers.runtime.specs import ProgressEvent

    loop, total = Clock(), Clock()
    losses: list[float] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.kind == "log" and event.step == 0 and not loop.start_wall:
            loop.start()  # the banner: emitted right before the first step
        elif event.kind == "step":
            loop.stop()
            losses.append(event.metrics["train_loss"])

    total.start()
    result = train_lm(make_spec(config, str(work / "ours")), on_progress, lambda: False)
    total.stop()
    _, split = encoded_train_set(config)
    lengths = split.lengths()
    batches = epoch_batches(lengths, config["batch_size"], config["seed"], 0)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    outcome = figures(loop, total, result.trained_tokens, padded, result.steps, sum(losses) / len(losses))
    return {**outcome, "valid_loss": result.metrics["valid_loss"]}


def run_trainer(config: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    loop, total = Clock(), Clock()
    total.start()
    tokenizer, split = encoded_train_set(config)
    dataset = [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
        for ids, labels in zip(split.input_ids, split.labels, strict=True)
    ]
    model = AutoModelForCausalLM.from_pretrained(config["model_dir"], dtype=torch.float32)
    if config["lora"]:
        from workers.runtime.lora import attach_lora, resolve_lora

        model = attach_lora(model, resolve_lora({}, model), None)  # the same peft wrapping as ours
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    padded = 0

    def counting_collate(features: list[dict[str, Any]]) -> Any:
        nonlocal padded
        batch = collate(features)
        padded += batch["input_ids"].numel()
        return batch

    class Timing(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            loop.start()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            loop.stop()

    steps = -(-len(dataset) // config["batch_size"])
    arguments = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=config["batch_size"],
        max_steps=steps,  # one epoch, like ours
        learning_rate=config["learning_rate"],
        seed=config["seed"],
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,
        data_collator=counting_collate,
        callbacks=[Timing()],
    )
    output = trainer.train()
    total.stop()
    tokens = sum(len(ids) for ids in split.input_ids)
    return figures(loop, total, tokens, padded, output.global_step, output.training_loss)


def figures(loop: Clock, total: Clock, tokens: int, padded: int, steps: int, loss: float) -> dict[str, Any]:
    loop_wall, loop_cpu = loop.seconds()
    total_wall, total_cpu = total.seconds()
    return {
        "loop_wall": loop_wall,
        "loop_cpu": loop_cpu,
        "total_wall": total_wall,
        "total_cpu": total_cpu,
        "tokens": tokens,
        "padded_tokens": padded,
        "steps": steps,
        "mean_train_loss": loss,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }


def child(which: str, config_path: str, precision: str) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    config = {**json.loads(Path(config_path).read_text()), "precision": precision}
    torch.set_num_threads(config["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_ours if which == "ours" else run_trainer)(config, Path(tmp))
    print("RESULT " + json.dumps(result))


def run_child(which: str, config_path: Path, precision: str = "float32") -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", which, "--config", str(config_path), "--precision", precision],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        sys.exit(f"the {which} run failed:\n{completed.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


# --- report ------------------------------------------------------------------------------------


def print_table(
    ours: dict[str, Any], baseline: dict[str, Any], args: argparse.Namespace, config: dict[str, Any]
) -> None:
    method = "LoRA r=8" if args.lora else "full fine-tune"
    print(
        f"\n{args.model} SFT ({method}), {ours['steps']} steps x batch {args.batch_size}, "
        f"{ours['tokens']:,} tokens, max_seq_length {config['max_seq_length']}, CPU threads {args.threads}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'':22} {'loop s':>8} {'tokens/s':>9} {'cpu s':>8} {'tokens/cpu-s':>13} {'total s':>8} "
        f"{'padding':>8} {'peak RSS MB':>12} {'mean loss':>10}"
    )
    print(header)
    for name, o in (("modelworks train_lm", ours), ("transformers Trainer", baseline)):
        padding = 1 - o["tokens"] / o["padded_tokens"]
        print(
            f"{name:22} {o['loop_wall']:8.1f} {o['tokens'] / o['loop_wall']:9.1f} {o['loop_cpu']:8.1f} "
            f"{o['tokens'] / o['loop_cpu']:13.1f} {o['total_wall']:8.1f} {padding:8.1%} "
            f"{o['max_rss_mb']:12.0f} {o['mean_train_loss']:10.3f}"
        )
    print(
        f"speed-up (tokens/s in the loop): {baseline['loop_wall'] / ours['loop_wall']:.2f}x wall, "
        f"{baseline['loop_cpu'] / ours['loop_cpu']:.2f}x CPU time; whole call "
        f"{baseline['total_wall'] / ours['total_wall']:.2f}x; peak memory "
        f"{ours['max_rss_mb'] / baseline['max_rss_mb']:.2f}x the Trainer's"
    )


def print_precision_table(fp32: dict[str, Any], bf16: dict[str, Any], args: argparse.Namespace) -> None:
    from workers.runtime.models import cpu_has_bf16

    method = "LoRA r=8" if args.lora else "full fine-tune"
    print(
        f"\n{args.model} SFT ({method}), float32 against bf16 autocast (fp32 weights and AdamW), "
        f"{fp32['steps']} steps x batch {args.batch_size}, CPU threads {args.threads}; "
        f"CPU bf16 units (AVX512-BF16 or AMX): {'yes' if cpu_has_bf16() else 'no'}; "
        f"load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}"
    )
    print(
        f"{'':22} {'loop s':>8} {'tokens/s':>9} {'cpu s':>8} {'tokens/cpu-s':>13} {'mean loss':>10} {'valid loss':>11}"
    )
    for name, o in (("float32", fp32), ("bfloat16", bf16)):
        print(
            f"{name:22} {o['loop_wall']:8.1f} {o['tokens'] / o['loop_wall']:9.1f} {o['loop_cpu']:8.1f} "
            f"{o['tokens'] / o['loop_cpu']:13.1f} {o['mean_train_loss']:10.3f} {o['valid_loss']:11.4f}"
        )
    print(
        f"bf16 / float32: {fp32['loop_wall'] / bf16['loop_wall']:.2f}x tokens/s, "
        f"{fp32['loop_cpu'] / bf16['loop_cpu']:.2f}x tokens/cpu-s; "
        f"valid loss difference: {bf16['valid_loss'] - fp32['valid_loss']:+.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", choices=("smollm2", "gpt2-small"), default="smollm2")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--lora", action="store_true", help="LoRA (r=8 on q_proj/v_proj) instead of full")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the runs; keep each one's fastest")
    parser.add_argument("--child", choices=("ours", "trainer"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--skip-trainer", action="store_true", help="only our float32 and bf16 runs")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.config, args.precision)
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chats = make_chats(args.steps * args.batch_size + N_VALID, seed=args.seed)
        config = {
            "model_dir": str(prepare_model(args.model, work)),
            "train": str(write_jsonl(work / "train.jsonl", chats[N_VALID:])),
            "valid": str(write_jsonl(work / "valid.jsonl", chats[:N_VALID])),
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "max_seq_length": args.max_seq_length,
            "lora": args.lora,
            "threads": args.threads,
            "seed": args.seed,
        }
        config_path = work / "config.json"
        config_path.write_text(json.dumps(config))
        ours_runs, bf16_runs, baseline_runs = [], [], []
        for repeat in range(1, args.repeats + 1):
            print(f"[{repeat}/{args.repeats}] modelworks train_lm, float32 ...", file=sys.stderr, flush=True)
            ours_runs.append(run_child("ours", config_path))
            print(f"[{repeat}/{args.repeats}] modelworks train_lm, bfloat16 ...", file=sys.stderr, flush=True)
            bf16_runs.append(run_child("ours", config_path, "bfloat16"))
            if not args.skip_trainer:
                print(f"[{repeat}/{args.repeats}] transformers Trainer ...", file=sys.stderr, flush=True)
                baseline_runs.append(run_child("trainer", config_path))
    # The fastest run is the one least disturbed by other load on the machine.
    ours, bf16 = min(ours_runs, key=lambda o: o["loop_wall"]), min(bf16_runs, key=lambda o: o["loop_wall"])
    if baseline_runs:
        print_table(ours, min(baseline_runs, key=lambda o: o["loop_wall"]), args, config)
    print_precision_table(ours, bf16, args)


if __name__ == "__main__":
    main()
