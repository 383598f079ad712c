from __future__ import annotations

from typing import Any

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers

from apps.core.wire import omit_unset
from apps.jobs.actions import STOP_CANCEL, STOP_PAUSE, queue_position
from apps.jobs.fine_tuning import MAX_COST, MAX_SEED, base_learning_rate, job_devices
from apps.jobs.models import Checkpoint, Job, JobEvent, JobStatus


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value else None


def openai_hyperparameters(job: Job) -> dict[str, Any]:
    hp = job.hyperparameters or {}
    out: dict[str, Any] = {
        "n_epochs": hp.get("n_epochs", "auto"),
        "batch_size": hp.get("batch_size", "auto"),
        "learning_rate_multiplier": round(hp["learning_rate"] / base_learning_rate(job), 6)
        if "learning_rate" in hp
        else "auto",
    }
    return out


OPENAI_METHODS = ("supervised", "dpo", "reinforcement")


def fine_tuning_job(job: Job) -> dict[str, Any]:
    """FineTuningJob exactly as OpenAI's, plus our extension fields at the end."""
    method = (job.request or {}).get("method") or {}
    method_type = method.get("type", "classification")
    hp = job.hyperparameters or {}
    progress = job.progress or {}
    estimated_finish = None
    if job.status == JobStatus.RUNNING and progress.get("eta_seconds") is not None and job.heartbeat_at:
        estimated_finish = int(job.heartbeat_at.timestamp() + progress["eta_seconds"])
    body: dict[str, Any] = {
        "id": job.public_id,
        "object": "fine_tuning.job",
        "created_at": _ts(job.created_at),
        "model": job.model_name,
        "organization_id": job.organization.public_id,
        "status": job.shown_status,
        "training_file": job.training_file.public_id if job.training_file else None,
        "validation_file": job.validation_file.public_id if job.validation_file else None,
        "hyperparameters": openai_hyperparameters(job),
        "fine_tuned_model": job.fine_tuned_model.name if job.fine_tuned_model else None,
        "finished_at": _ts(job.finished_at),
        "trained_tokens": job.trained_tokens,
        "result_files": list(job.result_files or []),
        "seed": job.seed if job.seed is not None else 0,
        "estimated_finish": estimated_finish,
        "error": job.error if job.status == JobStatus.FAILED and job.error else None,
        "integrations": (job.request or {}).get("integrations"),
        "metadata": job.metadata,
        # OpenAI's `method.type` only knows supervised/dpo/reinforcement (the spec's enum and the
        # SDK's `Literal`), and `method` is not nullable: a classification or distillation job has
        # no truthful value there, so it leaves `method` out (as OpenAI does for jobs created
        # without one) and `method_details` always describes the method with its resolved
        # hyperparameters.
        "method": {
            "type": method_type,
            method_type: {"hyperparameters": openai_hyperparameters(job) | _method_hyperparameters(method)},
        }
        if method_type in OPENAI_METHODS
        else None,
        # Extensions
        "method_details": {
            "type": method_type,
            method_type: _method_options(method, method_type)
            | {"hyperparameters": hp | _method_hyperparameters(method)},
        },
        "distillation": (job.result or {}).get("distillation") if method_type == "distillation" else None,
        "status_reason": job.status_reason or _stop_reason(job),
        "queue_position": queue_position(job),
        "progress": {
            "step": progress.get("step", 0),
            "total_steps": progress.get("total_steps"),
            "percent": progress.get("percent", 100.0 if job.status == JobStatus.SUCCEEDED else 0.0),
            "eta_seconds": progress.get("eta_seconds") if job.status == JobStatus.RUNNING else None,
            "epoch": progress.get("epoch"),
        },
        "estimated_cost": job.estimated_cost,
        "max_cost": job.max_cost,
        "devices": job_devices(job),
        "eval_id": ((job.request or {}).get("eval") or {}).get("id"),
        "attempt": job.attempt,
    }
    return omit_unset(body, ("method",))


STOP_REASONS = {STOP_CANCEL: "cancel_requested", STOP_PAUSE: "pause_requested"}


def _stop_reason(job: Job) -> str | None:
    """Why a running job will stop: its worker stops at the next step, and until then the job is
    still `running`, so a cancel or pause answered at once would otherwise look ignored."""
    return STOP_REASONS.get(job.stop_requested) if job.status == JobStatus.RUNNING else None


def _method_options(method: dict[str, Any], method_type: str) -> dict[str, Any]:
    """The method's options as stored (LoRA, a distillation's teacher and labels), without the
    hyperparameters as requested: the resolved ones replace them."""
    section = method.get(method_type) or {}
    return {
        key: value
        for key, value in section.items()
        if key not in ("hyperparameters", *METHOD_HYPERPARAMETERS)
    }


# Hyperparameters of one method, resolved when the job was created and stored in its section of the
# request (the shared ones are in job.hyperparameters): DPO's beta.
METHOD_HYPERPARAMETERS = ("beta",)


def _method_hyperparameters(method: dict[str, Any]) -> dict[str, Any]:
    section = method.get(method.get("type", "")) or {}
    return {key: section[key] for key in METHOD_HYPERPARAMETERS if key in section}


