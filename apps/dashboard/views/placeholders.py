"""Sections whose pages are not built yet say so plainly, inside the real navigation."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.dashboard.views.common import get_project, member_required


def _section(request: HttpRequest, title: str, project_id: str | None = None) -> HttpResponse:
    context: dict[str, object] = {"title": title}
    if project_id is not None:
        project = get_project(request, project_id)
        context.update(project=project, current_project=project)
    return render(request, "dashboard/section.html", context)


@member_required
def files(request: HttpRequest, project_id: str) -> HttpResponse:
    return _section(request, "Files", project_id)
