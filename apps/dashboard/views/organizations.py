from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.middleware import SESSION_KEY, AuthenticatedRequest
from apps.accounts.models import Organization
from apps.billing.quotas import free_organization_refusal
from apps.core.errors import ActionError
from apps.projects import onboarding


@login_required
def home(request: HttpRequest) -> HttpResponse:
    if getattr(request, "organization", None) is None:
        return redirect("dashboard:organization_new")
    return redirect("dashboard:projects")


@login_required
@require_POST
def switch_organization(request: HttpRequest) -> HttpResponse:
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
