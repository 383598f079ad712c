"""Fine-tuning pages: the jobs list, the new-job form with its live estimate, the live job page.

A job started here is made exactly as the API makes it (`fine_tuning.parse` → `estimate` →
`submit`), so a dashboard job and an API job are the same row.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib import messages
from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.core.money import usd
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.jobs import actions, fine_tuning
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.formats import format_name
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.registry.models import Model, Task
from workers.runtime.specs import AUTO, Hyperparameters

JOBS_PER_PAGE = 50
EVENTS_SHOWN = 200
# A submitted form's token is remembered this long, so a double click starts one job, not two.
FORM_TOKEN_SECONDS = 3600


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    initial: str
    help: str


HYPERPARAMETER_FIELDS = (
    Field("n_epochs", "Epochs", AUTO, "Passes over the training set, 1–50; auto picks 1–10 by size."),
    Field("batch_size", "Batch size", AUTO, "Examples per optimizer step, 1–256; auto picks 8–64 by size."),
    Field(
        "learning_rate_multiplier", "Learning rate multiplier", AUTO,
        "Scales the base learning rate (5e-5). auto = 1; lower is steadier, higher learns faster.",
    ),
    Field(
        "warmup_ratio", "Warmup ratio", f"{Hyperparameters.warmup_ratio:g}",
        "Share of the steps spent ramping the learning rate up, 0–0.5.",
    ),
    Field(
        "weight_decay", "Weight decay", f"{Hyperparameters.weight_decay:g}",
        "AdamW weight decay, 0–1: a little keeps the weights small and the model general.",
    ),
    Field(
        "max_seq_length", "Max sequence length", str(Hyperparameters.max_seq_length),
        "Tokens kept per example, 8–512 (and at most the model's limit); longer texts are cut.",
    ),
    Field(
        "early_stopping_patience", "Early stopping patience", str(Hyperparameters.early_stopping_patience),
        "Stop after this many evaluations without a better validation loss; 0 turns it off.",
    ),
    Field("seed", "Seed", AUTO, "The same seed, data and settings give the same model. auto picks one."),
)  # fmt: skip
HYPERPARAMETERS = tuple(f.name for f in HYPERPARAMETER_FIELDS if f.name != "seed")
# A teacher turns the job into a distillation: it labels the training file's texts for the student.
DISTILLATION_FIELDS = ("teacher", "labels", "temperature")
FIELD_NAMES = (
    "training_file", "validation_file", "model", "suffix", *(f.name for f in HYPERPARAMETER_FIELDS),
    "max_cost", *DISTILLATION_FIELDS,
)  # fmt: skip
INITIAL = {f.name: f.initial for f in HYPERPARAMETER_FIELDS}


# --- Lookups, always scoped to the project ------------------------------------------------------
def _jobs(project: Project) -> Any:
    return Job.objects.for_project(project).filter(kind=JobKind.FINE_TUNE)


def _get_job(project: Project, job_id: str) -> Job:
    job = (
        _jobs(project)
        .select_related("model", "fine_tuned_model", "training_file", "validation_file", "created_by")
        .filter(public_id=job_id)
        .first()
    )
    if job is None:
        raise Http404("No such job")
    return job


def _training_files(project: Project) -> Any:
    return File.objects.filter(project=project, purpose=FilePurpose.FINE_TUNE, status=FileStatus.PROCESSED)


def _base_models() -> Any:
    return Model.objects.catalog().filter(is_fine_tunable=True)


def _teachers(project: Project) -> list[Model]:
    """Models that can label texts: the organization's classifiers and every callable generation model."""
    models = Model.objects.visible_to(project.organization).order_by("task", "name")
    return [
        m for m in models if m.limit("servable", True) and (m.task == Task.GENERATION or len(m.labels) >= 2)
    ]


# --- The form: values → the API's request body --------------------------------------------------
def _form_values(data: QueryDict) -> dict[str, str]:
    return {name: str(data.get(name, INITIAL.get(name, ""))).strip() for name in FIELD_NAMES}


def _is_auto(text: str) -> bool:
    return text == "" or text.lower() == AUTO


