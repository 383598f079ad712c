"""The "Import from OpenAI" page: the organization's OpenAI fine-tuning jobs, read with its own key,
each with a box to tick; the ticked ones are recreated on the base chosen, with their files copied
and a parity eval recorded where the old model still answers.

The rules are `apps.evals.openai_import`'s (the API's `/v1/imports/openai`). The form posts, the
report of what was imported is kept in the session for the one page that follows (POST-redirect-GET),
and a refusal (no key, OpenAI down, a bad choice) comes back as a message on the page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.dashboard.views.common import get_project, member_required
from apps.dashboard.views.fine_tuning import base_models
from apps.evals import openai_import

REPORT_KEY = "dashboard:openai-import:{project}"


@member_required
def openai_import_page(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    key = REPORT_KEY.format(project=project.public_id)
    if request.method == "POST":
        if request.POST.get("action") == "files":
            _copy(request, key, project)
        else:
            _import(request, key, project)
        return redirect(reverse("dashboard:openai_import", args=[project.public_id]))
    report = request.session.pop(key, None)
    jobs: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    problem = ""
    if report is None:
        try:
            jobs = [_dated(job) for job in openai_import.list_jobs(project)]
            files = [_dated(file) for file in openai_import.list_files(project)]
        except ActionError as exc:
            problem = exc.message
    return render(
        request,
        "dashboard/openai_import.html",
        {
            "project": project,
            "current_project": project,
            "jobs": jobs,
            "files": files,
            "problem": problem,
            "needs_key": problem and "OpenAI key" in problem,
            "report": report,
            "base_models": base_models(),
            "importable": sum(1 for job in jobs if job["importable"]),
            "max_jobs": openai_import.MAX_JOBS_IMPORTED,
        },
    )


def _import(request: OrganizationRequest, key: str, project: Any) -> None:
    chosen = request.POST.getlist("jobs")
    body = {"jobs": chosen, "base_model": request.POST.get("base_model", "")}
    if not chosen:
        messages.error(request, "Tick at least one job to import.")
    elif not body["base_model"]:
        messages.error(request, "Choose the base model to train on.")
    else:
        try:
            request.session[key] = openai_import.import_jobs(project, body, user=request.user)
        except ActionError as exc:
            messages.error(request, exc.message)


def _copy(request: OrganizationRequest, key: str, project: Any) -> None:
    chosen = request.POST.getlist("files")
    if not chosen:
        messages.error(request, "Tick at least one file to copy.")
        return
    try:
        request.session[key] = openai_import.copy_files(project, {"files": chosen}, user=request.user)
    except ActionError as exc:
        messages.error(request, exc.message)


def _dated(row: dict[str, Any]) -> dict[str, Any]:
    """The row with `created`, its `created_at` (Unix seconds) as a date the template can format."""
    created = row.get("created_at")
    if isinstance(created, int) and not isinstance(created, bool):
        try:
            return {**row, "created": datetime.fromtimestamp(created, tz=UTC)}
        except (ValueError, OverflowError, OSError):  # not a date OpenAI would send: shown empty
            return row
    return row