def job_event(event: JobEvent) -> dict[str, Any]:
    body = {
        "id": event.public_id,
        "object": "fine_tuning.job.event",
        "created_at": _ts(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }
    # A message event has no data: OpenAI leaves the field out then.
    return omit_unset(body, ("data",))


def checkpoint_object(checkpoint: Checkpoint, job: Job) -> dict[str, Any]:
    metrics = {"step": checkpoint.step, **{k: v for k, v in (checkpoint.metrics or {}).items() if _scalar(v)}}
    return {
        "id": checkpoint.public_id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": _ts(checkpoint.created_at),
        "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
        "fine_tuning_job_id": job.public_id,
        "step_number": checkpoint.step,
        "metrics": metrics,
    }


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class FineTuningJobSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created_at = serializers.IntegerField()
    model = serializers.CharField()
    organization_id = serializers.CharField()
    status = serializers.CharField(
        help_text="OpenAI's statuses, and `paused` and `pausing` (a pause asked for, its checkpoint not yet saved)."
    )
    training_file = serializers.CharField(allow_null=True, help_text="null once the file was deleted")
    validation_file = serializers.CharField(allow_null=True)
    hyperparameters = serializers.DictField()
    fine_tuned_model = serializers.CharField(allow_null=True)
    finished_at = serializers.IntegerField(allow_null=True)
    trained_tokens = serializers.IntegerField(allow_null=True)
    result_files = serializers.ListField(child=serializers.CharField())
    seed = serializers.IntegerField()
    estimated_finish = serializers.IntegerField(allow_null=True)
    error = serializers.DictField(allow_null=True)
    metadata = serializers.DictField(allow_null=True)
    integrations = serializers.ListField(child=serializers.DictField(), allow_null=True)
    method = serializers.DictField(
        required=False, help_text="Omitted for methods OpenAI has no type for (classification, distillation)."
    )
    method_details = serializers.DictField(help_text="Extension: the method with every hyperparameter.")
    distillation = serializers.DictField(
        allow_null=True,
        help_text="Extension: a finished distillation's comparison of teacher and student on held-out texts.",
    )
    status_reason = serializers.CharField(
        allow_null=True,
        help_text="Extension, e.g. budget_reached, or cancel_requested while a running job stops.",
    )
    queue_position = serializers.IntegerField(allow_null=True, help_text="Extension: 1 = next to start.")
    progress = serializers.DictField(help_text="Extension: step, total_steps, percent, eta_seconds.")
    estimated_cost = serializers.IntegerField(allow_null=True, help_text="Extension: micro-dollars.")
    max_cost = serializers.IntegerField(allow_null=True, help_text="Extension: budget cap, micro-dollars.")
    devices = serializers.IntegerField(help_text="Extension: the devices (GPUs) that train the job together.")
    eval_id = serializers.CharField(
        allow_null=True, help_text="Extension: the eval that scores each epoch and picks the model kept."
    )


class FineTuningJobCreateSerializer(serializers.Serializer):
    model = serializers.CharField()
    training_file = serializers.CharField()
    validation_file = serializers.CharField(required=False, allow_null=True)
    suffix = serializers.CharField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_SEED)
    metadata = serializers.DictField(
        child=serializers.CharField(max_length=512, allow_blank=True), required=False, allow_null=True
    )
    method = serializers.DictField(
        required=False,
        help_text='{"type": "classification", "classification": {"hyperparameters": {...}}} or supervised.',
    )
    hyperparameters = serializers.DictField(required=False, help_text="Deprecated: use method.")
    integrations = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        allow_null=True,
        max_length=0,
        help_text="Accepted empty and stored; Weights & Biases integrations are not available here.",
    )
    max_cost = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=MAX_COST,
        help_text="Extension: micro-dollars.",
    )
    devices = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Extension: train on this many devices (GPUs) of one worker, data-parallel; 1 by default. "
        "Supervised and classification fine-tunes, up to the deployment's TRAINING_MAX_DEVICES.",
    )
    eval_id = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="Extension: an eval of the project that scores each epoch of a supervised fine-tune; the "
        "checkpoint kept is the best by its score.",
    )


class EstimateSerializer(serializers.Serializer):
    object = serializers.CharField()
    model = serializers.CharField()
    training_examples = serializers.IntegerField()
    trained_tokens = serializers.IntegerField()
    steps = serializers.IntegerField()
    estimated_seconds = serializers.IntegerField()
    estimated_cost = serializers.IntegerField()
    currency = serializers.CharField()
    hyperparameters = serializers.DictField()
    allowed_to_proceed = serializers.BooleanField()


# Inline: a field named `data` would shadow Serializer.data.
JobEventSerializer = inline_serializer(
    "FineTuningJobEvent",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "created_at": serializers.IntegerField(),
        "level": serializers.CharField(),
        "message": serializers.CharField(),
        "type": serializers.CharField(),
        "data": serializers.DictField(required=False, help_text="Omitted for an event without data."),
    },
)


class CheckpointSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created_at = serializers.IntegerField()
    fine_tuned_model_checkpoint = serializers.CharField()
    fine_tuning_job_id = serializers.CharField()
    step_number = serializers.IntegerField()
    metrics = serializers.DictField()
