"""The fine-tune runner: a claimed job row → TrainSpec → runtime.train → rows and usage.

Django-aware and thin on purpose: the training itself is `workers.runtime.training.train` (or
`workers.runtime.sft.train_lm`, or `workers.runtime.dpo.train_dpo`), the progress it reports goes
through `progress`, its result files come from `reports`, and a distillation's teacher labels the
texts first (`distill`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError

from apps.core.storage import download_dir, download_file, job_prefix, upload_dir
from apps.evals import parity
from apps.jobs import actions
from apps.jobs.fine_tuning import job_devices
from apps.jobs.models import Job, JobStatus
from apps.projects.actions import discard, stored_result_file
from apps.projects.models import FilePurpose
from apps.registry.actions import create_fine_tuned_model
from workers.runners.artifacts import local_model_dir
from workers.runners.attempt import MONEY_STOPS, AttemptGuard, drop_interrupted_connections
from workers.runners.checkpoint_eval import CheckpointScorer
from workers.runners.distill import (
    Labelling,
    compare,
    forget_labels,
    label_for_distillation,
    labels_report,
    student_spec,
)
from workers.runners.progress import STOP_MESSAGES, ProgressReporter, without_paths
from workers.runners.reports import diagnostics_csv, metrics_csv
from workers.runtime.specs import DEFAULT_BETA, Hyperparameters, TrainingDataError, TrainSpec

logger = logging.getLogger(__name__)


def run_fine_tune(job: Job) -> None:
    if _failed_for_a_deleted_file(job):
        return
    work = Path(settings.VAR_DIR) / "work" / f"{job.public_id}-{job.attempt}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with AttemptGuard(job.pk, job.attempt) as guard:
            method = (job.request or {}).get("method") or {}
            method_type = method.get("type")
            section = method.get(method_type) or {}
            is_generation = method_type in ("supervised", "dpo")  # a causal LM learning replies
            # Heavy imports (torch) only once the lease is kept alive: a fresh child can take longer
            # to import torch than the stale threshold, and the reaper would take the job away.
            if method_type == "dpo":
                from workers.runtime.dpo import train_dpo as train
            elif is_generation:
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
                task="generation" if is_generation else "classification",
                lora=section.get("lora"),  # the API takes it for supervised, DPO and classification
                messages_field=_mapped(job, "messages"),
                prompt_field=_mapped(job, "prompt"),
                completion_field=_mapped(job, "completion"),
                beta=float(section.get("beta", DEFAULT_BETA)),
                precision=settings.TRAINING_PRECISION,
                sharding=settings.TRAINING_SHARDING,
            )
            progress = ProgressReporter(job, guard)
            labelling = None
            if method.get("type") == "distillation":
                labelling = label_for_distillation(job, guard, progress, spec, work)
                if labelling is None:  # the job ended while the teacher labelled
                    return
                student = student_spec(job, spec, labelling, work)
                if student is None:  # too few texts labelled to train on: the job failed
                    return
                spec = student
            devices = job_devices(job)
            if devices > 1:
                result = train_on_devices(job, spec, devices, progress, work)
                if result is None:  # the worker lacks the devices: the job failed
                    return
            elif (job.request or {}).get("eval"):  # scored by an eval at each epoch's end (SFT only)
                scorer = CheckpointScorer(job.request["eval"], progress, job.model_name)
                result = train(spec, progress.on_event, progress.should_stop, score=scorer)  # type: ignore[call-arg]
            else:
                result = train(spec, progress.on_event, progress.should_stop)
            progress.drain()
            if guard.lost:
                return
            _finish(job, guard, result, progress, spec, labelling)
    except SoftTimeLimitExceeded:
        # Terminal, like Celery's own view of a timeout: the job fails and is not retried.
        _fail_time_limit(job)
    except TrainingDataError as exc:
        # Only the customer's data or settings: any other error is ours, and run_claimed fails the
        # job with internal_error rather than blame the customer's file for it.
        reason = without_paths(str(exc))
        actions.finish(
            job.pk,
            job.attempt,
            JobStatus.FAILED,
            error={"code": "invalid_training_data", "message": reason, "param": "training_file"},
            message=f"Training failed: {reason}",
        )
    except (DatabaseError, OSError) as exc:
        logger.exception("job %s: transient failure", job.public_id)
        # If even that fails, the reaper re-queues the job once its heartbeat goes stale.
        with contextlib.suppress(DatabaseError):
            actions.requeue(
                job.pk, job.attempt, f"Attempt {job.attempt} hit a transient error ({type(exc).__name__})."
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_on_devices(job: Job, spec: TrainSpec, devices: int, progress: ProgressReporter, work: Path) -> Any:
    """The training on `devices` ranks of this worker (workers/runtime/distributed.py), or None when
    it has fewer GPUs than that: the job then fails, saying so, and is not retried here."""
    import torch

    from workers.runtime.distributed import run_distributed

    available = torch.cuda.device_count()
    if torch.cuda.is_available() and available < devices:
        message = (
            f"This job asks for {devices} devices and the worker that took it has {available}. "
            "Start it again with fewer devices, or contact us to run it on a larger worker."
        )
        actions.finish(
            job.pk,
            job.attempt,
            JobStatus.FAILED,
            error={"code": "devices_unavailable", "message": message, "param": "devices"},
            message=message,
        )
        return None
    return run_distributed(spec, devices, progress.on_event, progress.should_stop, work / "ranks")


def _failed_for_a_deleted_file(job: Job) -> bool:
    """Fails the job when a file it names is gone. Deleting a file an unfinished job reads is refused,
    but a row deleted past that rule (in the admin) leaves the job's reference empty."""
    request = job.request or {}
    for param, file in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        # A fine-tune always has a training file; a validation file only when one was named.
        if file is None and (param == "training_file" or request.get(param)):
            message = f"The {param.replace('_', ' ')} of this job was deleted. Start a new job with a file that exists."
            actions.finish(
                job.pk,
                job.attempt,
                JobStatus.FAILED,
                message=message,
                error={"code": "file_deleted", "message": message, "param": param},
            )
            return True
    return False


