from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.dashboard.checklist import Checklist, checklist_for
from apps.dashboard.snippets import api_base_url
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.dashboard.views.files import fine_tune_url, uploads
from apps.dashboard.views.models import final_models, playground_url
from apps.jobs import deletion
from apps.jobs.models import Job, JobKind
from apps.projects import actions
from apps.projects.models import Project
from apps.projects.samples import upload_sample


@member_required
def project_list(request: OrganizationRequest) -> HttpResponse:
    organization = request.organization
    if request.method == "POST":
        try:
            project = actions.create_project(organization, request.user, request.POST.get("name", ""))
        except ActionError as exc:
            messages.error(request, exc.message)
            return redirect("dashboard:projects")
        messages.success(request, f"Project “{project.name}” created.")
        return redirect("dashboard:project", project.public_id)
    projects = Project.objects.filter(organization=organization)
    # A new organization's one project: point at its checklist rather than leave a bare list.
    first = list(projects[:2])
    starter = first[0] if len(first) == 1 and checklist_for(first[0]).is_shown else None
    return render(request, "dashboard/projects.html", {"projects": projects, "starter": starter})


@member_required
def project_detail(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    jobs = Job.objects.filter(project=project)
    checklist = checklist_for(project)
    return render(
        request,
        "dashboard/project.html",
        {
            "current_project": project,
            "project": project,
            # Each counts what the page it links to lists.
            "file_count": uploads(project).count(),
            "fine_tune_count": jobs.filter(kind=JobKind.FINE_TUNE).count(),
            "model_count": final_models(project.organization).count(),
            "batch_count": jobs.filter(kind=JobKind.BATCH).count(),
            "key_count": project.api_keys.filter(revoked_at__isnull=True).count(),
            **(_checklist_context(project, checklist) if checklist.is_shown else {}),
        },
    )


def _checklist_context(project: Project, checklist: Checklist) -> dict[str, Any]:
    model = checklist.model
    return {
        "checklist": checklist,
        "checklist_percent": 25 * checklist.steps_done,
        "fine_tune_url": fine_tune_url(project, checklist.upload) if checklist.upload else None,
        "playground_url": playground_url(project, model) if model else None,
        "api_base_url": api_base_url(),
    }


@member_required
@require_POST
def project_rename(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    run_action(
        request, lambda: actions.rename_project(project, request.POST.get("name", "")), "Project renamed."
    )
    return redirect("dashboard:project", project.public_id)


@member_required
def project_delete(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    if request.method == "POST":
        if request.POST.get("confirm", "").strip() != project.name:
            messages.error(request, "Type the project's name exactly to confirm.")
            return redirect("dashboard:project_delete", project.public_id)
        name = project.name
        if run_action(request, lambda: deletion.delete_project(request.user, project)):
            messages.success(request, f"Project “{name}” and everything in it were deleted.")
            return redirect("dashboard:projects")
        return redirect("dashboard:project", project.public_id)
    return render(request, "dashboard/project_delete.html", {"project": project, "current_project": project})


# --- The getting-started checklist ----------------------------------------------------------------
@member_required
@require_POST
def use_sample(request: OrganizationRequest, project_id: str) -> HttpResponse:
    """Uploads the sample dataset, as an upload of the user's own would be: validated by a worker."""
    project = get_project(request, project_id)
    try:
        file = upload_sample(project, request.user)
    except ActionError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard:project", project.public_id)
    messages.success(request, f"Added the sample dataset “{file.filename}”. Validating it now.")
    return redirect("dashboard:file", project.public_id, file.public_id)


@member_required
@require_POST
def dismiss_checklist(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    project.dismiss_checklist()
    messages.success(request, "Checklist hidden. The docs are under API reference in the sidebar.")
    return redirect("dashboard:project", project.public_id)
