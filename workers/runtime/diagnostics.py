"""Per-example diagnostics after a classifier fine-tune: the loss of every validation row under
the final model, with the rows most likely mislabelled flagged (the model is confident another
label is right). No Django: a worker calls it, a test can too."""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.runtime.classify import classify
from workers.runtime.data import TRAINING_FILE, VALIDATION_FILE, Example, read_examples, stratified_split
from workers.runtime.models import LoadedModel
from workers.runtime.specs import VALIDATION_FRACTION, ClassifyRequest, TrainSpec

# A row is flagged when the model gives another label at least this probability.
MISLABEL_CONFIDENCE = 0.8


@dataclass(frozen=True)
class RowDiagnosis:
    line: int
    text: str
    label: str
    predicted: str
    label_probability: float
    loss: float
    likely_mislabelled: bool


def validation_examples(spec: TrainSpec) -> list[Example]:
    """The same validation rows the training run evaluated on (the split is seeded)."""
    if spec.validation_file:
        return read_examples(spec.validation_file, spec.text_field, spec.label_field, source=VALIDATION_FILE)
    examples = read_examples(spec.training_file, spec.text_field, spec.label_field, source=TRAINING_FILE)
    return stratified_split(examples, VALIDATION_FRACTION, spec.hyperparameters.seed)[1]


def diagnose(model: LoadedModel, examples: list[Example]) -> list[RowDiagnosis]:
    """Every row's loss, highest first (the likeliest label errors lead)."""
    if not examples:
        return []
    result = classify(model, ClassifyRequest(texts=tuple(e.text for e in examples)))
    rows = []
    for example, scores in zip(examples, result.results, strict=True):
        by_label = {s.label: s.score for s in scores}
        p_label = by_label.get(example.label, 0.0)
        top = scores[0]
        rows.append(
            RowDiagnosis(
                line=example.line,
                text=example.text,
                label=example.label,
                predicted=top.label,
                label_probability=round(p_label, 6),
                loss=round(-math.log(max(p_label, 1e-12)), 6),
                likely_mislabelled=top.label != example.label and top.score >= MISLABEL_CONFIDENCE,
            )
        )
    return sorted(rows, key=lambda r: -r.loss)
