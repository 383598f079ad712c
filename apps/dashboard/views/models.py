"""Models pages: the organization's fine-tuned models beside the catalog, and one model's page."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.db.models import QuerySet
from django.http import Http404, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.accounts.models import Organization
from apps.dashboard.snippets import api_base_url
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.dashboard.views.fine_tuning import _result_files as job_result_files
from apps.dashboard.views.fine_tuning import metrics_context
from apps.jobs.deletion import delete_fine_tuned_model
from apps.jobs.models import Checkpoint, Job
from apps.projects.models import Project
from apps.registry.models import Model, Task


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


def final_models(organization: Organization) -> QuerySet[Model]:
    """The organization's fine-tuned models, without the checkpoints kept along the way (each is
    listed on the page of the model its job made)."""
    return Model.objects.filter(organization=organization).exclude(limits__contains={"checkpoint": True})


@member_required
@require_GET
def model_list(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    return render(
        request,
        "dashboard/models.html",
        {
            "project": project,
            "current_project": project,
            "fine_tuned": final_models(project.organization)
            .select_related("base")
            .order_by("-created_at", "-id"),
            "catalog": Model.objects.catalog().select_related("base"),
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
    checkpoint = _checkpoint_of(model)
    return render(
        request,
        "dashboard/model_detail.html",
        {
            "project": project,
            "current_project": project,
            "model": model,
            "job": job or (checkpoint.job if checkpoint else None),
            "checkpoint": checkpoint,
            "checkpoints": _checkpoint_models(job) if job else [],
            "result_files": job_result_files(job.project, job) if job else [],
            "is_servable": bool(model.limit("servable", True)),
            "can_delete": can_delete,
            "api_base_url": api_base_url(),
            "playground_url": playground_url(project, model),
            **metrics_context(model.metrics or {}, model.labels),
        },
    )


def _checkpoint_of(model: Model) -> Checkpoint | None:
    """The checkpoint a checkpoint model was registered from (with its job and the job's model)."""
    if not model.limit("checkpoint") or model.organization_id is None:
        return None
    return (
        Checkpoint.objects.filter(
            fine_tuned_model_checkpoint=model.name, job__organization_id=model.organization_id
        )
        .select_related("job__project", "job__fine_tuned_model")
        .first()
    )


def _checkpoint_models(job: Job) -> list[dict[str, Any]]:
    """The checkpoints the job kept that are callable as models, latest step first."""
    checkpoints = list(job.checkpoints.exclude(fine_tuned_model_checkpoint=""))
    names = {c.fine_tuned_model_checkpoint for c in checkpoints}
    existing = set(
        Model.objects.filter(organization=job.organization_id, name__in=names).values_list("name", flat=True)
    )
    return [
        {"checkpoint": c, "name": c.fine_tuned_model_checkpoint, "metrics": c.metrics or {}}
        for c in checkpoints
        if c.fine_tuned_model_checkpoint in existing
    ]


def playground_url(project: Project, model: Model) -> str | None:
    # The playground chats and classifies; an embedding model answers only /v1/embeddings.
    if not model.limit("servable", True) or model.task == Task.EMBEDDING:
        return None
    tab = "classify" if model.task == Task.CLASSIFICATION else "chat"
    return f"{reverse('dashboard:playground', args=[project.public_id])}?{urlencode({'model': model.name})}#{tab}"


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
