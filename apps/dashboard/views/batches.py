"""Batches pages: "run on a file" (a model and a processed file → a batch), the project's batches,
and each batch live, with its results as JSONL and as CSV.

Building a batch from a file and joining its results to their inputs is `apps.jobs.batch_files`';
these views take the form and send the responses.
"""

from __future__ import annotations

import csv
import secrets
from typing import Any

from django.contrib import messages
from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.core.spreadsheet import safe_cell
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.dashboard.views.playground import model_choices
from apps.jobs import actions, batch_files, batches
from apps.jobs.models import Job, JobKind
from apps.projects.formats import format_name
from apps.projects.models import File, FilePurpose, Project
from apps.registry.models import Task

PAGE_SIZE = 50
# A submitted form's token is remembered this long, so a double click starts one batch, not two.
FORM_TOKEN_SECONDS = 3600
BATCH_STATUS_LABELS = {
    "validating": "Validating",
    "in_progress": "In progress",
    "finalizing": "Finalizing",
    "completed": "Completed",
    "failed": "Failed",
    "cancelling": "Cancelling",
    "cancelled": "Cancelled",
}


# --- Lookups, always scoped to the project ------------------------------------------------------
def _batches(project: Project) -> Any:
    return Job.objects.for_project(project).filter(kind=JobKind.BATCH)


def _get_batch(project: Project, batch_id: str) -> Job:
    job = _batches(project).select_related("training_file").filter(public_id=batch_id).first()
    if job is None:
        raise Http404("No such batch")
    return job


def _result_file(project: Project, job: Job, key: str) -> File:
    file_id = (job.result or {}).get(key)
    file = File.objects.filter(project=project, public_id=file_id).first() if file_id else None
    if file is None:
        raise Http404("This batch has no such file")
    return file


# --- Pages --------------------------------------------------------------------------------------
def _progress(job: Job) -> dict[str, Any]:
    batch = batches.batch_object(job)
    counts = batch["request_counts"]
    done = counts["completed"] + counts["failed"]
    percent = (
        100.0
        if batch["status"] == "completed"
        else (100.0 * done / counts["total"] if counts["total"] else 0.0)
    )
    metadata = job.metadata or {}
    return {
        "job": job,
        "batch": batch,
        "status": batch["status"],
        "status_label": BATCH_STATUS_LABELS.get(batch["status"], batch["status"]),
        "counts": counts,
        "done": done,
        "percent": min(percent, 100.0),
        "model": job.model_name or metadata.get("model", ""),
        "source_file_id": metadata.get("source_file_id", ""),
    }


