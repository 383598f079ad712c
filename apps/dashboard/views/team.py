from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts import actions
from apps.accounts.middleware import SESSION_KEY, OrganizationRequest
from apps.accounts.models import INVITATION_LIFETIME, Invitation, Membership, Organization, Role, User
from apps.core.errors import ActionError
from apps.dashboard.views.common import member_required, run_action


def _membership(request: OrganizationRequest, membership_id: int) -> Membership:
    membership = (
        Membership.objects.filter(pk=membership_id, organization=request.organization)
        .select_related("user", "organization")
        .first()
    )
    if membership is None:
        raise Http404("No such member")
    return membership


@member_required
def team(request: OrganizationRequest) -> HttpResponse:
    organization = request.organization
    if request.method == "POST":
        _invite(request, organization)
        return redirect("dashboard:team")
    members = Membership.objects.filter(organization=organization).select_related("user")
    invitations = []
    if request.membership.can_manage:
        invitations = actions.open_invitations(request.user, organization)
        for invitation in invitations:
            invitation.void_reason = actions.inviter_refusal(invitation)  # type: ignore[attr-defined]
    return render(
        request,
        "dashboard/team.html",
        {"members": members, "invitations": invitations, "roles": Role.choices},
    )


def _invite(request: OrganizationRequest, organization: Organization) -> None:
    try:
        invitation = actions.invite_member(
            organization,
            request.user,
            request.POST.get("email", ""),
            request.POST.get("role", Role.MEMBER),
        )
    except ActionError as exc:
        messages.error(request, exc.message)
        return
    if invitation.send_count == 1:
        messages.success(request, f"Invitation sent to {invitation.email}.")
        return
    messages.success(
        request,
        f"{invitation.email} already had a pending invitation: it now invites them as "
        f"{invitation.get_role_display().lower()} and was sent again with a new link. The earlier link no "
        "longer works.",
    )


def _invitation(request: OrganizationRequest, invitation_id: int) -> Invitation:
    invitation = (
        Invitation.objects.filter(pk=invitation_id, organization=request.organization)
        .select_related("organization")
        .first()
    )
    if invitation is None:
        raise Http404("No such invitation")
    return invitation


@member_required
@require_POST
def invitation_resend(request: OrganizationRequest, invitation_id: int) -> HttpResponse:
    invitation = _invitation(request, invitation_id)
    run_action(
        request,
        lambda: actions.resend_invitation(request.user, invitation),
        f"The invitation to {invitation.email} was sent again with a new link, valid for "
        f"{INVITATION_LIFETIME.days} days. The earlier link no longer works.",
    )
    return redirect("dashboard:team")


@member_required
@require_POST
def invitation_revoke(request: OrganizationRequest, invitation_id: int) -> HttpResponse:
    invitation = _invitation(request, invitation_id)
    run_action(
        request,
        lambda: actions.revoke_invitation(request.user, invitation),
        f"The invitation to {invitation.email} was revoked; its link no longer works.",
    )
    return redirect("dashboard:team")


@member_required
@require_POST
def member_role(request: OrganizationRequest, membership_id: int) -> HttpResponse:
    membership = _membership(request, membership_id)
    role = request.POST.get("role", "")
    run_action(
        request,
        lambda: actions.change_role(request.user, membership, role),
        f"{membership.user.email} is now {role}.",
    )
    return redirect("dashboard:team")


@member_required
@require_POST
def member_remove(request: OrganizationRequest, membership_id: int) -> HttpResponse:
    membership = _membership(request, membership_id)
    leaving = membership.user_id == request.user.pk
    ok = run_action(request, lambda: actions.remove_member(request.user, membership))
    if ok and leaving:
        request.session.pop(SESSION_KEY, None)
        messages.success(request, f"You left {membership.organization.name}.")
        return redirect("dashboard:home")
    if ok:
        messages.success(request, f"{membership.user.email} was removed.")
    return redirect("dashboard:team")


def accept_invitation(request: HttpRequest, token: str) -> HttpResponse:
    invitation = actions.find_invitation(token)
    if invitation is None:
        raise Http404("This invitation is no longer valid")
    refusal = actions.inviter_refusal(invitation)
    if refusal is not None:
        # Said on the page, before anyone logs in or signs up for an invitation that cannot work.
        context = {"invitation": invitation, "token": token, "refusal": refusal}
        return render(request, "dashboard/invitation.html", context, status=404)
    user = request.user
    if not user.is_authenticated:
        return render(request, "dashboard/invitation.html", {"invitation": invitation, "token": token})
    return _accept(request, user, token, invitation)


def _accept(request: HttpRequest, user: User, token: str, invitation: Invitation) -> HttpResponse:
    if request.method != "POST":
        return render(request, "dashboard/invitation.html", {"invitation": invitation, "token": token})
    try:
        membership = actions.accept_invitation(token, user)
    except ActionError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard:home")
    request.session[SESSION_KEY] = membership.organization.public_id
    messages.success(request, f"Welcome to {membership.organization.name}.")
    return redirect("dashboard:projects")
