"""Classification throughput: our `classify` against transformers' pipeline and the tutorial loop.

MiniLM-L6 with a fresh 2-label head (built once into a temp dir), the same 2,000 texts of
mixed length (5-200 words, shuffled), all in one run:
- ours: `classify()` with batch_size=32 (texts sorted by length, padded per batch);
- pipeline: `pipeline("text-classification", batch_size=32)`, all label scores;
- tutorial: one text at a time, padded to 128 tokens (longer texts truncated: it does less work).
Every method gets one untimed warm-up batch. Timings include tokenization.

    python bench/classify.py [--n-texts 2000] [--batch-size 32]
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

VOCABULARY = (
    "the a service was quick and friendly but our food arrived cold after waiting nearly an hour "
    "I would happily come back for the dessert menu which is inventive generous and fairly priced "
    "delivery never showed up support kept me on hold then closed my ticket without any reply "
    "great value solid build quality battery lasts two days screen is bright even outdoors "
    "terrible experience rude staff dirty tables overpriced drinks loud music cannot recommend"
).split()


def make_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(VOCABULARY, k=rng.randint(5, 200))).capitalize() + "." for _ in range(n)]


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def run_ours(model_dir: Path, texts: list[str], batch_size: int) -> tuple[float, list[str]]:
    from workers.runtime.classify import classify
    from workers.runtime.models import load_model
    from workers.runtime.specs import ClassifyRequest

    model = load_model(str(model_dir), device="cpu")
    classify(model, ClassifyRequest(texts=tuple(texts[:batch_size]), batch_size=batch_size))  # warm-up
    seconds, result = timed(lambda: classify(model, ClassifyRequest(texts=tuple(texts), batch_size=batch_size)))
    return seconds, [scores[0].label for scores in result.results]


def run_pipeline(model_dir: Path, texts: list[str], batch_size: int) -> tuple[float, list[str]]:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(model_dir), device="cpu", top_k=None)
    classifier(texts[:batch_size], batch_size=batch_size, truncation=True)  # warm-up
    seconds, result = timed(lambda: classifier(texts, batch_size=batch_size, truncation=True))
    return seconds, [scores[0]["label"] for scores in result]


def run_tutorial(model_dir: Path, texts: list[str]) -> tuple[float, list[str]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def one(text: str) -> str:
        inputs = tokenizer(text, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        return str(model.config.id2label[int(logits.softmax(-1).argmax())])

    one(texts[0])  # warm-up
    return timed(lambda: [one(text) for text in texts])


def agreement(labels: list[str], reference: list[str]) -> float:
    return sum(a == b for a, b in zip(labels, reference, strict=True)) / len(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from workers.runtime.catalog import build_minilm_classifier

    texts = make_texts(args.n_texts, args.seed)
    n_words = [len(t.split()) for t in texts]
    with tempfile.TemporaryDirectory() as work:
        model_dir = build_minilm_classifier(Path(work) / "minilm-2", ["negative", "positive"])
        ours_s, ours = run_ours(model_dir, texts, args.batch_size)
        pipeline_s, piped = run_pipeline(model_dir, texts, args.batch_size)
        tutorial_s, tutorial = run_tutorial(model_dir, texts)

    print(
        f"\nMiniLM-L6 2-label classifier, {len(texts)} texts of {min(n_words)}-{max(n_words)} words "
        f"(mean {sum(n_words) / len(n_words):.0f}), CPU, {torch.get_num_threads()} threads\n"
    )
    print(f"{'':34} {'seconds':>8} {'texts/s':>8} {'vs pipeline':>12} {'same top label':>15}")
    rows = [
        (f"ours: classify(), batch {args.batch_size}", ours_s, ours),
        (f"pipeline, batch_size={args.batch_size}", pipeline_s, piped),
        ("tutorial: 1 at a time, pad 128", tutorial_s, tutorial),
    ]
    for name, seconds, labels in rows:
        ratio = pipeline_s / seconds
        print(
            f"{name:34} {seconds:8.1f} {len(texts) / seconds:8.1f} {ratio:11.2f}x "
            f"{agreement(labels, piped):14.1%}"
        )


if __name__ == "__main__":
    main()