def _number(text: str) -> int | float | str:
    """ "3" → 3, "0.5" → 0.5; anything else stays text, so the API's own check words the error."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _micros(dollars: str) -> int:
    try:
        amount = Decimal(dollars.replace("$", "").replace(",", "").strip())
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or amount < 0:
        raise ActionError("max_cost must be an amount in dollars, e.g. 5 or 2.50.", param="max_cost")
    # Compared in dollars, before multiplying: "1e999999" is a finite Decimal whose micro-dollars
    # pass the Decimal context's largest exponent (an Overflow error).
    if amount > Decimal(fine_tuning.MAX_COST) / 1_000_000:
        raise ActionError(f"max_cost must be at most {usd(fine_tuning.MAX_COST)}.", param="max_cost")
    return int(amount * 1_000_000)


def _request_body(project: Project, values: dict[str, str]) -> dict[str, Any]:
    """The body a `client.fine_tuning.jobs.create(...)` call with the same choices would send."""
    body: dict[str, Any] = {
        "model": values["model"] or None,
        "training_file": values["training_file"] or None,
    }
    if values["validation_file"]:
        body["validation_file"] = values["validation_file"]
    if values["suffix"]:
        body["suffix"] = values["suffix"]
    if not _is_auto(values["seed"]):
        body["seed"] = _number(values["seed"])
    if values["max_cost"]:
        body["max_cost"] = _micros(values["max_cost"])
    requested = {name: _number(values[name]) for name in HYPERPARAMETERS if not _is_auto(values[name])}
    model = Model.objects.visible_to(project.organization).filter(name=values["model"]).first()
    if values["teacher"]:
        body["method"] = {
            "type": "distillation",
            "distillation": _distillation(values) | {"hyperparameters": requested},
        }
    elif model is not None:
        method = "classification" if model.task == Task.CLASSIFICATION else "supervised"
        body["method"] = {"type": method, method: {"hyperparameters": requested}}
    return body


def _distillation(values: dict[str, str]) -> dict[str, Any]:
    section: dict[str, Any] = {"teacher": values["teacher"]}
    if values["labels"]:  # one per line or comma-separated, as typed
        section["labels"] = [
            label.strip() for label in values["labels"].replace("\n", ",").split(",") if label.strip()
        ]
    if values["temperature"]:
        section["temperature"] = _number(values["temperature"])
    return section


def _field_for(param: str | None) -> str:
    """The form field an ActionError's `param` names ("form" when none matches)."""
    name = (param or "").removeprefix("hyperparameters.").removeprefix("method.distillation.")
    if name == "learning_rate":
        name = "learning_rate_multiplier"
    elif name == "unlabeled_file":
        name = "training_file"
    elif name.startswith("method."):
        name = "model"  # the method follows from the base model chosen
    return name if name in FIELD_NAMES else "form"


def _errors(error: ActionError | None) -> dict[str, str]:
    return {_field_for(error.param): error.message} if error else {}


def _error_slots(errors: dict[str, str]) -> list[dict[str, str]]:
    """One slot per field: the estimate partial fills or clears every one (htmx out-of-band)."""
    return [{"name": name, "message": errors.get(name, "")} for name in (*FIELD_NAMES, "form")]


def _file_choice(file: File) -> dict[str, str]:
    rows = (file.validation or {}).get("rows")
    details = [f"{rows:,} rows" if isinstance(rows, int) else "", format_name(file.format)]
    return {"id": file.public_id, "label": " · ".join([file.filename, *filter(None, details)])}


def _form_context(
    project: Project, values: dict[str, str], error: ActionError | None = None
) -> dict[str, Any]:
    errors = _errors(error)
    return {
        "project": project,
        "current_project": project,
        "values": values,
        "errors": errors,
        "files": [_file_choice(f) for f in _training_files(project)],
        "base_models": _base_models(),
        "teachers": _teachers(project),
        "hyperparameter_fields": [
            {"field": f, "value": values[f.name], "error": errors.get(f.name, "")}
            for f in HYPERPARAMETER_FIELDS
        ],
        "form_token": secrets.token_urlsafe(16),
    }


def _duration(seconds: float | int | None) -> str:
    if seconds is None:
        return ""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --- Pages --------------------------------------------------------------------------------------