def _mapped(job: Job, field: str) -> str:
    mapping = (job.training_file.column_mapping if job.training_file else None) or {}
    return str(mapping.get(field, field))


def _local_copy(file: Any, stem: Path) -> Path:
    # A .tsv keeps its name: its delimiter is read from the extension, as the validation did.
    is_tsv = file.filename.lower().endswith(".tsv")
    suffix = (".tsv" if is_tsv else ".csv") if file.format.endswith("_csv") else ".jsonl"
    return download_file(file.content.name, stem.with_suffix(suffix))


def _fail_time_limit(job: Job) -> None:
    """The soft time limit hit: the job fails with `time_limit` (not `internal_error`), keeping the
    checkpoints it saved. If PostgreSQL is down too, the reaper handles the job later."""
    drop_interrupted_connections()  # the limit's signal may have landed inside a query
    with contextlib.suppress(DatabaseError):
        checkpoint = Job.objects.filter(pk=job.pk).values_list("checkpoint_ref", flat=True).first()
        message = actions.time_limit_message(settings.GPU_TASK_SOFT_TIME_LIMIT, bool(checkpoint))
        actions.finish(
            job.pk,
            job.attempt,
            JobStatus.FAILED,
            error={"code": "time_limit", "message": message, "param": None},
            message=message,
        )


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
            job.pk,
            job.attempt,
            JobStatus.CANCELLED,
            usage=usage,
            usage_models=models,
            fields=fields,
            message="Job cancelled.",
        )
        if labelling is not None:
            forget_labels(job)
        return
    if result.status == "stopped" and guard.stop_reason == "pause":
        # Billed like any attempt that ends: the pause checkpoint is a callable, exportable model.
        ended = actions.finish(
            job.pk,
            job.attempt,
            JobStatus.PAUSED,
            usage=usage,
            usage_models=models,
            fields=fields,
            message="Job paused at a checkpoint.",
        )
        if ended is not None and ended.status == JobStatus.CANCELLED and labelling is not None:
            forget_labels(job)  # cancelled while pausing: no resume will need the teacher's labels
        return
    key = job_prefix("models", job.organization.public_id, job.public_id)
    upload_dir(Path(result.model_dir), key)
    diagnostics = diagnostics_csv(spec, result.model_dir) if spec.task == "classification" else None
    reason = MONEY_STOPS.get(guard.stop_reason)
    outcome: dict[str, Any] = {
        "metrics": result.metrics,
        "labels": list(result.labels),
        "steps": result.steps,
        "validation_examples": progress.valid_examples,
    }
    fields["progress"] = progress.final_progress(result.steps, succeeded=True)
    teacher_report = None
    if labelling is not None:
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
        job.pk,
        job.attempt,
        JobStatus.SUCCEEDED,
        status_reason=reason or "",
        usage=usage,
        usage_models=models,
        fields=fields,
        result=outcome,
        on_finished=create_model,
        message=STOP_MESSAGES[reason] if reason else "The job has successfully completed.",
    )
    if finished is None:  # another attempt owns the job now
        discard(files)
        return
    # An imported job's parity eval samples the new model now that it exists (apps.evals.parity).
    # The job has succeeded: a failure here is logged, never the job's.
    try:
        if parity.start_new_model_run(finished) == "waiting":
            from workers.tasks import start_parity_run

            start_parity_run.apply_async((finished.public_id,), countdown=settings.PARITY_RETRY_SECONDS)
    except Exception:
        logger.exception("job %s: the parity run could not be started", finished.public_id)
    if labelling is not None:
        forget_labels(job)
