"""Distillation's pure parts: the prompt a generation teacher answers, the strict parser of its
answer, a classifier teacher's soft targets, the held-out split, and the teacher/student scores.

Stdlib only: the web side imports it to estimate what a teacher's labelling will cost.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from workers.runtime.specs import approx_tokens, validation_size

# Lead-ins a model may put before its label; with nothing else around the label, the answer is
# still unambiguous ("The text is negative."). Lowercase, compared case-insensitively.
LEAD_INS = (
    "label:",
    "answer:",
    "category:",
    "class:",
    "the label is",
    "the answer is",
    "the text is",
    "this text is",
    "it is",
    "it's",
)
# Rough size of a token in characters, to estimate a prompt's tokens before a tokenizer is at hand.
# What a generation teacher may write: the longest label plus a little slack (quotes, a period).
ANSWER_SLACK_TOKENS = 8
# Quotes and emphasis a model may wrap its one-word answer in; anything else makes it unparseable.
_WRAPPERS = "\"'`*"


def label_prompt(text: str, labels: Sequence[str]) -> list[dict[str, str]]:
    """The chat message that asks a generation teacher for one label. One user turn, no system
    prompt: small instruction-tuned models follow it best (SmolLM2 answers 6 of 6 toy reviews
    with a parseable label this way, 0 of 6 with a system prompt and a label list)."""
    content = (
        f"Classify the text as one of: {', '.join(labels)}.\n\nText: {text}\n\nAnswer with the label only."
    )
    return [{"role": "user", "content": content}]


def prompt_overhead_tokens(labels: Sequence[str]) -> int:
    """About how many prompt tokens the instructions and label list add to each text."""
    chars = sum(len(message["content"]) for message in label_prompt("", labels))
    return approx_tokens(chars) + 8  # + the chat template's role markers


def answer_max_tokens(labels: Sequence[str]) -> int:
    return math.ceil(max(len(label) for label in labels) / 2) + ANSWER_SLACK_TOKENS


def parse_label(answer: str | None, labels: Sequence[str]) -> str | None:
    """The label a teacher's answer names, or None when it names none or more than one.

    Strict on purpose: a wrong label silently trained on is worse than a text left out. Accepted
    are the label itself, ignoring case, surrounding spaces, quotes or emphasis and a final
    period, optionally after one lead-in of LEAD_INS ("Label: positive", "The text is positive.");
    "positive, I think", "not positive" or "a positive one" are not.
    """
    if answer is None:
        return None
    by_name = {label.strip().casefold(): label for label in labels}
    cleaned = _unwrap(answer).casefold()
    if cleaned in by_name:
        return by_name[cleaned]
    for lead_in in LEAD_INS:
        if cleaned.startswith(lead_in):
            rest = _unwrap(cleaned[len(lead_in) :])
            return by_name.get(rest)
    return None


def _unwrap(text: str) -> str:
    cleaned = text.strip().strip(_WRAPPERS).strip()
    if cleaned.endswith("."):
        cleaned = cleaned[:-1].rstrip().strip(_WRAPPERS).strip()
    return cleaned


def soften(scores: Mapping[str, float], temperature: float) -> dict[str, float]:
    """softmax(logits / T) from the probabilities softmax(logits): p_i^(1/T), renormalised, which
    is exact (the log-sum-exp terms cancel). Computed in log space so tiny probabilities survive.
    The top log is taken away before dividing by T: a tiny T then makes the others' weights 0 (the
    one-hot limit), where dividing first made every log infinite and every weight NaN."""
    logs = {label: math.log(max(p, 1e-30)) for label, p in scores.items()}
    top = max(logs.values())
    weights = {label: math.exp((value - top) / temperature) for label, value in logs.items()}
    total = sum(weights.values())
    return {label: weight / total for label, weight in weights.items()}


def held_out_indices(n: int, fraction: float, seed: int) -> set[int]:
    """Which texts are kept from the student's training, to compare it with its teacher."""
    return set(random.Random(seed).sample(range(n), validation_size(n, fraction)))


@dataclass(frozen=True)
class Scores:
    agreement: float | None  # the student gives the teacher's label (texts the teacher labelled)
    teacher_accuracy: float | None  # against the file's own labels, when it has them
    student_accuracy: float | None
    compared: int  # held-out texts with a teacher label
    with_labels: int  # held-out texts with a label of their own


def score(teacher: Sequence[str | None], student: Sequence[str], gold: Sequence[str | None]) -> Scores:
    """Agreement over the texts the teacher labelled; accuracy over the texts with a gold label,
    where an unparseable teacher answer counts as wrong."""
    pairs = [(t, s) for t, s in zip(teacher, student, strict=True) if t is not None]
    graded = [(t, s, g) for t, s, g in zip(teacher, student, gold, strict=True) if g is not None]
    return Scores(
        agreement=_share(sum(t == s for t, s in pairs), len(pairs)),
        teacher_accuracy=_share(sum(t == g for t, _, g in graded), len(graded)),
        student_accuracy=_share(sum(s == g for _, s, g in graded), len(graded)),
        compared=len(pairs),
        with_labels=len(graded),
    )


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
