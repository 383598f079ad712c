"""Fine-tuning pages: the jobs list, the new-job form with its live estimate, the live job page.

A job started here is made exactly as the API makes it (`fine_tuning.parse` → `estimate` →
`submit`), so a dashboard job and an API job are the same row.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from django.contrib import messages
from django.core.cache import cache
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.core.money import usd
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.dashboard.views.fine_tune_form import (
    FIELD_NAMES,
    HYPERPARAMETER_FIELDS,
    LABELS,
    field_for,
    form_errors,
    form_values,
    in_form_words,
    shown_value,
    small_data_reason,
)
from apps.jobs import actions, fine_tuning
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.formats import format_name
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.registry.models import Model, Task

JOBS_PER_PAGE = 50
EVENTS_PER_PAGE = 25
# A submitted form's token is remembered this long, so a double click starts one job, not two.
FORM_TOKEN_SECONDS = 3600
# Fewer validation rows than this and the job page says its scores are too few to trust.
TRUSTED_VALIDATION_ROWS = 30
# An ETA past this says only that it is long: a rate measured over a few slow steps can be absurd.
LONGEST_ETA_SECONDS = 2 * 24 * 3600
# Step metrics are milestones only when they carry an evaluation (a validation loss, an eval score).
MILESTONES = ~Q(type="metrics") | Q(data__has_key="valid_loss") | Q(data__has_key="eval_score")


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


def base_models() -> Any:
    return Model.objects.catalog().in_service().filter(is_fine_tunable=True)


def _teachers(project: Project) -> list[Model]:
    """Models that can label texts: the organization's classifiers and every callable generation model."""
    models = Model.objects.visible_to(project.organization).in_service().order_by("task", "name")
    return [
        m for m in models if m.limit("servable", True) and (m.task == Task.GENERATION or len(m.labels) >= 2)
    ]


def _error_slots(errors: dict[str, str]) -> list[dict[str, str]]:
    """One slot per field: the estimate partial fills or clears every one (htmx out-of-band)."""
    return [{"name": name, "message": errors.get(name, "")} for name in (*FIELD_NAMES, "form")]


def _error_fields(errors: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "label": LABELS[name]} for name in FIELD_NAMES if name in errors]


def _file_choice(file: File) -> dict[str, str]:
    rows = (file.validation or {}).get("rows")
    details = [f"{rows:,} rows" if isinstance(rows, int) else "", format_name(file.format)]
    return {"id": file.public_id, "label": " · ".join([file.filename, *filter(None, details)])}


