"""Distillation in the worker: the teacher labels the unlabeled_file, the student classifier trains
on those labels with the classification trainer (`workers.runners.finetune` runs it, calling
`label_for_distillation` and `student_spec` first), and the two are compared on held-out texts
the student never saw.

The teacher's labels are kept in storage chunk by chunk as they come, so a paused, resumed or
redelivered attempt pays the teacher for no text twice, and the job bills the teacher's usage
once, from the chunks, when it finishes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from apps.billing.pricing import cost_of
from apps.core.errors import ActionError
from apps.core.spreadsheet import safe_cell
from apps.core.storage import delete_prefix, job_prefix
from apps.jobs import actions
from apps.jobs.models import Job, JobStatus
from apps.registry.models import Model
from workers.runners.artifacts import local_model_dir
from workers.runners.attempt import MONEY_STOPS, AttemptGuard
from workers.runners.progress import ProgressReporter
from workers.runtime.distill import (
    answer_max_tokens,
    held_out_indices,
    label_prompt,
    parse_label,
    score,
    soften,
)
from workers.runtime.specs import VALIDATION_FRACTION, TrainingDataError, TrainSpec

logger = logging.getLogger(__name__)

CHUNK_TEXTS = 64  # texts a teacher labels between two stop/budget checks, stored as one object
PROXY_CONCURRENCY = 8  # requests in flight to an OpenAI teacher
# Below this many labelled training texts a student learns nothing worth paying for.
MIN_LABELLED = 2
SHOWN_BAD_ANSWERS = 3


class TeacherError(Exception):
    """The teacher could not label (an upstream failure, an unusable model): the job fails."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (TeacherError, (self.code, self.message))


@dataclass(frozen=True)
class Text:
    line: int
    text: str
    gold: str | None  # the file's own label, when it has one: used only to score


@dataclass
class Chunk:
    """What the teacher said about texts[start : start + len(labels)], and what it cost."""

    start: int
    labels: list[str | None]  # None: the answer named no label
    soft: list[dict[str, float]] | None  # a classifier teacher's softened probabilities
    answers: list[str | None]  # a generation teacher's raw answers
    usage: dict[str, int]
    seconds: float


