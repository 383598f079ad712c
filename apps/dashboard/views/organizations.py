from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts import actions
from apps.accounts.middleware import SESSION_KEY, AuthenticatedRequest, OrganizationRequest
from apps.accounts.models import Organization, Role
from apps.billing.quotas import free_organization_refusal
from apps.core.errors import ActionError
from apps.dashboard.views.common import member_required
from apps.projects import onboarding


@login_required
@require_POST
def switch_organization(request: AuthenticatedRequest) -> HttpResponse:
    organization = (
        Organization.objects.for_user(request.user)
        .filter(public_id=request.POST.get("organization", ""))
        .first()
    )
    if organization is None:
        from django.http import Http404

        raise Http404("No such organization")
    request.session[SESSION_KEY] = organization.public_id
    return redirect("dashboard:projects")


@login_required
def organization_new(request: AuthenticatedRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            organization = onboarding.create_organization(request.user, request.POST.get("name", ""))
        except ActionError as exc:
            error = exc.message
        else:
            request.session[SESSION_KEY] = organization.public_id
            return redirect("dashboard:projects")
    else:
        # Said before the form is filled in, not only once it is sent.
        error = free_organization_refusal(request.user) or ""
    return render(request, "dashboard/organization_new.html", {"error": error})


# --- The current organization's settings: its name, and the slug its model ids are built from ------
def _settings_page(request: OrganizationRequest, *, status: int = 200, **form: str) -> HttpResponse:
    organization = request.organization
    membership = request.membership
    context = {
        "organization": organization,
        "can_rename": membership.can_manage,
        "can_choose_slug": membership.role == Role.OWNER and organization.slug_chosen_at is None,
        "slug_rules": actions.SLUG_RULES,
        "name_value": form.get("name_value", organization.name),
        "name_error": form.get("name_error", ""),
        "slug_value": form.get("slug_value", ""),
        "slug_error": form.get("slug_error", ""),
    }
    return render(request, "dashboard/organization.html", context, status=status)


def _page_status(exc: ActionError) -> int:
    # The form comes back with its error beside the field, as every dashboard form does (200); a
    # refusal of who is asking stays a 403.
    return 403 if exc.status == 403 else 200


@member_required
def organization_settings(request: OrganizationRequest) -> HttpResponse:
    return _settings_page(request)


@member_required
@require_POST
def organization_rename(request: OrganizationRequest) -> HttpResponse:
    name = request.POST.get("name", "")
    try:
        actions.rename_organization(request.user, request.organization, name)
    except ActionError as exc:
        return _settings_page(request, status=_page_status(exc), name_value=name, name_error=exc.message)
    messages.success(request, f"The organization is now called “{name.strip()[:100]}”.")
    return redirect("dashboard:organization")


@member_required
@require_POST
def organization_slug(request: OrganizationRequest) -> HttpResponse:
    raw = request.POST.get("slug", "")
    try:
        organization = actions.choose_organization_slug(request.user, request.organization, raw)
    except ActionError as exc:
        return _settings_page(request, status=_page_status(exc), slug_value=raw, slug_error=exc.message)
    messages.success(
        request,
        f"New model ids now start ft:<base model>:{organization.slug}:… Models made before keep their ids.",
    )
    return redirect("dashboard:organization")
