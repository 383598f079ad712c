from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.jobs import deletion
from apps.projects import actions
from apps.projects.models import Project


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
    return render(request, "dashboard/projects.html", {"projects": projects})


@member_required
def project_detail(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    return render(
        request,
        "dashboard/project.html",
        {
            "current_project": project,
            "project": project,
            "file_count": project.files.count(),
            "job_count": project.jobs.count(),
            "key_count": project.api_keys.filter(revoked_at__isnull=True).count(),
        },
    )


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