@dataclass
class Labelling:
    """The outcome of the labelling phase."""

    teacher: Model
    labels: list[str]
    temperature: float | None
    texts: list[Text]
    held_out: set[int]
    chunks: list[Chunk] = field(default_factory=list)
    stopped: str = ""  # "", "cancel", "pause", "budget", "spend_limit" or the guard's fencing reason
    error: TeacherError | None = None  # the teacher failed part-way; what it labelled is still billed

    @property
    def teacher_labels(self) -> list[str | None]:
        return [label for chunk in self.chunks for label in chunk.labels]

    @property
    def usage(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for chunk in self.chunks:
            for unit, quantity in chunk.usage.items():
                total[unit] = total.get(unit, 0) + quantity
        return total

    def billing(self) -> tuple[dict[str, int], dict[str, str]]:
        """The teacher's usage, and the model each unit is priced as (the teacher, not the student)."""
        usage = self.usage
        return usage, {unit: self.teacher.name for unit in usage}

    @property
    def cost(self) -> int:
        return sum(cost_of(self.teacher.name, unit, quantity) for unit, quantity in self.usage.items())

    def unparseable(self) -> list[tuple[Text, str | None]]:
        answers = [answer for chunk in self.chunks for answer in chunk.answers]
        return [
            (text, answer)
            for text, label, answer in zip(self.texts, self.teacher_labels, answers, strict=False)
            if label is None
        ]


# --- reading and storing -----------------------------------------------------------------------


def read_texts(path: Path, text_field: str, label_field: str) -> list[Text]:
    from workers.runtime.data import iter_records, label_to_str

    texts = []
    for number, record in iter_records(path, columns=(text_field,)):
        text = record.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise TrainingDataError(f'line {number}: "{text_field}" is missing or empty')
        texts.append(Text(number, text, label_to_str(record.get(label_field))))
    if not texts:
        raise TrainingDataError("the unlabeled_file has no texts")
    return texts


def _chunk_key(job: Job, start: int) -> str:
    return f"{_prefix(job)}/labels-{start:07d}.json"


def _prefix(job: Job) -> str:
    return job_prefix("distill", job.organization.public_id, job.public_id)


def _load_chunk(key: str) -> Chunk | None:
    if not default_storage.exists(key):
        return None
    with default_storage.open(key, "rb") as handle:
        return Chunk(**json.loads(handle.read()))


def _store_chunk(key: str, chunk: Chunk) -> None:
    if default_storage.exists(key):  # a concurrent, fenced attempt stored the same chunk
        return
    saved = default_storage.save(key, ContentFile(json.dumps(asdict(chunk)).encode()))
    if saved != key:
        default_storage.delete(saved)


def forget_labels(job: Job) -> None:
    """The chunks are only needed until the job ends; the labels report file keeps what matters."""
    delete_prefix(_prefix(job))


# --- teachers ----------------------------------------------------------------------------------

LabelFn = Callable[[list[str]], Chunk]


def _classifier_teacher(teacher: Model, temperature: float) -> LabelFn:
    from workers.runtime.classify import classify
    from workers.runtime.models import load_model
    from workers.runtime.specs import ClassifyRequest

    loaded = load_model(str(local_model_dir(teacher.artifact_key)))

    def label(texts: list[str]) -> Chunk:
        result = classify(loaded, ClassifyRequest(texts=tuple(texts)))
        scores = [{s.label: s.score for s in ranked} for ranked in result.results]
        return Chunk(
            start=0,
            labels=[ranked[0].label for ranked in result.results],
            soft=[soften(row, temperature) for row in scores],
            answers=[None] * len(texts),
            usage={"classified_texts": len(texts), "input_tokens": result.input_tokens},
            seconds=0.0,
        )

    return label


def _local_generation_teacher(teacher: Model, labels: list[str]) -> LabelFn:
    from workers.runtime.generate import generate_batch
    from workers.runtime.models import load_model
    from workers.runtime.specs import GenerateRequest

    loaded = load_model(str(local_model_dir(teacher.artifact_key)))
    max_tokens = answer_max_tokens(labels)

    def label(texts: list[str]) -> Chunk:
        requests = [
            GenerateRequest(
                messages=tuple(label_prompt(text, labels)), max_tokens=max_tokens, temperature=0.0
            )
            for text in texts
        ]
        results = []
        for start in range(0, len(requests), settings.INFERENCE_MAX_BATCH):
            results += generate_batch(loaded, requests[start : start + settings.INFERENCE_MAX_BATCH])
        return _answered(
            [result.choices[0].text for result in results],
            labels,
            sum(r.prompt_tokens for r in results),
            sum(r.completion_tokens for r in results),
        )

    return label


def _answered(answers: list[str | None], labels: list[str], input_tokens: int, output_tokens: int) -> Chunk:
    """A generation teacher's chunk: its answers word for word, each parsed to a label (None when it
    names none), and the tokens it used."""
    return Chunk(
        start=0,
        labels=[parse_label(answer, labels) for answer in answers],
        soft=None,
        answers=answers,
        usage={"input_tokens": input_tokens, "output_tokens": output_tokens},
        seconds=0.0,
    )


def _openai_teacher(job: Job, teacher: Model, labels: list[str]) -> LabelFn:
    from workers.runtime.openai_proxy import ProxyError, make_client, proxy_chat

    try:
        key = job.organization.openai_key_for_calls()
    except ActionError as exc:
        raise TeacherError(exc.code, exc.message) from None
    client = make_client(
        key, settings.OPENAI_BASE_URL, settings.OPENAI_TIMEOUT_SECONDS, settings.OPENAI_MAX_RETRIES
    )
    upstream = teacher.name.removeprefix("openai:")
    max_tokens = answer_max_tokens(labels)

    def ask(text: str) -> tuple[str | None, int, int]:
        body = {
            "model": upstream,
            "messages": label_prompt(text, labels),
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        try:
            result = proxy_chat(client, body)
        except ProxyError as exc:
            raise TeacherError("teacher_failed", f"The teacher {teacher.name} failed: {exc.message}") from exc
        choices = result.body.get("choices") or [{}]
        answer = (choices[0].get("message") or {}).get("content")
        return answer, result.usage.prompt_tokens, result.usage.completion_tokens

    def label(texts: list[str]) -> Chunk:
        with ThreadPoolExecutor(PROXY_CONCURRENCY) as pool:
            replies = list(pool.map(ask, texts))
        return _answered(
            [answer for answer, _, _ in replies],
            labels,
            sum(prompt for _, prompt, _ in replies),
            sum(completion for _, _, completion in replies),
        )

    return label


def _teacher_fn(job: Job, labelling: Labelling) -> LabelFn:
    teacher = labelling.teacher
    if teacher.task == "classification":
        assert labelling.temperature is not None
        return _classifier_teacher(teacher, labelling.temperature)
    if teacher.provider == "openai":
        return _openai_teacher(job, teacher, labelling.labels)
    return _local_generation_teacher(teacher, labelling.labels)


# --- the labelling phase -----------------------------------------------------------------------


def label_texts(
    job: Job,
    guard: AttemptGuard,
    texts: list[Text],
    budget: Callable[[int], str],
    on_log: Callable[[str], None],
) -> Labelling:
    """Label every text with the teacher, resuming from stored chunks. Before each new chunk it asks
    the guard whether to stop and `budget(cost_so_far + the chunk's estimated cost)` whether the money
    allows it ("" or the stop reason)."""
    section = job.request["method"]["distillation"]
    teacher = Model.objects.visible_to(job.organization).filter(name=section["teacher"]).first()
    if teacher is None:
        raise TeacherError("teacher_unavailable", f"The teacher model {section['teacher']} no longer exists.")
    labelling = Labelling(
        teacher=teacher,
        labels=list(section["labels"]),
        temperature=section.get("temperature"),
        texts=texts,
        held_out=held_out_indices(len(texts), VALIDATION_FRACTION, job.seed or 0),
    )
    label: LabelFn | None = None
    on_log(f"The teacher {teacher.name} labels {len(texts):,} texts with {', '.join(labelling.labels)}.")
    for start in range(0, len(texts), CHUNK_TEXTS):
        key = _chunk_key(job, start)
        stored = _load_chunk(key)
        if stored is not None:
            labelling.chunks.append(stored)
            continue
        if guard.should_stop():
            labelling.stopped = guard.stop_reason
            return labelling
        # The next chunk costs about what a text has cost so far (the first chunk always runs, as
        # the first training step does: there is nothing to estimate from before it).
        spent = labelling.cost
        per_text = spent / max(sum(len(chunk.labels) for chunk in labelling.chunks), 1)
        reason = budget(int(spent + per_text * CHUNK_TEXTS)) if labelling.chunks else ""
        if reason:
            labelling.stopped = reason
            return labelling
        batch = [text.text for text in texts[start : start + CHUNK_TEXTS]]
        began = time.monotonic()
        try:
            label = label or _teacher_fn(job, labelling)
            chunk = label(batch)
        except TeacherError as exc:
            labelling.error = exc
            return labelling
        chunk.start, chunk.seconds = start, time.monotonic() - began
        _store_chunk(key, chunk)
        labelling.chunks.append(chunk)
        labelled = start + len(batch)
        guard.set_progress(
            {
                "phase": "labelling",
                "step": 0,
                "total_steps": None,
                "labelled": labelled,
                "total_texts": len(texts),
                "percent": round(100 * labelled / len(texts), 1),
            }
        )
    bad = labelling.unparseable()
    on_log(
        f"The teacher labelled {len(texts) - len(bad):,} of {len(texts):,} texts"
        + (f"; {len(bad):,} answers named no label and are left out." if bad else ".")
    )
    return labelling


def write_training_files(labelling: Labelling, work: Path) -> tuple[Path, Path]:
    """The student's training and held-out files (JSONL: text, the teacher's label, and its
    probabilities under "soft" for a classifier teacher). Unlabelled texts are left out."""
    labels, soft = labelling.teacher_labels, [row for chunk in labelling.chunks for row in (chunk.soft or [])]
    train_path, valid_path = work / "distill-train.jsonl", work / "distill-valid.jsonl"
    counts = {"train": 0, "valid": 0}
    with train_path.open("w") as train, valid_path.open("w") as valid:
        for index, (text, label) in enumerate(zip(labelling.texts, labels, strict=True)):
            if label is None:
                continue
            row: dict[str, Any] = {"text": text.text, "label": label}
            held = index in labelling.held_out
            if soft and not held:
                row["soft"] = soft[index]
            (valid if held else train).write(json.dumps(row) + "\n")
            counts["valid" if held else "train"] += 1
    if counts["train"] < MIN_LABELLED or counts["valid"] < 1:
        raise TeacherError("teacher_unusable", _unusable_message(labelling))
    return train_path, valid_path


def _unusable_message(labelling: Labelling) -> str:
    bad = labelling.unparseable()
    examples = "; ".join(
        f"line {text.line}: {json.dumps((answer or '')[:60])}" for text, answer in bad[:SHOWN_BAD_ANSWERS]
    )
    return (
        f"The teacher's answers named one of the labels for only {len(labelling.texts) - len(bad)} of "
        f"{len(labelling.texts)} texts, too few to train a student"
        + (f" (for example {examples})" if examples else "")
        + ". Check that the teacher answers with one of the labels."
    )


# --- the distillation phase of a fine-tune -----------------------------------------------------


def label_for_distillation(
    job: Job, guard: AttemptGuard, progress: ProgressReporter, spec: TrainSpec, work: Path
) -> Labelling | None:
    """The teacher labels the texts; None when the job ended meanwhile (failed, cancelled, paused or
    out of budget, with the teacher's usage billed), else the labels for the student."""
    texts = read_texts(Path(spec.training_file), spec.text_field, spec.label_field)
    try:
        labelling = label_texts(job, guard, texts, progress.budget_reason, progress.log)
    except TeacherError as exc:  # before anything was labelled: nothing to bill
        fail_teacher(job, exc, None)
        return None
    progress.drain()
    progress.extra_cost = labelling.cost
    progress.extra_usage, progress.extra_models = labelling.billing()
    if guard.lost:
        return None
    if labelling.error is not None:
        fail_teacher(job, labelling.error, labelling)
        return None
    if labelling.stopped == "pause":
        usage, models = labelling.billing()  # the labels are kept for the resumed attempt: billed now
        actions.finish(
            job.pk,
            job.attempt,
            JobStatus.PAUSED,
            usage=usage,
            usage_models=models,
            message="Job paused while the teacher labelled texts.",
        )
        return None
    if labelling.stopped:
        usage, models = labelling.billing()
        if labelling.stopped == "cancel":
            actions.finish(
                job.pk,
                job.attempt,
                JobStatus.CANCELLED,
                usage=usage,
                usage_models=models,
                message="Job cancelled.",
            )
        else:
            labelled = sum(len(chunk.labels) for chunk in labelling.chunks)
            code = MONEY_STOPS[labelling.stopped]
            message = (
                f"{code.label} while the teacher labelled texts ({labelled:,} of {len(texts):,} done); "
                "no student was trained. Raise it, or distil fewer texts."
            )
            actions.finish(
                job.pk,
                job.attempt,
                JobStatus.FAILED,
                usage=usage,
                usage_models=models,
                error={"code": code, "message": message, "param": "max_cost"},
                message=message,
            )
        forget_labels(job)
        return None
    return labelling


def student_spec(job: Job, spec: TrainSpec, labelling: Labelling, work: Path) -> TrainSpec | None:
    """The classification trainer's spec for the student: the teacher's labels (and, from a
    classifier teacher, its softened probabilities) instead of the file's. None, with the job
    failed, when the teacher labelled too few texts."""
    try:
        train_path, valid_path = write_training_files(labelling, work)
    except TeacherError as exc:
        fail_teacher(job, exc, labelling)
        return None
    return replace(
        spec,
        training_file=str(train_path),
        validation_file=str(valid_path),
        text_field="text",
        label_field="label",
        labels=tuple(labelling.labels),
        soft_label_field="soft" if labelling.temperature is not None else "",
        distill_temperature=labelling.temperature or 1.0,
    )


def fail_teacher(job: Job, error: TeacherError, labelling: Labelling | None) -> None:
    usage, models = labelling.billing() if labelling is not None else ({}, {})
    actions.finish(
        job.pk,
        job.attempt,
        JobStatus.FAILED,
        usage=usage,
        usage_models=models,
        error={"code": error.code, "message": error.message, "param": "method.distillation.teacher"},
        message=error.message,
    )
    forget_labels(job)


# --- comparing teacher and student ---------------------------------------------------------------


def compare(
    labelling: Labelling, student_dir: str, student_name: str
) -> tuple[dict[str, Any], dict[int, str]]:
    """Agreement, accuracy (when the file has labels), texts/s and cost per 1,000 texts of teacher
    and student, on the held-out texts; and the student's label for each held-out text."""
    from workers.runtime.classify import classify
    from workers.runtime.models import load_model
    from workers.runtime.specs import ClassifyRequest

    held = sorted(labelling.held_out)
    texts = [labelling.texts[i] for i in held]
    student = load_model(student_dir)
    began = time.monotonic()
    result = classify(student, ClassifyRequest(texts=tuple(text.text for text in texts)))
    student_seconds = max(time.monotonic() - began, 1e-9)
    predictions = [ranked[0].label for ranked in result.results]
    teacher_labels = labelling.teacher_labels
    scores = score([teacher_labels[i] for i in held], predictions, [text.gold for text in texts])
    labelled = sum(len(chunk.labels) for chunk in labelling.chunks)
    teacher_seconds = sum(chunk.seconds for chunk in labelling.chunks)
    tokens_per_text = result.input_tokens / max(len(texts), 1)
    student_per_1000 = cost_of(student_name, "classified_texts", 1000) + cost_of(
        student_name, "input_tokens", round(tokens_per_text * 1000)
    )
    teacher_cost = labelling.cost
    teacher_per_1000 = round(teacher_cost * 1000 / max(labelled, 1))
    unparseable = len(labelling.unparseable())
    return {
        "teacher": labelling.teacher.name,
        "held_out_texts": len(texts),
        "agreement": scores.agreement,
        "teacher_accuracy": scores.teacher_accuracy,
        "student_accuracy": scores.student_accuracy,
        "texts_with_labels": scores.with_labels,
        "teacher_texts_per_second": round(labelled / teacher_seconds, 2) if teacher_seconds else None,
        "student_texts_per_second": round(len(texts) / student_seconds, 2),
        "teacher_cost_per_1000_texts": teacher_per_1000,
        "student_cost_per_1000_texts": student_per_1000,
        "labelled_texts": labelled - unparseable,
        "unparseable_answers": unparseable,
        "teacher_cost": teacher_cost,
        "currency": "usd_micros",
    }, dict(zip(held, predictions, strict=True))


def labels_report(labelling: Labelling, predictions: dict[int, str]) -> bytes:
    """Every text with the teacher's label (and raw answer), and for held-out texts the student's."""
    answers = [answer for chunk in labelling.chunks for answer in chunk.answers]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["line", "teacher_label", "teacher_answer", "parsed", "held_out", "student_label", "label", "text"]
    )
    for index, (text, label, answer) in enumerate(
        zip(labelling.texts, labelling.teacher_labels, answers, strict=True)
    ):
        writer.writerow(
            [
                text.line,
                safe_cell(label or ""),
                safe_cell(answer or ""),
                "yes" if label is not None else "no",
                "yes" if index in labelling.held_out else "",
                safe_cell(predictions.get(index, "")),
                safe_cell(text.gold or ""),
                safe_cell(text.text),
            ]
        )
    return out.getvalue().encode()
