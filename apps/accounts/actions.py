"""Every change to users, organizations, memberships, invitations and API keys."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import ApiKey, Invitation, Membership, Organization, Role, User
from apps.billing.quotas import subscription_for
from apps.core.errors import ActionError, PermissionDenied
from apps.core.mail import single_line
from apps.projects.actions import erase_project
from apps.projects.models import Project

DEFAULT_PROJECT_NAME = "Default project"


@transaction.atomic
def create_organization(user: User, name: str) -> Organization:
    """A new organization owned by `user`, with a default project."""
    name = name.strip()
    if not name:
        raise ActionError("Give the organization a name.", param="name")
    organization = Organization.objects.create(name=name[:100])
    Membership.objects.create(organization=organization, user=user, role=Role.OWNER)
    Project.objects.create(organization=organization, name=DEFAULT_PROJECT_NAME, created_by=user)
    subscription_for(organization)  # every organization starts on the Free plan
    return organization


def create_personal_organization(user: User) -> Organization:
    label = user.name or user.email.split("@")[0]
    return create_organization(user, f"{label}'s organization")


def get_membership(user: User, organization: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=organization).first()


def _require_manager(actor: User, organization: Organization) -> Membership:
    membership = get_membership(actor, organization)
    if membership is None or not membership.can_manage:
        raise PermissionDenied()
    return membership


def _owner_count(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization, role=Role.OWNER).count()


@transaction.atomic
def invite_member(organization: Organization, inviter: User, email: str, role: str) -> Invitation:
    _require_manager(inviter, organization)
    email = email.strip().lower()
    try:
        # The address becomes the email's To header: one with a line break in it would fail the
        # email after the invitation was saved, or add a header.
        validate_email(email)
    except ValidationError:
        raise ActionError(f"{email!r} is not an email address.", param="email") from None
    if role not in Role.values:
        raise ActionError(f"Unknown role {role!r}.", param="role")
    if role == Role.OWNER and get_membership(inviter, organization).role != Role.OWNER:  # type: ignore[union-attr]
        raise PermissionDenied("Only owners can invite owners.")
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise ActionError(f"{email} is already a member.", param="email")
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        token_hash=Invitation.hash_token(token),
        invited_by=inviter,
    )
    link = settings.SITE_URL + reverse("dashboard:accept_invitation", args=[token])
    transaction.on_commit(
        lambda: send_mail(
            subject=f"You are invited to {single_line(organization.name)} on Modelworks",
            message=(
                f"{inviter.email} invited you to join {organization.name} on Modelworks as {role}.\n\n"
                f"Accept the invitation: {link}\n\nThe link is valid for 7 days."
            ),
            from_email=None,
            recipient_list=[email],
        )
    )
    return invitation


def find_invitation(token: str) -> Invitation | None:
    invitation = Invitation.objects.filter(token_hash=Invitation.hash_token(token)).first()
    return invitation if invitation and invitation.is_pending else None


@transaction.atomic
def accept_invitation(token: str, user: User) -> Membership:
    invitation = (
        Invitation.objects.select_for_update().filter(token_hash=Invitation.hash_token(token)).first()
    )
    if invitation is None or not invitation.is_pending:
        raise ActionError("This invitation is no longer valid. Ask for a new one.")
    if invitation.email.lower() != user.email.lower():
        raise ActionError(f"This invitation was sent to {invitation.email}. Log in with that address.")
    membership, _ = Membership.objects.get_or_create(
        organization=invitation.organization, user=user, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    return membership


@transaction.atomic
def change_role(actor: User, membership: Membership, role: str) -> Membership:
    actor_membership = _require_manager(actor, membership.organization)
    if role not in Role.values:
        raise ActionError(f"Unknown role {role!r}.", param="role")
    if Role.OWNER in (role, membership.role) and actor_membership.role != Role.OWNER:
        raise PermissionDenied("Only owners can grant or take away the owner role.")
    # Lock the organization's owners so two concurrent demotions cannot leave it with none.
    list(Membership.objects.select_for_update().filter(organization=membership.organization, role=Role.OWNER))
    if membership.role == Role.OWNER and role != Role.OWNER and _owner_count(membership.organization) <= 1:
        raise ActionError("An organization needs at least one owner. Make someone else an owner first.")
    membership.role = role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def remove_member(actor: User, membership: Membership) -> None:
    if actor.pk != membership.user_id:
        actor_membership = _require_manager(actor, membership.organization)
        if membership.role == Role.OWNER and actor_membership.role != Role.OWNER:
            raise PermissionDenied("Only owners can remove an owner.")
    list(Membership.objects.select_for_update().filter(organization=membership.organization, role=Role.OWNER))
    if membership.role == Role.OWNER and _owner_count(membership.organization) <= 1:
        raise ActionError("The last owner cannot leave. Make someone else an owner first.")
    membership.delete()


@transaction.atomic
def create_project(organization: Organization, user: User | None, name: str) -> Project:
    name = name.strip()
    if not name:
        raise ActionError("Give the project a name.", param="name")
    return Project.objects.create(organization=organization, name=name[:100], created_by=user)


def rename_project(project: Project, name: str) -> Project:
    name = name.strip()
    if not name:
        raise ActionError("Give the project a name.", param="name")
    project.name = name[:100]
    project.save(update_fields=["name"])
    return project


def delete_project(actor: User, project: Project) -> None:
    _require_manager(actor, project.organization)
    erase_project(project)


def create_api_key(
    project: Project, name: str, user: User | None, expires_in_days: int | None = None
) -> tuple[ApiKey, str]:
    """Returns the key and its full secret, which is shown once and never stored. With
    `expires_in_days` the key stops working that many days from now."""
    name = name.strip() or "Secret key"
    prefix, raw = ApiKey.generate()
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    key = ApiKey.objects.create(
        project=project, name=name[:100], prefix=prefix, hashed_key=ApiKey.hash_secret(raw), created_by=user,
        expires_at=expires_at,
    )  # fmt: skip
    return key, raw


def revoke_api_key(key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
