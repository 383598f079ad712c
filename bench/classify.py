"""Classification throughput: our `classify` against transformers' pipeline and the tutorial loop.

MiniLM-L6 with a fresh 2-label head (built once into a temp dir), the same 2,000 texts of
mixed length (5-200 words, shuffled), all in one run:
- ours: `classify()` with batch_size=32 (texts sorted by length, padded per batch), once in
  float32 like the baselines and once with dtype "auto" (bfloat16 on AMX CPUs and GPUs);
- pipeline: `pipeline("text-classification", batch_size=32)`, all label scores;
- tutorial: one text at a time, padded to 128 tokens (longer texts truncated: it does less work).
Every method gets one untimed warm-up batch. Timings include tokenization. The methods take
turns on slices of the texts (see `measure`), so a busy machine slows them alike.

    python bench/classify.py [--n-texts 2000] [--batch-size 32] [--threads 1]

On a shared, oversubscribed machine pass --threads 1: with more threads than free cores,
every op waits at a thread barrier for a descheduled thread and all methods slow 2-3x.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/classify.py` puts bench/, not the root, on the path


def words(text: str) -> list[str]:
    return text.split()


VOCABULARY = words(
    "the a service was quick and friendly but our food arrived cold after waiting nearly an hour "
    "I would happily come back for the dessert menu which is inventive generous and fairly priced "
    "delivery never showed up support kept me on hold then closed my ticket without any reply "
    "great value solid build quality battery lasts two days screen is bright even outdoors "
    "terrible experience rude staff dirty tables overpriced drinks loud music cannot recommend"
)


def make_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(VOCABULARY, k=rng.randint(5, 200))).capitalize() + "." for _ in range(n)]


class Method:
    """One way of classifying, loaded once; `run(texts)` returns the top label of each text."""

    def __init__(self, name: str, run: Callable[[list[str]], list[str]]) -> None:
        self.name = name
        self.run = run
        self.seconds = 0.0
        self.labels: list[str] = []

    def timed(self, texts: list[str]) -> None:
        started = time.perf_counter()
        self.labels += self.run(texts)
        self.seconds += time.perf_counter() - started


def ours(model_dir: Path, batch_size: int, dtype: str) -> Method:
    from workers.runtime.classify import classify
    from workers.runtime.models import load_model
    from workers.runtime.specs import ClassifyRequest

    model = load_model(str(model_dir), device="cpu", dtype=dtype)
    precision = str(next(model.model.parameters()).dtype).removeprefix("torch.")

    def run(texts: list[str]) -> list[str]:
        result = classify(model, ClassifyRequest(texts=tuple(texts), batch_size=batch_size))
        return [scores[0].label for scores in result.results]

    return Method(f"ours: classify(), {precision}" + (" (dtype auto)" if dtype == "auto" else ""), run)


def pipeline(model_dir: Path, batch_size: int) -> Method:
    from transformers import pipeline as make_pipeline

    classifier = make_pipeline("text-classification", model=str(model_dir), device="cpu", top_k=None)

    def run(texts: list[str]) -> list[str]:
        outputs: Any = classifier(texts, batch_size=batch_size, truncation=True)  # top_k=None: all labels
        return [scores[0]["label"] for scores in outputs]

    return Method(f"pipeline, batch_size={batch_size} (float32)", run)


def tutorial(model_dir: Path) -> Method:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def one(text: str) -> str:
        inputs = tokenizer(text, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        return str(model.config.id2label[int(logits.softmax(-1).argmax())])

    return Method("tutorial: 1 at a time, pad 128 (f32)", lambda texts: [one(text) for text in texts])


def measure(methods: list[Method], texts: list[str], rounds: int, warm_up: int) -> None:
    """Each round gives every method the same slice of texts, in a rotating order.

    Interleaving spreads the noise of a shared machine (other processes taking the CPU)
    over all methods instead of charging it to whichever ran at a bad moment.
    """
    for method in methods:
        method.run(texts[:warm_up])
    size = -(-len(texts) // rounds)
    for round_index in range(rounds):
        chunk = texts[round_index * size : (round_index + 1) * size]
        for method in methods[round_index % len(methods) :] + methods[: round_index % len(methods)]:
            method.timed(chunk)


def agreement(labels: list[str], reference: list[str]) -> float:
    return sum(a == b for a, b in zip(labels, reference, strict=True)) / len(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for every method (0: torch's default)"
    )
    args = parser.parse_args()

    import torch

    from workers.runtime.catalog import build_minilm_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = make_texts(args.n_texts, args.seed)
    n_words = [len(t.split()) for t in texts]
    with tempfile.TemporaryDirectory() as work:
        model_dir = build_minilm_classifier(Path(work) / "minilm-2", ["negative", "positive"])
        methods = [
            ours(model_dir, args.batch_size, "float32"),
            ours(model_dir, args.batch_size, "auto"),
            pipeline(model_dir, args.batch_size),
            tutorial(model_dir),
        ]
        measure(methods, texts, args.rounds, warm_up=args.batch_size)

    print(
        f"\nMiniLM-L6 2-label classifier, {len(texts)} texts of {min(n_words)}-{max(n_words)} words "
        f"(mean {sum(n_words) / len(n_words):.0f}), CPU, {torch.get_num_threads()} threads, "
        f"{args.rounds} interleaved rounds\n"
    )
    print(f"{'':40} {'seconds':>8} {'texts/s':>8} {'vs pipeline':>12} {'same top label':>15}")
    baseline = methods[2]
    for method in methods:
        print(
            f"{method.name:40} {method.seconds:8.1f} {len(texts) / method.seconds:8.1f} "
            f"{baseline.seconds / method.seconds:11.2f}x {agreement(method.labels, baseline.labels):14.1%}"
        )


if __name__ == "__main__":
    main()
