"""Distillation: a student classifier against the LLM teacher it learned from.

SmolLM2-135M-Instruct (local, greedy) labels N synthetic reviews through our labelling prompt and
strict parser, in batches of 8, as a distillation job does. MiniLM-L6 then learns the teacher's
labels with our classification trainer (hard labels, as from any generation teacher), 20% of the
texts held out. Reported, all from this one run:
- the teacher: answers parsed, accuracy against the reviews' true sentiment, texts/s;
- the student: agreement with the teacher and accuracy on the held-out texts, texts/s;
- texts/s of both over the same N texts (teacher: generate + parse; student: `classify`);
- cost per 1,000 texts of each at the list prices in settings.PRICE_BOOK, from the tokens each
  really used (teacher: prompt and answer tokens; student: one classified text and its tokens).

    python bench/distill.py [--n-texts 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/distill.py` puts bench/, not the root, on the path

from bench.load import BENCH_SECRETS  # noqa: E402

LABELS = ["negative", "positive"]
ITEMS = [
    "food",
    "service",
    "room",
    "hotel",
    "pizza",
    "staff",
    "movie",
    "phone",
    "battery",
    "delivery",
    "coffee",
    "app",
    "flight",
    "seat",
    "screen",
    "book",
    "camera",
    "support team",
    "price",
    "bed",
]
GOOD = [
    "excellent",
    "wonderful",
    "fantastic",
    "great",
    "amazing",
    "delightful",
    "superb",
    "lovely",
    "really helpful",
    "perfect",
]
BAD = [
    "terrible",
    "awful",
    "horrible",
    "disappointing",
    "dreadful",
    "rude",
    "broken",
    "useless",
    "really slow",
    "cold and bland",
]
OPENERS = ["Honestly,", "Overall", "I have to say", "To be fair,", "", "", "Last week", "As usual,"]
GOOD_TAILS = ["and I will come back.", "and I would recommend it.", "and worth every cent.", "."]
BAD_TAILS = ["and I will not come back.", "and I want a refund.", "and a waste of money.", "."]


def reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = LABELS[i % 2]
        words, tails = (GOOD, GOOD_TAILS) if label == "positive" else (BAD, BAD_TAILS)
        tail = rng.choice(tails)
        text = f"{rng.choice(OPENERS)} the {rng.choice(ITEMS)} was {rng.choice(words)}{'' if tail == '.' else ' '}{tail}"
        out.append((text.strip().capitalize(), label))
    rng.shuffle(out)
    return out


def list_price(model: str, unit: str) -> int:
    """Micro-dollars per million units from settings.PRICE_BOOK, as `cost_of` falls back to it."""
    from django.conf import settings

    book = settings.PRICE_BOOK
    names = [model, model.split(":")[1], "default"] if model.startswith("ft:") else [model, "default"]
    return next((book[name][unit] for name in names if unit in book.get(name, {})), 0)


def per_1000(model: str, usage: dict[str, float]) -> float:
    """Dollars per 1,000 texts, from the usage of one average text."""
    return sum(list_price(model, unit) * quantity for unit, quantity in usage.items()) / 1e6 * 1000 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-texts", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas.settings")
    for name, value in BENCH_SECRETS.items():
        os.environ.setdefault(name, value)

    import torch

    torch.set_num_threads(args.threads)
    from workers.runtime.catalog import catalog_model_dir, prepare_smollm2
    from workers.runtime.classify import classify
    from workers.runtime.distill import answer_max_tokens, held_out_indices, label_prompt, parse_label, score
    from workers.runtime.generate import generate_batch
    from workers.runtime.models import load_model
    from workers.runtime.specs import ClassifyRequest, GenerateRequest, Hyperparameters, TrainSpec
    from workers.runtime.training import train

    cache = ROOT / "var" / "models"
    teacher = load_model(str(prepare_smollm2(cache)))
    minilm = catalog_model_dir("minilm-l6", cache)
    data = reviews(args.n_texts)
    texts = [text for text, _ in data]

    # -- the teacher labels every text
    max_tokens = answer_max_tokens(LABELS)
    began = time.perf_counter()
    results = []
    for start in range(0, len(texts), 8):
        batch = [
            GenerateRequest(messages=tuple(label_prompt(t, LABELS)), max_tokens=max_tokens, temperature=0.0)
            for t in texts[start : start + 8]
        ]
        results += generate_batch(teacher, batch)
    teacher_seconds = time.perf_counter() - began
    answers = [r.choices[0].text for r in results]
    teacher_labels = [parse_label(a, LABELS) for a in answers]
    teacher_usage = {
        "input_tokens": sum(r.prompt_tokens for r in results) / len(texts),
        "output_tokens": sum(r.completion_tokens for r in results) / len(texts),
    }

    # -- the student learns them (held-out texts and unparseable answers left out)
    held = held_out_indices(len(texts), 0.2, seed=0)
    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    rows = [(t, label) for i, (t, label) in enumerate(zip(texts, teacher_labels, strict=True)) if label]
    train_rows = [
        {"text": t, "label": label}
        for i, (t, label) in enumerate(zip(texts, teacher_labels, strict=True))
        if label and i not in held
    ]
    valid_rows = [{"text": texts[i], "label": teacher_labels[i]} for i in sorted(held) if teacher_labels[i]]
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    (work / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in valid_rows))
    hp = Hyperparameters(n_epochs=3, batch_size=16, learning_rate=1e-4, early_stopping_patience=0)
    spec = TrainSpec(
        job_id="bench",
        base_model_dir=str(minilm),
        training_file=str(work / "train.jsonl"),
        validation_file=str(work / "valid.jsonl"),
        output_dir=str(work / "student"),
        hyperparameters=hp,
        labels=tuple(LABELS),
    )
    began = time.perf_counter()
    student_run = train(spec, lambda _: None, lambda: False)
    train_seconds = time.perf_counter() - began
    student = load_model(student_run.model_dir)

    # -- both on the same texts
    classify(student, ClassifyRequest(texts=tuple(texts[:32])))  # warm-up
    began = time.perf_counter()
    predicted = classify(student, ClassifyRequest(texts=tuple(texts)))
    student_seconds = time.perf_counter() - began
    student_labels = [ranked[0].label for ranked in predicted.results]
    student_usage = {"classified_texts": 1.0, "input_tokens": predicted.input_tokens / len(texts)}

    order = sorted(held)
    gold = [data[i][1] for i in order]
    held_scores = score([teacher_labels[i] for i in order], [student_labels[i] for i in order], gold)
    parsed = sum(label is not None for label in teacher_labels)
    teacher_acc = sum(t == g for t, (_, g) in zip(teacher_labels, data, strict=True)) / len(texts)
    teacher_tps, student_tps = len(texts) / teacher_seconds, len(texts) / student_seconds
    teacher_cost = per_1000("smollm2-135m-instruct", teacher_usage)
    student_cost = per_1000("ft:minilm-l6:bench::x", student_usage)

    print(
        f"texts: {len(texts)} ({len(rows)} labelled by the teacher, {len(train_rows)} trained on, "
        f"{len(order)} held out); student trained in {train_seconds:.0f} s"
    )
    print(
        f"teacher answers parsed: {parsed}/{len(texts)} ({parsed / len(texts):.1%}); "
        f"teacher accuracy (all texts, unparsed = wrong): {teacher_acc:.3f}"
    )
    print(
        f"held out: student agrees with the teacher on {held_scores.agreement:.3f} of {held_scores.compared}; "
        f"accuracy teacher {held_scores.teacher_accuracy:.3f}, student {held_scores.student_accuracy:.3f}"
    )
    print(f"{'':24}{'teacher (SmolLM2-135M)':>24}{'student (MiniLM-L6)':>22}{'ratio':>9}")
    print(f"{'texts/s':24}{teacher_tps:>24.2f}{student_tps:>22.1f}{student_tps / teacher_tps:>8.0f}x")
    print(
        f"{'$ per 1,000 texts':24}{teacher_cost:>24.5f}{student_cost:>22.5f}{teacher_cost / student_cost:>8.1f}x"
    )
    print(
        f"{'tokens per text':24}{teacher_usage['input_tokens']:>16.1f} in, {teacher_usage['output_tokens']:.1f} out"
        f"{student_usage['input_tokens']:>16.1f} in"
    )


if __name__ == "__main__":
    main()
