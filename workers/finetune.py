"""The fine-tune adapter: a claimed job row → TrainSpec → runtime.train → rows and usage.

Django-aware and thin on purpose: the training itself is `workers.runtime.training.train`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection

from apps.billing.pricing import cost_of
from apps.core.storage import download_dir, download_file, job_prefix, upload_dir
from apps.jobs import actions
from apps.jobs.admission import SpendShare
from apps.jobs.models import Job, JobStatus
from apps.projects.actions import discard, stored_result_file
from apps.projects.models import FilePurpose
from apps.registry.actions import create_fine_tuned_model, fine_tuned_name
from workers.artifacts import local_model_dir
from workers.attempt import FENCED, AttemptGuard

if TYPE_CHECKING:
    from workers.distill import Labelling

logger = logging.getLogger(__name__)

# Errors in the customer's data or settings: the job fails at once, with the runtime's message.
PERMANENT_ERRORS = (ValueError, KeyError)
# Progress writes kept while PostgreSQL is briefly unreachable (the heartbeat thread self-fences
# the attempt if the outage lasts longer than JOB_SELF_FENCE_SECONDS).
MAX_PENDING_WRITES = 500
# Per-step metrics are written in batches: at most this many rows, or every progress interval.
METRICS_BATCH_ROWS = 200
# The ETA follows an exponential moving average of the step rate, measured over windows of at
# least this long: it settles instead of jumping with every slow or fast step.
RATE_WINDOW_SECONDS = 1.0
RATE_SMOOTHING = 0.2  # the newest window's weight
STOP_MESSAGES = {
    "budget_reached": "The job's max_cost was reached: it stopped early and kept the best model so far.",
    "spend_limit_reached": "The organization's spend limit was reached: the job stopped early and kept the best model so far.",
}


def run_fine_tune(job: Job) -> None:
    if _failed_for_a_deleted_file(job):
        return
    work = Path(settings.VAR_DIR) / "work" / f"{job.public_id}-{job.attempt}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with AttemptGuard(job.pk, job.attempt) as guard:
            # Heavy imports (torch) only once the lease is kept alive: a fresh child can take longer
            # to import torch than the stale threshold, and the reaper would take the job away.
            from workers.runtime.specs import Hyperparameters, TrainSpec

            method = (job.request or {}).get("method") or {}
            is_supervised = method.get("type") == "supervised"  # a causal LM learning replies
            if is_supervised:
                from workers.runtime.sft import train_lm as train
            else:
                from workers.runtime.training import train

            spec = TrainSpec(
                job_id=job.public_id,
                base_model_dir=str(local_model_dir(job.model.artifact_key)),  # type: ignore[union-attr]
                training_file=str(_local_copy(job.training_file, work / "train")),
                validation_file=str(_local_copy(job.validation_file, work / "valid"))
                if job.validation_file
                else None,
                output_dir=str(work / "model"),
                hyperparameters=Hyperparameters(**job.hyperparameters),
                text_field=_mapped(job, "text"),
                label_field=_mapped(job, "label"),
                checkpoint_dir=str(work / "checkpoints"),
                resume_from=str(download_dir(job.checkpoint_ref, work / "resume"))
                if job.checkpoint_ref
                else None,
                task="generation" if is_supervised else "classification",
                lora=(method.get("supervised") or {}).get("lora") if is_supervised else None,
                messages_field=_mapped(job, "messages"),
                prompt_field=_mapped(job, "prompt"),
                completion_field=_mapped(job, "completion"),
            )
            progress = ProgressReporter(job, guard)
            labelling = None
            if method.get("type") == "distillation":
                labelling = _label_for_distillation(job, guard, progress, spec, work)
                if labelling is None:  # the job ended while the teacher labelled
                    return
                spec = _student_spec(job, spec, labelling, work)
                if spec is None:  # too few texts labelled to train on: the job failed
                    return
            result = train(spec, progress.on_event, progress.should_stop)
            progress.flush()
            if guard.lost:
                return
            _finish(job, guard, result, progress, spec, labelling)
    except SoftTimeLimitExceeded:
        # Terminal, like Celery's own view of a timeout: the job fails and is not retried.
        _fail_time_limit(job)
    except PERMANENT_ERRORS as exc:
        reason = without_paths(str(exc))
        actions.finish(
            job.pk, job.attempt, JobStatus.FAILED,
            error={"code": "invalid_training_data", "message": reason, "param": "training_file"},
            message=f"Training failed: {reason}",
        )  # fmt: skip
    except (DatabaseError, OSError) as exc:
        logger.exception("job %s: transient failure", job.public_id)
        # If even that fails, the reaper re-queues the job once its heartbeat goes stale.
        with contextlib.suppress(DatabaseError):
            actions.requeue(
                job.pk, job.attempt, f"Attempt {job.attempt} hit a transient error ({type(exc).__name__})."
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _label_for_distillation(
    job: Job, guard: AttemptGuard, progress: ProgressReporter, spec: Any, work: Path
) -> Labelling | None:
    """The teacher labels the texts; None when the job ended meanwhile (failed, cancelled, paused or
    out of budget, with the teacher's usage billed), else the labels for the student."""
    from workers.distill import TeacherError, forget_labels, label_texts, read_texts

    texts = read_texts(Path(spec.training_file), spec.text_field, spec.label_field)
    try:
        labelling = label_texts(job, guard, texts, progress.budget_reason, progress.log)
    except TeacherError as exc:  # before anything was labelled: nothing to bill
        _fail_teacher(job, exc, None)
        return None
    progress.flush()
    progress.extra_cost = labelling.cost
    progress.extra_usage, progress.extra_models = labelling.billing()
    if guard.lost:
        return None
    if labelling.error is not None:
        _fail_teacher(job, labelling.error, labelling)
        return None
    if labelling.stopped == "pause":
        usage, models = labelling.billing()  # the labels are kept for the resumed attempt: billed now
        actions.finish(job.pk, job.attempt, JobStatus.PAUSED, usage=usage, usage_models=models,
                       message="Job paused while the teacher labelled texts.")  # fmt: skip
        return None
    if labelling.stopped:
        usage, models = labelling.billing()
        if labelling.stopped == "cancel":
            actions.finish(job.pk, job.attempt, JobStatus.CANCELLED, usage=usage, usage_models=models,
                           message="Job cancelled.")  # fmt: skip
        else:
            labelled = sum(len(chunk.labels) for chunk in labelling.chunks)
            code = {"budget": "budget_reached", "spend_limit": "spend_limit_reached"}[labelling.stopped]
            limit = "The job's max_cost" if code == "budget_reached" else "The organization's spend limit"
            message = (
                f"{limit} was reached while the teacher labelled texts ({labelled:,} of {len(texts):,} done); "
                "no student was trained. Raise it, or distil fewer texts."
            )
            actions.finish(job.pk, job.attempt, JobStatus.FAILED, usage=usage, usage_models=models,
                           error={"code": code, "message": message, "param": "max_cost"}, message=message)  # fmt: skip
        forget_labels(job)
        return None
    return labelling


def _student_spec(job: Job, spec: Any, labelling: Labelling, work: Path) -> Any:
    """The classification trainer's spec for the student: the teacher's labels (and, from a
    classifier teacher, its softened probabilities) instead of the file's. None, with the job
    failed, when the teacher labelled too few texts."""
    import dataclasses

    from workers.distill import TeacherError, write_training_files

    try:
        train_path, valid_path = write_training_files(labelling, work)
    except TeacherError as exc:
        _fail_teacher(job, exc, labelling)
        return None
    return dataclasses.replace(
        spec, training_file=str(train_path), validation_file=str(valid_path), text_field="text",
        label_field="label", labels=tuple(labelling.labels),
        soft_label_field="soft" if labelling.temperature is not None else "",
        distill_temperature=labelling.temperature or 1.0,
    )  # fmt: skip


def _fail_teacher(job: Job, error: Any, labelling: Labelling | None) -> None:
    from workers.distill import forget_labels

    usage, models = labelling.billing() if labelling is not None else ({}, {})
    actions.finish(
        job.pk, job.attempt, JobStatus.FAILED, usage=usage, usage_models=models,
        error={"code": error.code, "message": error.message, "param": "method.distillation.teacher"},
        message=error.message,
    )  # fmt: skip
    forget_labels(job)


def _failed_for_a_deleted_file(job: Job) -> bool:
    """Fails the job when a file it names is gone. Deleting a file an unfinished job reads is refused,
    but a row deleted past that rule (in the admin) leaves the job's reference empty."""
    request = job.request or {}
    for param, file in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        # A fine-tune always has a training file; a validation file only when one was named.
        if file is None and (param == "training_file" or request.get(param)):
            message = f"The {param.replace('_', ' ')} of this job was deleted. Start a new job with a file that exists."
            actions.finish(
                job.pk, job.attempt, JobStatus.FAILED, message=message,
                error={"code": "file_deleted", "message": message, "param": param},
            )  # fmt: skip
            return True
    return False


def _mapped(job: Job, field: str) -> str:
    mapping = (job.training_file.column_mapping if job.training_file else None) or {}
    return str(mapping.get(field, field))


def _worker_roots() -> list[str]:
    roots = {
        settings.VAR_DIR,
        settings.MEDIA_ROOT,
        settings.MODEL_CACHE_DIR,
        tempfile.gettempdir(),
        sys.prefix,
    }
    return sorted(
        (str(root).rstrip("/") for root in roots if str(root) not in ("", "/")), key=len, reverse=True
    )


def without_paths(text: str) -> str:
    """A message for the customer, with any path on this worker cut to its last part. The runtime's
    own messages name no paths; this catches a library's error that quotes one (a model file, a
    tokenizer directory)."""
    for root in _worker_roots():
        text = re.sub(re.escape(root) + r"/(?:[^\s/'\"]+/)*", "", text)
    return text


def _local_copy(file: Any, stem: Path) -> Path:
    # A .tsv keeps its name: its delimiter is read from the extension, as the validation did.
    is_tsv = file.filename.lower().endswith(".tsv")
    suffix = (".tsv" if is_tsv else ".csv") if file.format.endswith("_csv") else ".jsonl"
    return download_file(file.content.name, stem.with_suffix(suffix))


class StepRate:
    """Steps a second, as an exponential moving average over windows of RATE_WINDOW_SECONDS or
    more: one slow step (an evaluation, a checkpoint) moves it a little, a lasting change fully
    within a few windows. None until the first window is measured: the first steps (warm-up,
    caches) mislead."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.mark: tuple[float, int] | None = None  # (time, step) where the current window began

    def update(self, now: float, step: int) -> float | None:
        if self.mark is None:
            self.mark = (now, step)
        elif now - self.mark[0] >= RATE_WINDOW_SECONDS:
            window = (step - self.mark[1]) / (now - self.mark[0])
            self.rate = window if self.rate is None else self.rate + RATE_SMOOTHING * (window - self.rate)
            self.mark = (now, step)
        return self.rate


class ProgressReporter:
    """Turns the runtime's progress events into throttled progress, metric events, checkpoints
    and the budget check."""

    def __init__(self, job: Job, guard: AttemptGuard) -> None:
        self.job = job
        self.guard = guard
        self.step = 0
        self.trained_tokens = 0
        self.share = SpendShare(job)  # the job's share of the organization's spend cap
        # The name the model will have; checkpoints are callable as `<name>:ckpt-step-N`.
        self.model_name = fine_tuned_name(
            job.model_name, job.organization.name, (job.request or {}).get("suffix") or "", job.public_id
        )
        self.pending: list[Any] = []  # writes that met a database outage, oldest first
        # Spent before training began (a distillation's teacher), billed with the training.
        self.extra_cost = 0
        self.extra_usage: dict[str, int] = {}
        self.extra_models: dict[str, str] = {}
        self.max_step_tokens = 0  # the most tokens one step has trained so far
        self.step_rows: list[tuple[str, dict[str, Any]]] = []  # per-step metrics not written yet
        self.rows_queued_at = time.monotonic()
        self.rate = StepRate()
        self.last_progress: dict[str, Any] = {}
        self.valid_examples: int | None = None  # the size of the validation set, from the run's banner

    def should_stop(self) -> bool:
        if self.step:
            reason = self.budget_reason(self.extra_cost + self._next_step_cost())
            if reason:
                self.guard.request_stop(reason)
        return self.guard.should_stop()

    def budget_reason(self, cost: int) -> str:
        """ "budget" when a total cost of `cost` would pass the job's max_cost, "spend_limit" when
        the organization's spend cap leaves the job no room for it, else ""."""
        if self.job.max_cost is not None and cost > self.job.max_cost:
            return "budget"
        # Asking for the rest of the estimate at once (at least a tenth more) keeps the lock rare.
        ahead = max((self.job.estimated_cost or 0) - cost, cost // 10)
        if not self.share.allows(cost, ahead=ahead):
            if self.share.fenced:  # another attempt owns the job now
                self.guard.request_stop(FENCED)
                return FENCED
            return "spend_limit"
        return ""

    def usage(self, trained_tokens: int) -> dict[str, int]:
        """The job's running counts to bill: the tokens trained so far and the teacher's units."""
        return {"trained_tokens": trained_tokens, **self.extra_usage}

    def log(self, message: str) -> None:
        self._write(actions.add_event, without_paths(message))

    def _next_step_cost(self) -> int:
        # The next step costs at most what the costliest step so far did: steps differ in tokens
        # (batches are padded per batch, not to a fixed length), and an average would let the bill
        # pass max_cost by a step. The first batch is the widest, so it sets the bound early.
        return cost_of(self.job.model_name, "trained_tokens", self.trained_tokens + self.max_step_tokens)

    def on_event(self, event: Any) -> None:
        if self.guard.lost:
            return
        if event.kind == "step":  # (a resumed run's banner, before its first step, carries its count)
            self.max_step_tokens = max(self.max_step_tokens, event.trained_tokens - self.trained_tokens)
        self.step, self.trained_tokens = event.step, max(self.trained_tokens, event.trained_tokens)
        if event.kind == "step":
            self._progress(event)
            self._step_metrics(event)
        elif event.kind == "eval":
            self._metrics(event, event.metrics, message=_eval_message(event))
        elif event.kind == "checkpoint" and event.checkpoint_dir:
            key = f"{job_prefix('checkpoints', self.job.organization.public_id, self.job.public_id)}/step-{event.step}"
            upload_dir(Path(event.checkpoint_dir), key)
            # The checkpoint is callable as a model once saved: the work up to it is billed with it.
            self._write(
                actions.add_checkpoint, step=event.step, epoch=event.epoch, metrics=event.metrics,
                artifact_key=key, model_name=f"{self.model_name}:ckpt-step-{event.step}",
                trained_tokens=event.trained_tokens, usage=self.usage(event.trained_tokens),
                usage_models=self.extra_models,
            )  # fmt: skip
        elif event.kind == "log" and event.message:
            if isinstance(event.metrics.get("valid_examples"), int):
                self.valid_examples = event.metrics["valid_examples"]
            self.log(event.message)

    def _write(self, action: Any, *args: Any, **kwargs: Any) -> None:
        """A fenced write from the training loop. A short database outage does not end the attempt:
        the write waits here (in order) and goes out with the next one; the heartbeat thread decides
        when the outage is too long."""
        self._queue_step_rows()  # the steps before this write go out before it
        self.pending.append((action, args, kwargs))
        self.flush()

    def _queue_step_rows(self) -> None:
        if self.step_rows:
            self.pending.append((actions.add_metrics, (self.step_rows,), {}))
            self.step_rows = []
        self.rows_queued_at = time.monotonic()

    def flush(self) -> None:
        self._queue_step_rows()
        while self.pending and not self.guard.lost:
            action, args, kwargs = self.pending[0]
            try:
                written = action(self.job.pk, self.job.attempt, *args, **kwargs)
            except DatabaseError:
                if len(self.pending) == 1:  # the first failure of an outage
                    logger.warning(
                        "job %s: progress write failed; kept for later", self.job.public_id, exc_info=True
                    )
                connection.close()  # a broken connection stays broken until closed
                del self.pending[:-MAX_PENDING_WRITES]
                return
            self.pending.pop(0)
            if not written:  # another attempt owns the job now
                self.guard.request_stop(FENCED)
        if self.guard.lost:
            self.pending.clear()

    def _progress(self, event: Any) -> None:
        rate = self.rate.update(time.monotonic(), event.step)
        remaining = max(event.total_steps - event.step, 0)
        self.last_progress = {
            "step": event.step,
            "total_steps": event.total_steps,
            "epoch": event.epoch,
            "percent": round(100 * event.step / max(event.total_steps, 1), 1),
            # None until the first window is measured: the first steps (warm-up, caches) mislead.
            "eta_seconds": round(remaining / rate) if rate else None,
            "trained_tokens": event.trained_tokens,
        }
        self.guard.set_progress(self.last_progress)

    def final_progress(self, steps: int, succeeded: bool) -> dict[str, Any]:
        """The progress a finished attempt leaves: its last step, and 100% when the job succeeded
        (early stopping and max_cost end a job before its planned last step)."""
        total = self.last_progress.get("total_steps") or steps
        percent = 100.0 if succeeded else round(100 * steps / max(total, 1), 1)
        return {
            **self.last_progress,
            "step": steps,
            "total_steps": total,
            "percent": percent,
            "eta_seconds": 0,
        }

    def _step_metrics(self, event: Any) -> None:
        """Every step's metrics go to the loss curve and the results file, written in batches."""
        data = {"step": event.step, "total_steps": event.total_steps, "epoch": event.epoch}
        for key in ("train_loss", "train_mean_token_accuracy"):  # the second from SFT only
            value = event.metrics.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                data[key] = value
        loss = data.get("train_loss")
        message = f"Step {event.step}/{event.total_steps}" + (
            f": train_loss {loss:.4f}" if loss is not None else ""
        )
        self.step_rows.append((message, data))
        interval = settings.JOB_PROGRESS_INTERVAL_SECONDS
        if len(self.step_rows) >= METRICS_BATCH_ROWS or time.monotonic() - self.rows_queued_at >= interval:
            self.flush()

    def _metrics(self, event: Any, metrics: dict[str, Any], message: str | None = None) -> None:
        data = {"step": event.step, "total_steps": event.total_steps, "epoch": event.epoch}
        data.update(
            {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        )
        self._write(
            actions.add_event, message or f"Step {event.step}/{event.total_steps}", type="metrics", data=data
        )


RESULT_COLUMNS = ("step", "epoch", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
                  "accuracy", "f1_macro")  # fmt: skip


def metrics_csv(job: Job) -> bytes:
    """Per-step metrics as OpenAI's results file has them (plus our classifier metrics), one row a
    step, from the job's metric events."""
    import csv
    import io

    rows: dict[int, dict[str, Any]] = {}
    for data in job.events.filter(type="metrics").order_by("id").values_list("data", flat=True):
        if data and "step" in data:
            row = rows.setdefault(int(data["step"]), {"step": int(data["step"])})
            row.update({k: v for k, v in data.items() if k in RESULT_COLUMNS})
            if "train_mean_token_accuracy" in data:
                row["train_accuracy"] = data["train_mean_token_accuracy"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue().encode()


def _fail_time_limit(job: Job) -> None:
    """The soft time limit hit: the job fails with `time_limit` (not `internal_error`), keeping the
    checkpoints it saved. If PostgreSQL is down too, the reaper handles the job later."""
    with contextlib.suppress(DatabaseError):
        checkpoint = Job.objects.filter(pk=job.pk).values_list("checkpoint_ref", flat=True).first()
        message = actions.time_limit_message(settings.GPU_TASK_SOFT_TIME_LIMIT, bool(checkpoint))
        actions.finish(
            job.pk, job.attempt, JobStatus.FAILED,
            error={"code": "time_limit", "message": message, "param": None}, message=message,
        )  # fmt: skip


def _eval_message(event: Any) -> str:
    metrics = event.metrics
    parts = [f"Epoch {event.epoch} evaluated"]
    if "valid_loss" in metrics:
        parts.append(f"valid_loss {metrics['valid_loss']:.4f}")
    if "accuracy" in metrics:
        parts.append(f"accuracy {metrics['accuracy']:.3f}")
    return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def diagnostics_csv(spec: Any, model_dir: str) -> bytes:
    """Per-row validation loss, likeliest label errors first, text cells made safe for spreadsheets."""
    import csv
    import io

    from workers.runtime.diagnostics import diagnose, validation_examples
    from workers.runtime.models import load_model

    rows = diagnose(load_model(model_dir), validation_examples(spec))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "label", "predicted", "label_probability", "loss", "likely_mislabelled", "text"])
    for row in rows:
        writer.writerow([row.line, safe_cell(row.label), safe_cell(row.predicted), row.label_probability, row.loss,
                         "yes" if row.likely_mislabelled else "", safe_cell(row.text)])  # fmt: skip
    return out.getvalue().encode()


def safe_cell(value: str) -> str:
    """CSV formula injection: a cell a spreadsheet would run as a formula gets a leading quote."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _finish(
    job: Job,
    guard: AttemptGuard,
    result: Any,
    progress: ProgressReporter,
    spec: Any,
    labelling: Labelling | None,
) -> None:
    # The teacher's usage is billed with the student's, at its own prices.
    usage, models = progress.usage(result.trained_tokens), progress.extra_models
    fields: dict[str, Any] = {
        "trained_tokens": result.trained_tokens,
        "progress": progress.final_progress(result.steps, succeeded=False),
    }
    if result.status == "stopped" and guard.stop_reason == "cancel":
        actions.finish(
            job.pk, job.attempt, JobStatus.CANCELLED, usage=usage, usage_models=models, fields=fields,
            message="Job cancelled.",
        )  # fmt: skip
        _forget(job, labelling)
        return
    if result.status == "stopped" and guard.stop_reason == "pause":
        # Billed like any attempt that ends: the pause checkpoint is a callable, exportable model.
        actions.finish(job.pk, job.attempt, JobStatus.PAUSED, usage=usage, usage_models=models, fields=fields,
                       message="Job paused at a checkpoint.")  # fmt: skip
        return
    key = job_prefix("models", job.organization.public_id, job.public_id)
    upload_dir(Path(result.model_dir), key)
    diagnostics = diagnostics_csv(spec, result.model_dir) if spec.task == "classification" else None
    reason = {"budget": "budget_reached", "spend_limit": "spend_limit_reached"}.get(guard.stop_reason, "")
    outcome: dict[str, Any] = {
        "metrics": result.metrics,
        "labels": list(result.labels),
        "steps": result.steps,
        "validation_examples": progress.valid_examples,
    }
    fields["progress"] = progress.final_progress(result.steps, succeeded=True)
    teacher_report = None
    if labelling is not None:
        from workers.distill import compare, labels_report

        outcome["distillation"], predictions = compare(labelling, result.model_dir, progress.model_name)
        teacher_report = labels_report(labelling, predictions)

    # Stored before the finishing transaction, which only saves their rows: no storage I/O while it
    # holds the job's row lock.
    contents = [
        ("results", metrics_csv(job)),
        ("validation_rows", diagnostics),
        ("teacher_labels", teacher_report),
    ]
    files = [
        stored_result_file(job.project, f"{job.public_id}_{name}.csv", FilePurpose.FINE_TUNE_RESULTS, data)
        for name, data in contents
        if data is not None
    ]

    def create_model(locked: Job) -> dict[str, Any]:
        model = create_fine_tuned_model(
            locked, artifact_key=key, labels=list(result.labels), metrics=result.metrics
        )
        for file in files:
            file.save()
        return {"fine_tuned_model": model, "result_files": [file.public_id for file in files]}

    finished = actions.finish(
        job.pk, job.attempt, JobStatus.SUCCEEDED, status_reason=reason, usage=usage, usage_models=models,
        fields=fields, result=outcome, on_finished=create_model,
        message=STOP_MESSAGES.get(reason, "The job has successfully completed."),
    )  # fmt: skip
    if finished is None:  # another attempt owns the job now
        discard(files)
        return
    _forget(job, labelling)


def _forget(job: Job, labelling: Labelling | None) -> None:
    if labelling is not None:
        from workers.distill import forget_labels

        forget_labels(job)
