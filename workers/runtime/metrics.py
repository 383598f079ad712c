"""Classification metrics in plain Python (no sklearn in the worker image)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def confusion_matrix(golds: Sequence[int], preds: Sequence[int], n_labels: int) -> list[list[int]]:
    """Rows are true labels, columns predicted labels, both in label-id order."""
    matrix = [[0] * n_labels for _ in range(n_labels)]
    for gold, pred in zip(golds, preds, strict=True):
        matrix[gold][pred] += 1
    return matrix


def _ratio(numerator: float, denominator: float) -> float:
    # An undefined precision/recall (nothing predicted / nothing present) counts as 0, as in sklearn.
    return numerator / denominator if denominator else 0.0


def per_class_scores(matrix: list[list[int]], labels: Sequence[str]) -> dict[str, dict[str, float | int]]:
    scores: dict[str, dict[str, float | int]] = {}
    for i, label in enumerate(labels):
        true_positives = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = _ratio(true_positives, predicted)
        recall = _ratio(true_positives, support)
        scores[label] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": support,
        }
    return scores


def classification_metrics(
    golds: Sequence[int], preds: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """accuracy, macro/micro/weighted F1, per-class scores and the confusion matrix.

    Macro F1 averages over the labels that occur in golds or predictions (sklearn's default),
    so a training label absent from a small validation set does not drag the score to zero.
    """
    matrix = confusion_matrix(golds, preds, len(labels))
    per_class = per_class_scores(matrix, labels)
    total = len(golds)
    correct = sum(matrix[i][i] for i in range(len(labels)))
    seen = [label for i, label in enumerate(labels) if sum(matrix[i]) or sum(row[i] for row in matrix)]
    accuracy = _ratio(correct, total)
    return {
        "accuracy": accuracy,
        "f1_macro": _ratio(sum(float(per_class[label]["f1"]) for label in seen), len(seen)),
        # Single-label classification: every error is one false positive and one false negative,
        # so micro precision = micro recall = micro F1 = accuracy.
        "f1_micro": accuracy,
        "f1_weighted": _ratio(sum(float(s["f1"]) * int(s["support"]) for s in per_class.values()), total),
        "per_class": per_class,
        "confusion_matrix": matrix,
        "labels": list(labels),
    }
