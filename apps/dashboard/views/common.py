"""Helpers every dashboard page uses: login, the current organization, project scoping."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import redirect

from apps.accounts.middleware import SESSION_KEY, OrganizationRequest
from apps.accounts.models import Membership
from apps.core.errors import ActionError
from apps.projects.models import Project

View = Callable[..., HttpResponseBase]


def member_required(view: View) -> View:
    """Login required, and the user belongs to at least one organization."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if getattr(request, "membership", None) is None:
            return redirect("dashboard:organization_new")
        return view(request, *args, **kwargs)

    return wrapper


def get_project(request: OrganizationRequest, public_id: str) -> Project:
    """The project if the user is a member of its organization, else 404 (never 403).

    Opening a project of another of the user's organizations makes that organization current.
    """
    project = (
        Project.objects.for_user(request.user)
        .select_related("organization")
        .filter(public_id=public_id)
        .first()
    )
    if project is None:
        raise Http404("No such project")
    if project.organization_id != request.organization.pk:
        request.membership = Membership.objects.get(user=request.user, organization=project.organization)
        request.organization = project.organization
        request.session[SESSION_KEY] = project.organization.public_id
    return project


def run_action(request: HttpRequest, action: Callable[[], Any], success: str | None = None) -> bool:
    """Runs an action; shows its refusal as a message instead of an error page."""
    try:
        action()
    except ActionError as exc:
        messages.error(request, exc.message)
        return False
    if success:
        messages.success(request, success)
    return True
