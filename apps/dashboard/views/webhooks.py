"""Webhook endpoints in the dashboard: list and create, and each endpoint's page with its delivery
log, resend, test event, secret rotation, switching it off and on, and deletion."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.projects.models import Project
from apps.webhooks import actions
from apps.webhooks.models import EVENT_TYPES, WebhookDelivery, WebhookEndpoint

SHOWN_ONCE_SESSION = "webhook_shown_once"
DELIVERIES_PER_PAGE = 25


def _endpoint(project: Project, endpoint_id: str) -> WebhookEndpoint:
    endpoint = (
        WebhookEndpoint.objects.select_related("project__organization")
        .filter(project=project, public_id=endpoint_id)
        .first()
    )
    if endpoint is None:
        raise Http404("No such webhook endpoint")
    return endpoint


def _show_secret_once(request: OrganizationRequest, endpoint: WebhookEndpoint, secret: str) -> None:
    # Shown on the next page view, then gone: the session holds it for one redirect.
    request.session[SHOWN_ONCE_SESSION] = {"endpoint": endpoint.public_id, "secret": secret}


@member_required
def webhook_list(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    form: dict[str, Any] = {"name": "", "url": "", "event_types": list(EVENT_TYPES[:3])}
    if request.method == "POST":
        form = {
            "name": request.POST.get("name", ""),
            "url": request.POST.get("url", ""),
            "event_types": request.POST.getlist("event_types"),
        }
        try:
            endpoint, secret = actions.create_endpoint(project, request.user, **form)
        except ActionError as exc:
            messages.error(request, exc.message)
        else:
            _show_secret_once(request, endpoint, secret)
            return redirect("dashboard:webhook", project.public_id, endpoint.public_id)
    endpoints = WebhookEndpoint.objects.filter(project=project)
    return render(
        request,
        "dashboard/webhooks.html",
        {
            "current_project": project,
            "project": project,
            "endpoints": endpoints,
            "event_types": EVENT_TYPES,
            "form": form,
            "can_manage": request.membership.can_manage,
        },
    )


@member_required
def webhook_detail(request: OrganizationRequest, project_id: str, endpoint_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    endpoint = _endpoint(project, endpoint_id)
    new_secret = request.session.pop(SHOWN_ONCE_SESSION, None)
    if new_secret and new_secret.get("endpoint") != endpoint.public_id:
        new_secret = None
    deliveries = (
        WebhookDelivery.objects.filter(endpoint=endpoint)
        .select_related("event")
        .prefetch_related("attempt_log")
        .order_by("-id")
    )
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "dashboard/webhook_detail.html",
        {
            "current_project": project,
            "project": project,
            "endpoint": endpoint,
            "new_secret": new_secret,
            "page": page,
            "event_types": EVENT_TYPES,
            "can_manage": request.membership.can_manage,
        },
    )


@member_required
@require_POST
def webhook_update(request: OrganizationRequest, project_id: str, endpoint_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    endpoint = _endpoint(project, endpoint_id)
    changes: dict[str, Any] = {}
    if "enabled" in request.POST:
        changes["enabled"] = request.POST["enabled"] == "true"
        done = (
            "Endpoint switched on." if changes["enabled"] else "Endpoint switched off: nothing is sent to it."
        )
    else:
        changes = {
            "name": request.POST.get("name", ""),
            "url": request.POST.get("url", ""),
            "event_types": request.POST.getlist("event_types"),
        }
        done = "Endpoint saved."
    run_action(request, lambda: actions.update_endpoint(endpoint, request.user, changes), done)
    return redirect("dashboard:webhook", project.public_id, endpoint.public_id)


@member_required
@require_POST
def webhook_rotate(request: OrganizationRequest, project_id: str, endpoint_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    endpoint = _endpoint(project, endpoint_id)
    keep = request.POST.get("keep_old") == "on"
    try:
        secret = actions.rotate_secret(endpoint, request.user, keep_old=keep)
    except ActionError as exc:
        messages.error(request, exc.message)
    else:
        _show_secret_once(request, endpoint, secret)
    return redirect("dashboard:webhook", project.public_id, endpoint.public_id)


@member_required
@require_POST
def webhook_test(request: OrganizationRequest, project_id: str, endpoint_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    endpoint = _endpoint(project, endpoint_id)
    event_type = request.POST.get("event_type", "")
    try:
        attempt = actions.send_test(endpoint, request.user, event_type)
    except ActionError as exc:
        messages.error(request, exc.message)
    else:
        if attempt.succeeded:
            messages.success(
                request,
                f"Test {event_type} event delivered: {attempt.status_code} in {attempt.latency_ms} ms.",
            )
        else:
            messages.error(request, f"Test {event_type} event not delivered: {attempt.error}.")
    return redirect("dashboard:webhook", project.public_id, endpoint.public_id)


@member_required
@require_POST
def webhook_resend(
    request: OrganizationRequest, project_id: str, endpoint_id: str, delivery_id: int
) -> HttpResponse:
    project = get_project(request, project_id)
    endpoint = _endpoint(project, endpoint_id)
    delivery = WebhookDelivery.objects.filter(endpoint=endpoint, pk=delivery_id, event__is_test=False).first()
    if delivery is None:
        raise Http404("No such delivery")
    run_action(
        request,
        lambda: actions.resend(delivery, request.user),
        "Sending it again now, with the same webhook-id.",
    )
    return redirect("dashboard:webhook", project.public_id, endpoint.public_id)


@member_required
@require_POST
def webhook_delete(request: OrganizationRequest, project_id: str, endpoint_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    endpoint = _endpoint(project, endpoint_id)
    if run_action(
        request,
        lambda: actions.delete_endpoint(endpoint, request.user),
        f"Endpoint “{endpoint.name}” deleted.",
    ):
        return redirect("dashboard:webhooks", project.public_id)
    return redirect("dashboard:webhook", project.public_id, endpoint.public_id)
