"""Models pages: the organization's fine-tuned models beside the catalog, and one model's page."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.dashboard.views.fine_tuning import metrics_context
from apps.jobs.deletion import delete_fine_tuned_model
from apps.jobs.models import Job
from apps.projects.models import Project
from apps.registry.models import Model


def _get_model(project: Project, name: str) -> Model:
    model = (
        Model.objects.visible_to(project.organization)
        .select_related("base", "project", "created_by")
        .filter(name=name)
        .first()
    )
    if model is None:
        raise Http404("No such model")
    return model


@member_required
@require_GET
def model_list(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    visible = Model.objects.visible_to(project.organization).select_related("base")
    return render(
        request,
        "dashboard/models.html",
        {
            "project": project,
            "current_project": project,
            "fine_tuned": visible.filter(organization=project.organization).order_by("-created_at", "-id"),
            "catalog": visible.filter(organization__isnull=True),
        },
    )


@member_required
@require_GET
def model_detail(request: OrganizationRequest, project_id: str, model_name: str) -> HttpResponse:
    project = get_project(request, project_id)
    model = _get_model(project, model_name)
    job = (
        Job.objects.filter(organization=project.organization, fine_tuned_model=model)
        .select_related("project")
        .first()
        if not model.is_catalog
        else None
    )
    membership = request.membership
    can_delete = not model.is_catalog and membership.can_destroy(model.created_by_id)
    return render(
        request,
        "dashboard/model_detail.html",
        {
            "project": project,
            "current_project": project,
            "model": model,
            "job": job,
            "is_servable": bool(model.limit("servable", True)),
            "can_delete": can_delete,
            **metrics_context(model.metrics or {}, model.labels),
        },
    )


@member_required
@require_POST
def model_delete(request: OrganizationRequest, project_id: str, model_name: str) -> HttpResponse:
    project = get_project(request, project_id)
    model = _get_model(project, model_name)
    deleted = run_action(
        request,
        lambda: delete_fine_tuned_model(request.user, model),
        f"Model “{model_name}” deleted. Requests to it now fail with model_not_found.",
    )
    if not deleted:
        return redirect("dashboard:model", project.public_id, model.name)
    return redirect("dashboard:models", project.public_id)


@member_required
@require_GET
def model_download(request: OrganizationRequest, project_id: str, model_name: str) -> HttpResponseBase:
    """The same archive as GET /v1/models/{id}/content."""
    import re

    from django.http import FileResponse

    from apps.registry.actions import export_archive

    project = get_project(request, project_id)
    model = _get_model(project, model_name)
    try:
        archive = export_archive(model)
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect("dashboard:model", project.public_id, model.name)
    filename = re.sub(r"[^A-Za-z0-9._-]+", "-", model.name).strip("-") + ".tar.gz"
    return FileResponse(archive, as_attachment=True, filename=filename, content_type="application/gzip")
