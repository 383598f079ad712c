from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.accounts.models import ApiKey
from apps.dashboard.snippets import api_base_url
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.projects import actions

NEW_KEY_SESSION = "new_api_key"
# When a new key stops working: the form's choices, in days (None: never).
EXPIRY_CHOICES: dict[str, int | None] = {"never": None, "30": 30, "90": 90}
BAD_EXPIRY = "Choose when the key expires: never, in 30 days or in 90 days."


@member_required
def api_keys(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    if request.method == "POST":
        expiry = request.POST.get("expires", "never")
        if expiry not in EXPIRY_CHOICES:
            messages.error(request, BAD_EXPIRY)
            return redirect("dashboard:api_keys", project.public_id)
        name = request.POST.get("name", "")
        key, raw = actions.create_api_key(project, name, request.user, EXPIRY_CHOICES[expiry])
        # Shown once, on the next page view, then gone: the session holds it for one redirect.
        request.session[NEW_KEY_SESSION] = {"name": key.name, "key": raw}
        return redirect("dashboard:api_keys", project.public_id)
    new_key = request.session.pop(NEW_KEY_SESSION, None)
    keys = list(ApiKey.objects.filter(project=project).select_related("created_by"))
    membership = request.membership
    for key in keys:
        key.can_revoke = membership.can_destroy(key.created_by_id)  # type: ignore[attr-defined]
    return render(
        request,
        "dashboard/api_keys.html",
        {
            "current_project": project,
            "project": project,
            "keys": keys,
            "new_key": new_key,
            "api_base_url": api_base_url(),
        },
    )


@member_required
@require_POST
def api_key_revoke(request: OrganizationRequest, project_id: str, prefix: str) -> HttpResponse:
    project = get_project(request, project_id)
    key = (
        ApiKey.objects.select_related("project__organization").filter(project=project, prefix=prefix).first()
    )
    if key is None:
        raise Http404("No such key")
    run_action(
        request,
        lambda: actions.revoke_api_key(request.user, key),
        f"Key “{key.name}” revoked. Requests using it are now refused.",
    )
    return redirect("dashboard:api_keys", project.public_id)