def _form_context(
    project: Project, values: dict[str, str], errors: dict[str, str] | None = None, small_data: str = ""
) -> dict[str, Any]:
    errors = errors or {}
    return {
        "project": project,
        "current_project": project,
        "values": values,
        "errors": errors,
        "error_fields": _error_fields(errors),
        "files": [_file_choice(f) for f in _training_files(project)],
        "base_models": base_models(),
        "teachers": _teachers(project),
        "hyperparameter_fields": [
            {"field": f, "value": shown_value(values[f.name]), "error": errors.get(f.name, "")}
            for f in HYPERPARAMETER_FIELDS
        ],
        "small_data": small_data,
        # Once sent, the form's live estimate keeps saying which required fields are still empty.
        "submitted": bool(errors or small_data),
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
        # Only a file the user chose (a "Fine-tune with this file" link) comes preselected.
        return render(request, "dashboard/job_new.html", _form_context(project, form_values(request.GET)))
    values = form_values(request.POST)
    # cache.add is atomic: of two submissions of one form, only the first gets past here.
    token_key = f"dashboard:fine-tune-form:{request.user.pk}:{request.POST.get('form_token', '')[:64]}"
    if request.POST.get("form_token") and not cache.add(token_key, "", FORM_TOKEN_SECONDS):
        job_id = cache.get(token_key)
        if job_id:
            return redirect("dashboard:job", project.public_id, job_id)
        messages.info(request, "This form was already submitted.")
        return redirect("dashboard:jobs", project.public_id)
    errors, parsed = form_errors(project, values)
    small_data = small_data_reason(parsed) if parsed is not None else ""
    if parsed is None or (small_data and request.POST.get("confirm_small_data") != "yes"):
        cache.delete(token_key)
        return render(request, "dashboard/job_new.html", _form_context(project, values, errors, small_data))
    try:
        job = fine_tuning.submit(parsed, project=project, user=request.user)
    except ActionError as exc:
        cache.delete(token_key)
        field = field_for(exc.param)
        errors = {field: in_form_words(exc.message, field)}
        return render(request, "dashboard/job_new.html", _form_context(project, values, errors))
    cache.set(token_key, job.public_id, FORM_TOKEN_SECONDS)
    messages.success(request, f"Fine-tuning job {job.public_id} created.")
    return redirect("dashboard:job", project.public_id, job.public_id)


@member_required
@require_POST
def job_estimate(request: OrganizationRequest, project_id: str) -> HttpResponse:
    """The htmx partial under the form: what the job would cost, or every reason it cannot run."""
    project = get_project(request, project_id)
    values = form_values(request.POST)
    submitted = request.POST.get("submitted") == "yes"
    errors, parsed = form_errors(project, values, required=submitted)
    context: dict[str, Any] = {
        "estimate": None,
        "errors": errors,
        "small_data": "",
        "submitted": submitted,
        "error_fields": _error_fields(errors),
    }
    if parsed is not None:
        estimate = fine_tuning.estimate(parsed)
        context.update(
            estimate=estimate,
            duration=_duration(estimate["estimated_seconds"]),
            small_data=small_data_reason(parsed),
        )
        if parsed.max_cost is not None and not estimate["allowed_to_proceed"]:
            # Not an error: the job runs, and stops when its next step would pass max_cost.
            context["errors"] = {
                "max_cost": f"The estimated cost ({usd(estimate['estimated_cost'])}) is above your max cost "
                f"({usd(parsed.max_cost)}): the job will stop there and keep the best model so far."
            }
    context["error_slots"] = _error_slots(context["errors"])
    return render(request, "dashboard/_job_estimate.html", context)


def _job_context(request: OrganizationRequest, project: Project, job: Job) -> dict[str, Any]:
    result = job.result or {}
    metrics = result.get("metrics") or {}
    events = Paginator(job.events.filter(MILESTONES), EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    return {
        "project": project,
        "current_project": project,
        "job": job,
        **_progress_context(job),
        "can_cancel": job.status
        in (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
        and request.membership.can_destroy(job.created_by_id),
        "cancelling": job.stop_requested == actions.STOP_CANCEL,
        "pausing": job.is_pausing,
        **metrics_context(metrics, result.get("labels")),
        "trust_note": _trust_note(_validation_rows(result), "accuracy" in metrics),
        "distillation": result.get("distillation"),
        "result_files": _result_files(project, job),
        "page": events,
        "events": events.object_list,
    }


def _progress_context(job: Job) -> dict[str, Any]:
    """Where the job is: its queue position and the wait until it starts, or its step, percent and
    time left. A succeeded job is at 100% at its last step, which is before the planned last step
    when it stopped early."""
    progress = job.progress or {}
    step, total, epoch = progress.get("step") or 0, progress.get("total_steps"), progress.get("epoch")
    percent = 100.0 if job.status == JobStatus.SUCCEEDED else float(progress.get("percent") or 0.0)
    parts = [f"Step {step:,} of {total:,}" if isinstance(total, int) else ""]
    parts += [f"epoch {epoch}" if epoch else "", f"{percent:.1f}%"]
    if job.status == JobStatus.RUNNING:
        parts.append(_eta(progress.get("eta_seconds")))
    elif job.status == JobStatus.SUCCEEDED and isinstance(total, int) and step < total:
        parts.append(_stopped_early(job))
    return {
        "percent": percent,
        "total_steps": total,
        "progress_text": " · ".join(filter(None, parts)),
        "queue_text": _queue_text(job) if job.status == JobStatus.QUEUED else "",
    }


def _queue_text(job: Job) -> str:
    position = actions.queue_position(job)
    wait, duration = fine_tuning.queue_wait_seconds(job), fine_tuning.job_seconds(job)
    parts = [f"Position {position} in the queue" if position else "Queued"]
    if wait is not None:
        parts.append(
            "starts as soon as a worker is free" if wait < 5 else f"starts in about {_duration(wait)}"
        )
    if duration is not None:
        parts.append(f"then about {_duration(duration)} of training")
    return " · ".join(parts)


def _stopped_early(job: Job) -> str:
    metrics = (job.result or {}).get("metrics") or {}
    if job.status_reason:
        return "stopped early at its cost limit"
    if metrics.get("early_stopped"):
        return "stopped early: the validation loss stopped improving"
    return "stopped early"


def _eta(seconds: Any) -> str:
    """The running job's time left, as the page says it: never negative, never absurd."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "estimating the time left…"
    if seconds > LONGEST_ETA_SECONDS:
        return "more than 2 days left"
    if seconds < 1:
        return "finishing…"
    return f"about {_duration(seconds)} left"


def _trust_note(rows: int | None, has_accuracy: bool) -> str:
    """A note on scores measured on a handful of rows, which chance alone can swing."""
    if rows is None or rows >= TRUSTED_VALIDATION_ROWS:
        return ""
    if rows == 0:
        return (
            "No validation rows: these scores measure nothing. Add a validation file, or more training rows."
        )
    swing = (
        f" One row more or less right moves the accuracy by {100 / rows:.1f} points." if has_accuracy else ""
    )
    return (
        f"Scored on only {rows} validation row{'s' if rows != 1 else ''}: too few to trust.{swing} "
        f"A validation set of at least {TRUSTED_VALIDATION_ROWS} rows gives scores you can rely on."
    )


def _validation_rows(result: dict[str, Any]) -> int | None:
    """How many rows the final scores were measured on (jobs from before this was recorded: the
    classifier's per-class supports)."""
    rows = result.get("validation_examples")
    if isinstance(rows, int):
        return rows
    per_class = (result.get("metrics") or {}).get("per_class") or {}
    supports = [row.get("support") for row in per_class.values() if isinstance(row, dict)]
    counts = [n for n in supports if isinstance(n, int)]
    return sum(counts) if counts and len(counts) == len(supports) else None


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
    job = _get_job(project, job_id)
    # The curve so far comes with the page: a finished job's chart is drawn at once, with no fetch.
    points, cursor = metric_points(job)
    chart = {"points": points, "cursor": cursor, "is_finished": job.is_finished}
    return render(
        request, "dashboard/job_detail.html", {**_job_context(request, project, job), "chart": chart}
    )


@member_required
@require_GET
def job_status(request: OrganizationRequest, project_id: str, job_id: str) -> HttpResponse:
    """The fragment the job page polls every 2 s; once the job is finished it stops polling."""
    project = get_project(request, project_id)
    context = _job_context(request, project, _get_job(project, job_id))
    return render(request, "dashboard/_job_live.html", {**context, "oob": True})


def metric_points(job: Job, after: str = "") -> tuple[list[dict[str, Any]], str]:
    """The loss curve's points, one per step in step order, and the cursor for the next call: the
    id of the last metrics event read. With `after`, only the events written since (a retried
    attempt re-logs the steps after its checkpoint; the later value wins, on the page too)."""
    events = job.events.filter(type="metrics").order_by("id")
    if after:
        since = job.events.filter(public_id=after).values_list("id", flat=True).first()
        events = events.filter(id__gt=since) if since is not None else events
    points: dict[int, dict[str, Any]] = {}
    cursor = after
    for public_id, data in events.values_list("public_id", "data"):
        cursor = public_id
        if not isinstance(data, dict):
            continue
        step = data.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            points.setdefault(step, {}).update(data)
    return [points[step] for step in sorted(points)], cursor


@member_required
@require_GET
def job_metrics(request: OrganizationRequest, project_id: str, job_id: str) -> JsonResponse:
    """The loss curve's points (see `metric_points`); `?after=` the cursor of the last call."""
    project = get_project(request, project_id)
    job = _get_job(project, job_id)
    points, cursor = metric_points(job, request.GET.get("after", "")[:64])
    return JsonResponse(
        {
            "object": "list",
            "job": job.public_id,
            "status": job.status,
            "is_finished": job.is_finished,
            "cursor": cursor,
            "data": points,
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