@member_required
@require_GET
def job_list(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    page = Paginator(_jobs(project).select_related("fine_tuned_model"), JOBS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    return render(
        request, "dashboard/jobs.html", {"project": project, "current_project": project, "page": page}
    )


@member_required
def job_new(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    if request.method != "POST":
        return render(request, "dashboard/job_new.html", _form_context(project, _form_values(request.GET)))
    values = _form_values(request.POST)
    # cache.add is atomic: of two submissions of one form, only the first gets past here.
    token_key = f"dashboard:fine-tune-form:{request.user.pk}:{request.POST.get('form_token', '')[:64]}"
    if request.POST.get("form_token") and not cache.add(token_key, "", FORM_TOKEN_SECONDS):
        job_id = cache.get(token_key)
        if job_id:
            return redirect("dashboard:job", project.public_id, job_id)
        messages.info(request, "This form was already submitted.")
        return redirect("dashboard:jobs", project.public_id)
    try:
        parsed = fine_tuning.parse(project, _request_body(project, values))
        job = fine_tuning.submit(parsed, project=project, user=request.user)
    except ActionError as exc:
        cache.delete(token_key)
        return render(request, "dashboard/job_new.html", _form_context(project, values, exc))
    cache.set(token_key, job.public_id, FORM_TOKEN_SECONDS)
    messages.success(request, f"Fine-tuning job {job.public_id} created.")
    return redirect("dashboard:job", project.public_id, job.public_id)


@member_required
@require_POST
def job_estimate(request: OrganizationRequest, project_id: str) -> HttpResponse:
    """The htmx partial under the form: what the job would cost, or why it cannot run."""
    project = get_project(request, project_id)
    values = _form_values(request.POST)
    context: dict[str, Any] = {"estimate": None, "errors": {}}
    if values["training_file"]:
        try:
            parsed = fine_tuning.parse(project, _request_body(project, values))
            estimate = fine_tuning.estimate(parsed)
            context.update(estimate=estimate, duration=_duration(estimate["estimated_seconds"]))
            if parsed.max_cost is not None and not estimate["allowed_to_proceed"]:
                # Not an error: the job runs, and stops when its next step would pass max_cost.
                context["errors"] = {
                    "max_cost": f"The estimated cost ({usd(estimate['estimated_cost'])}) is above your max cost "
                    f"({usd(parsed.max_cost)}): the job will stop there and keep the best model so far."
                }
        except ActionError as exc:
            context["errors"] = _errors(exc)
    context["error_slots"] = _error_slots(context["errors"])
    return render(request, "dashboard/_job_estimate.html", context)


def _job_context(request: OrganizationRequest, project: Project, job: Job) -> dict[str, Any]:
    progress = job.progress or {}
    result = job.result or {}
    metrics = result.get("metrics") or {}
    events = list(job.events.all()[:EVENTS_SHOWN])
    return {
        "project": project,
        "current_project": project,
        "job": job,
        "queue_position": actions.queue_position(job),
        "percent": 100.0 if job.status == JobStatus.SUCCEEDED else progress.get("percent", 0.0),
        "step": progress.get("step"),
        "total_steps": progress.get("total_steps"),
        "epoch": progress.get("epoch"),
        "eta": _duration(progress.get("eta_seconds")) if job.status == JobStatus.RUNNING else "",
        "can_cancel": job.status
        in (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
        and request.membership.can_destroy(job.created_by_id),
        "cancelling": job.stop_requested == actions.STOP_CANCEL,
        **metrics_context(metrics, result.get("labels")),
        "distillation": result.get("distillation"),
        "result_files": _result_files(project, job),
        "events": events,
        "event_count": job.events.count() if len(events) == EVENTS_SHOWN else len(events),
    }


def _result_files(project: Project, job: Job) -> list[File]:
    """The job's results files (metrics per step, per-row validation loss, a teacher's labels), in
    the order the job lists them; a deleted one is left out."""
    ids = list(job.result_files or [])
    files = {f.public_id: f for f in File.objects.filter(project=project, public_id__in=ids)}
    return [files[i] for i in ids if i in files]


def metrics_context(metrics: dict[str, Any], labels: list[str] | None = None) -> dict[str, Any]:
    """Final classifier metrics as table rows (also used by the model page)."""
    labels = list(labels or metrics.get("labels") or [])
    matrix = metrics.get("confusion_matrix") or []
    per_class = metrics.get("per_class") or {}
    return {
        "metrics": metrics,
        "labels": labels,
        "matrix_rows": [
            {"label": label, "cells": [{"count": n, "hit": i == j} for j, n in enumerate(row)]}
            for i, (label, row) in enumerate(zip(labels, matrix, strict=False))
        ],
        "per_class_rows": [{"label": label, **per_class[label]} for label in labels if label in per_class],
    }


@member_required
@require_GET
def job_detail(request: OrganizationRequest, project_id: str, job_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    return render(
        request, "dashboard/job_detail.html", _job_context(request, project, _get_job(project, job_id))
    )


@member_required
@require_GET
def job_status(request: OrganizationRequest, project_id: str, job_id: str) -> HttpResponse:
    """The fragment the job page polls every 2 s; once the job is finished it stops polling."""
    project = get_project(request, project_id)
    context = _job_context(request, project, _get_job(project, job_id))
    return render(request, "dashboard/_job_live.html", {**context, "oob": True})


@member_required
@require_GET
def job_metrics(request: OrganizationRequest, project_id: str, job_id: str) -> JsonResponse:
    """The loss curve's points, one per step in step order. A retried attempt re-logs the steps
    after its checkpoint; the later value wins."""
    project = get_project(request, project_id)
    job = _get_job(project, job_id)
    points: dict[int, dict[str, Any]] = {}
    for data in job.events.filter(type="metrics").order_by("id").values_list("data", flat=True):
        if not isinstance(data, dict):
            continue
        step = data.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            points.setdefault(step, {}).update(data)
    return JsonResponse(
        {
            "object": "list",
            "job": job.public_id,
            "status": job.status,
            "is_finished": job.is_finished,
            "data": [points[step] for step in sorted(points)],
        }
    )


@member_required
@require_POST
def job_cancel(request: OrganizationRequest, project_id: str, job_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    job = _get_job(project, job_id)
    if job.is_finished:
        messages.error(request, f"Job {job.public_id} has already {job.status}; it cannot be cancelled.")
    elif run_action(request, lambda: actions.require_may_stop(request.user, job, "cancel")):
        job = actions.cancel(job)
        if job.status == JobStatus.CANCELLED:
            messages.success(request, "Job cancelled.")
        else:
            messages.success(request, "Cancellation requested: the job stops at its next step.")
    return redirect("dashboard:job", project.public_id, job.public_id)
