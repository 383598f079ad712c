"""Distillation's runtime parts: the strict answer parser, soft targets, the KD loss, and a tiny
student learning a tiny teacher's labels (no Django)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.workers.runtime.conftest import sentiment_rows, write_csv  # noqa: E402
from tests.workers.runtime.test_training import make_spec, one_thread, run  # noqa: E402, F401
from workers.runtime.classify import classify  # noqa: E402
from workers.runtime.data import Batch  # noqa: E402
from workers.runtime.distill import (  # noqa: E402
    held_out_indices,
    label_prompt,
    parse_label,
    prompt_overhead_tokens,
    score,
    soften,
)
from workers.runtime.models import load_model  # noqa: E402
from workers.runtime.specs import ClassifyRequest  # noqa: E402
from workers.runtime.training import batch_loss  # noqa: E402

LABELS = ["negative", "positive"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("positive", "positive"),
        ("  Positive\n", "positive"),
        ('"negative".', "negative"),
        ("**positive**", "positive"),
        ("`NEGATIVE`", "negative"),
        ("positive, I think", None),
        ("not positive", None),
        ("positive negative", None),
        ("Label: positive", "positive"),
        ("The text is negative.", "negative"),
        ("it's *positive*", "positive"),
        ("The text is a positive one.", None),
        ("The text is not positive", None),
        ("Answer: maybe", None),
        ("", None),
        (None, None),
        ("neutral", None),
    ],
)
def test_a_teachers_answer_must_name_exactly_one_label(answer: str | None, expected: str | None) -> None:
    assert parse_label(answer, LABELS) == expected


def test_the_prompt_lists_every_label_and_the_text() -> None:
    messages = label_prompt("what a film", LABELS)

    assert messages == [
        {
            "role": "user",
            "content": "Classify the text as one of: negative, positive.\n\nText: what a film\n\n"
            "Answer with the label only.",
        }
    ]
    assert prompt_overhead_tokens(LABELS) >= (len(messages[0]["content"]) - len("what a film")) // 4


def test_softened_probabilities_are_the_softmax_of_the_logits_over_t() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5])
    probs = dict(zip("abc", torch.softmax(logits, -1).tolist(), strict=True))

    for temperature in (0.5, 1.0, 2.0, 5.0):
        expected = torch.softmax(logits / temperature, -1).tolist()
        assert list(soften(probs, temperature).values()) == pytest.approx(expected, abs=1e-6)
    # a tiny probability survives instead of becoming 0 (log space)
    assert soften({"a": 1.0, "b": 1e-40}, 4.0)["b"] > 0


def test_a_tiny_temperature_softens_to_the_top_label_not_to_nan() -> None:
    # the API takes any temperature above 0: at 1e-310 the logs divided by T overflowed to -inf
    for temperature in (1e-310, 5e-324, 1e-3):
        assert soften({"a": 0.7, "b": 0.2, "c": 0.1}, temperature) == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert soften({"a": 0.5, "b": 0.5}, 1e-310) == {"a": 0.5, "b": 0.5}


def test_held_out_texts_depend_only_on_the_seed() -> None:
    assert held_out_indices(200, 0.1, seed=7) == held_out_indices(200, 0.1, seed=7)
    assert len(held_out_indices(200, 0.1, seed=7)) == 20
    assert held_out_indices(200, 0.1, seed=7) != held_out_indices(200, 0.1, seed=8)


def test_scores_leave_unlabelled_texts_out_of_agreement_but_count_them_wrong_for_accuracy() -> None:
    teacher = ["a", None, "b", "a"]
    student = ["a", "a", "a", "a"]
    gold = ["a", "a", None, "b"]

    scores = score(teacher, student, gold)

    assert scores.agreement == round(2 / 3, 4)  # texts 0, 2, 3
    assert scores.teacher_accuracy == round(1 / 3, 4)  # texts 0, 1, 3: right, unparseable, wrong
    assert scores.student_accuracy == round(2 / 3, 4)
    assert (scores.compared, scores.with_labels) == (3, 3)


def _batch(soft: list[list[float]] | None) -> Batch:
    ids = torch.zeros((len(soft or [[0]]), 2), dtype=torch.long)
    labels = torch.tensor([max(range(len(row)), key=row.__getitem__) for row in soft or [[1.0]]])
    return Batch(ids, torch.ones_like(ids), labels, 4, None if soft is None else torch.tensor(soft))


def test_the_distillation_loss_is_zero_when_the_student_matches_the_teacher() -> None:
    teacher_logits = torch.tensor([[1.5, -0.5, 0.0], [0.0, 2.0, -1.0]])
    temperature = 3.0
    batch = _batch(torch.softmax(teacher_logits / temperature, -1).tolist())

    assert float(batch_loss(teacher_logits, batch, temperature)) == pytest.approx(0.0, abs=1e-6)
    assert float(batch_loss(teacher_logits + torch.tensor([1.0, 0.0, 0.0]), batch, temperature)) > 1e-3
    # targets with exact zeros give a finite loss
    zeros = _batch([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert math.isfinite(float(batch_loss(teacher_logits, zeros, temperature)))


def test_without_soft_targets_the_loss_is_cross_entropy() -> None:
    logits = torch.tensor([[1.0, 0.0]])
    batch = _batch(None)

    assert float(batch_loss(logits, batch)) == pytest.approx(math.log(1 + math.e**-1), abs=1e-6)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_student_learns_its_teachers_soft_labels(tmp_path: Path, tiny_bert_dir: Path) -> None:
    # a teacher fine-tuned on labelled data
    teacher_data = write_csv(tmp_path / "t.csv", sentiment_rows(96))
    teacher_run, _ = run(make_spec(tmp_path, tiny_bert_dir, teacher_data, "teacher", hp={"n_epochs": 6}))
    assert teacher_run.metrics["accuracy"] >= 0.9
    teacher = load_model(teacher_run.model_dir, dtype="float32")
    # labels unlabelled texts with its softened probabilities
    texts = [row["text"] for row in sentiment_rows(220, seed=5)]
    scored = classify(teacher, ClassifyRequest(texts=tuple(texts))).results
    rows = [
        {"text": text, "label": ranked[0].label, "soft": soften({s.label: s.score for s in ranked}, 2.0)}
        for text, ranked in zip(texts, scored, strict=True)
    ]
    held = held_out_indices(len(rows), 0.1, seed=3)
    train_rows = [row for i, row in enumerate(rows) if i not in held]
    valid_rows = [{"text": row["text"], "label": row["label"]} for i, row in enumerate(rows) if i in held]
    # a student (another initialisation) trained on them
    spec = make_spec(
        tmp_path,
        tiny_bert_dir,
        write_jsonl(tmp_path / "s.jsonl", train_rows),
        "student",
        validation_file=str(write_jsonl(tmp_path / "v.jsonl", valid_rows)),
        labels=("negative", "positive"),
        soft_label_field="soft",
        distill_temperature=2.0,
        hp={"seed": 11, "n_epochs": 6},
    )
    assert {row["label"] for row in valid_rows} == {"negative", "positive"}  # agreement is not trivial
    student_run, events = run(spec)

    student = load_model(student_run.model_dir, dtype="float32")
    predicted = classify(student, ClassifyRequest(texts=tuple(r["text"] for r in valid_rows))).results
    agreement = score(
        [r["label"] for r in valid_rows], [p[0].label for p in predicted], [None] * len(valid_rows)
    )
    assert agreement.agreement is not None and agreement.agreement >= 0.9, agreement
    losses = [e.metrics["train_loss"] for e in events if e.kind == "step"]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert student_run.labels == ["negative", "positive"]


def test_soft_targets_must_be_probabilities(tmp_path: Path, tiny_bert_dir: Path) -> None:
    rows = [{"text": "good film", "label": "positive", "soft": {"positive": 0.7, "negative": 0.7}}] * 4
    spec = make_spec(
        tmp_path, tiny_bert_dir, write_jsonl(tmp_path / "bad.jsonl", rows), soft_label_field="soft"
    )

    with pytest.raises(
        ValueError, match=r'training file, line 1: "soft" must map labels to probabilities that sum to 1'
    ):
        run(spec)


def test_a_fixed_label_set_keeps_labels_the_teacher_never_gave(tmp_path: Path, tiny_bert_dir: Path) -> None:
    rows = [{"text": r["text"], "label": r["label"]} for r in sentiment_rows(40)]
    spec = make_spec(
        tmp_path,
        tiny_bert_dir,
        write_jsonl(tmp_path / "d.jsonl", rows),
        labels=("negative", "neutral", "positive"),
        hp={"n_epochs": 1},
    )

    result, _ = run(spec)

    assert result.labels == ["negative", "neutral", "positive"]
    outside = make_spec(
        tmp_path, tiny_bert_dir, write_jsonl(tmp_path / "o.jsonl", rows), "o", labels=("a", "b")
    )
    with pytest.raises(
        ValueError, match=r"the training data has labels outside the label set: 'negative', 'positive'"
    ):
        run(outside)