def _list_context(
    project: Project, request: HttpRequest, values: dict[str, str], error: ActionError | None = None
) -> dict[str, Any]:
    page = Paginator(_batches(project).select_related("training_file"), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    organization = project.organization
    return {
        "project": project,
        "current_project": project,
        "page": page,
        "rows": [_progress(job) for job in page],
        "files": [_file_choice(file) for file in batch_files.usable_files(project)],
        "classifiers": model_choices(organization, Task.CLASSIFICATION),
        "generators": model_choices(organization, Task.GENERATION),
        "values": values,
        "error": error,
        "form_token": secrets.token_urlsafe(16),
        "max_rows": batch_files.MAX_ROWS,
    }


def _file_choice(file: File) -> dict[str, str]:
    kind = "batch file" if file.purpose == FilePurpose.BATCH else format_name(file.format)
    count = getattr(file, "rows", None)  # annotated by batch_files.usable_files
    rows = f"{count:,} rows" if isinstance(count, int) else ""
    return {"id": file.public_id, "label": " · ".join(filter(None, [file.filename, rows, kind]))}


@member_required
@require_GET
def batch_list(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    values = {"model": request.GET.get("model", ""), "file": request.GET.get("file", "")}
    return render(request, "dashboard/batches.html", _list_context(project, request, values))


@member_required
@require_POST
def batch_create(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    values = {"model": request.POST.get("model", "").strip(), "file": request.POST.get("file", "").strip()}
    # cache.add is atomic: of two submissions of one form, only the first gets past here.
    token = request.POST.get("form_token", "")[:64]
    token_key = f"dashboard:batch-form:{request.user.pk}:{token}"
    if token and not cache.add(token_key, "", FORM_TOKEN_SECONDS):
        batch_id = cache.get(token_key)
        if batch_id:
            return redirect("dashboard:batch", project.public_id, batch_id)
        messages.info(request, "This form was already submitted.")
        return redirect("dashboard:batches", project.public_id)
    try:
        job = batch_files.run_on_file(project, values["model"], values["file"], user=request.user)
    except ActionError as exc:
        cache.delete(token_key)
        context = _list_context(project, request, values, exc)
        # The page exists: a model or file that is not found is a bad choice in the form.
        return render(
            request, "dashboard/batches.html", context, status=400 if exc.status == 404 else exc.status
        )
    cache.set(token_key, job.public_id, FORM_TOKEN_SECONDS)
    messages.success(request, f"Batch {job.public_id} created: {job.progress.get('total', 0):,} requests.")
    return redirect("dashboard:batch", project.public_id, job.public_id)


def _detail_context(request: OrganizationRequest, project: Project, job: Job) -> dict[str, Any]:
    progress = _progress(job)
    result = job.result or {}
    return {
        "project": project,
        "current_project": project,
        **progress,
        "can_cancel": progress["status"] in ("validating", "in_progress")
        and request.membership.can_destroy(job.created_by_id),
        "output_file_id": result.get("output_file_id"),
        "error_file_id": result.get("error_file_id"),
    }


@member_required
@require_GET
def batch_detail(request: OrganizationRequest, project_id: str, batch_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    return render(
        request,
        "dashboard/batch_detail.html",
        _detail_context(request, project, _get_batch(project, batch_id)),
    )


@member_required
@require_GET
def batch_status(request: OrganizationRequest, project_id: str, batch_id: str) -> HttpResponse:
    """The fragment the batch page polls every 2 s; once the batch has finished it stops polling."""
    project = get_project(request, project_id)
    context = _detail_context(request, project, _get_batch(project, batch_id))
    return render(request, "dashboard/_batch_status.html", context)


@member_required
@require_POST
def batch_cancel(request: OrganizationRequest, project_id: str, batch_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    job = _get_batch(project, batch_id)
    if job.is_finished:
        messages.error(request, f"Batch {job.public_id} has already finished; it cannot be cancelled.")
    elif run_action(request, lambda: actions.require_may_stop(request.user, job, "cancel")):
        job = actions.cancel(job)
        if job.is_finished:
            messages.success(request, "Batch cancelled.")
        else:
            messages.success(
                request, "Cancelling: the batch stops after its current requests; results so far are kept."
            )
    return redirect("dashboard:batch", project.public_id, job.public_id)


# --- Downloads ----------------------------------------------------------------------------------
def _jsonl_download(file: File, filename: str) -> FileResponse:
    return FileResponse(
        file.content.open("rb"), as_attachment=True, filename=filename, content_type="application/jsonl"
    )


@member_required
@require_GET
def batch_output(request: OrganizationRequest, project_id: str, batch_id: str) -> FileResponse:
    project = get_project(request, project_id)
    job = _get_batch(project, batch_id)
    return _jsonl_download(_result_file(project, job, "output_file_id"), f"{job.public_id}_output.jsonl")


@member_required
@require_GET
def batch_errors(request: OrganizationRequest, project_id: str, batch_id: str) -> FileResponse:
    project = get_project(request, project_id)
    job = _get_batch(project, batch_id)
    return _jsonl_download(_result_file(project, job, "error_file_id"), f"{job.public_id}_errors.jsonl")


@member_required
@require_GET
def batch_results_csv(
    request: OrganizationRequest, project_id: str, batch_id: str
) -> HttpResponse | StreamingHttpResponse:
    project = get_project(request, project_id)
    job = _get_batch(project, batch_id)
    if not job.is_finished:
        return HttpResponse("The batch has not finished yet.", status=409, content_type="text/plain")
    result = job.result or {}
    files = {
        key: File.objects.filter(project=project, public_id=result[key]).first() if result.get(key) else None
        for key in ("output_file_id", "error_file_id")
    }
    rows = batch_files.result_rows(
        job.request.get("endpoint", ""), job.training_file, files["output_file_id"], files["error_file_id"]
    )
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow([safe_cell(value) for value in row]) for row in rows),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="{job.public_id}_results.csv"'
    return response


class _Echo:
    """A file-like object whose write returns the line: csv.writer rows straight into a stream."""

    def write(self, value: str) -> str:
        return value
