"""Every change to users, organizations, memberships, invitations and API keys."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import INVITATION_LIFETIME, ApiKey, Invitation, Membership, Organization, Role, User
from apps.billing.quotas import FREE, subscription_for
from apps.core.errors import ActionError, PermissionDenied
from apps.core.mail import single_line
from apps.projects.models import Project

DEFAULT_PROJECT_NAME = "Default project"


FREE_ORGANIZATIONS_REFUSAL = (
    "Each person may have {limit} organization{s} on the Free plan, and you have {count} ({names}). "
    "To create another, upgrade one of yours to a paid plan under Billing, or ask an owner or admin of an "
    "existing organization to invite you."
)


def free_organizations(user: User) -> QuerySet[Organization]:
    """The organizations on the Free plan that count against `user`'s allowance: those they own
    and those they created (handing an organization over does not give its free credit back)."""
    owned = Membership.objects.filter(user=user, role=Role.OWNER).values("organization_id")
    # An organization without a subscription row is on the Free plan (`subscription_for`).
    free = Q(subscription__isnull=True) | Q(subscription__plan__slug=FREE)
    return Organization.objects.filter(Q(pk__in=owned) | Q(created_by=user)).filter(free)


def free_organization_refusal(user: User) -> str | None:
    """Why `user` may not create another organization (it would start on the Free plan), or None."""
    limit = settings.FREE_ORGANIZATIONS_PER_USER
    names = list(free_organizations(user).order_by("created_at", "id").values_list("name", flat=True))
    if len(names) < limit:
        return None
    return FREE_ORGANIZATIONS_REFUSAL.format(
        limit=limit, s="" if limit == 1 else "s", count=len(names), names=", ".join(names)
    )


@transaction.atomic
def create_organization(user: User, name: str) -> Organization:
    """A new organization owned by `user`, with a default project, on the Free plan. Each person
    may have `FREE_ORGANIZATIONS_PER_USER` free organizations: the Free plan's monthly credit is
    per person, not per organization."""
    name = name.strip()
    if not name:
        raise ActionError("Give the organization a name.", param="name")
    # Locks the user's row: two concurrent creations cannot both see room for one more.
    User.objects.select_for_update().filter(pk=user.pk).first()
    refusal = free_organization_refusal(user)
    if refusal is not None:
        raise ActionError(refusal, code="free_organization_limit", status=403)
    organization = Organization.objects.create(name=name[:100], created_by=user)
    Membership.objects.create(organization=organization, user=user, role=Role.OWNER)
    Project.objects.create(organization=organization, name=DEFAULT_PROJECT_NAME, created_by=user)
    subscription_for(organization)  # every organization starts on the Free plan
    return organization


def create_personal_organization(user: User) -> Organization:
    label = user.name or user.email.split("@")[0]
    return create_organization(user, f"{label}'s organization")


def get_membership(user: User, organization: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=organization).first()


def require_manager(actor: User, organization: Organization) -> Membership:
    membership = get_membership(actor, organization)
    if membership is None or not membership.can_manage:
        raise PermissionDenied()
    return membership


def require_manager_or_creator(
    actor: User | None, organization: Organization, created_by_id: int | None, refusal: str
) -> None:
    """Destructive actions: an owner or admin of the organization, or the member who created the
    object. Roles are read now, so a demotion or a removal takes effect on the next request."""
    membership = get_membership(actor, organization) if actor is not None else None
    if membership is None or not membership.can_destroy(created_by_id):
        raise PermissionDenied(refusal)


def _owner_count(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization, role=Role.OWNER).count()


@transaction.atomic
def invite_member(organization: Organization, inviter: User, email: str, role: str) -> Invitation:
    """Invites `email`, or, when it already has an open invitation, updates that one: the role, the
    sender, a new link (the old one stops working) and a new lifetime; either way an email goes
    out. `send_count` above 1 tells the caller an invitation was updated."""
    require_manager(inviter, organization)
    email = email.strip().lower()
    try:
        # The address becomes the email's To header: one with a line break in it would fail the
        # email after the invitation was saved, or add a header.
        validate_email(email)
    except ValidationError:
        raise ActionError(f"{email!r} is not an email address.", param="email") from None
    if role not in Role.values:
        raise ActionError(f"Unknown role {role!r}.", param="role")
    _require_may_invite_as(inviter, organization, role)
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise ActionError(f"{email} is already a member.", param="email")
    # Locks the organization's row: two invitations to one address at the same moment update one
    # invitation instead of both inserting (the database refuses a second open one anyway).
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    invitation = (
        Invitation.objects.filter(organization=organization, email__iexact=email)
        .filter(accepted_at__isnull=True, revoked_at__isnull=True)
        .first()
    )
    if invitation is None:
        invitation = Invitation(organization=organization, email=email, send_count=0)
    invitation.role = role
    _send_invitation(invitation, inviter)
    return invitation


def _require_may_invite_as(inviter: User, organization: Organization, role: str) -> None:
    if role == Role.OWNER and get_membership(inviter, organization).role != Role.OWNER:  # type: ignore[union-attr]
        raise PermissionDenied("Only owners can invite owners.")


def _send_invitation(invitation: Invitation, sender: User) -> None:
    """Saves the invitation with a new token, from `sender`, sent now, and emails its link once the
    transaction commits. Only the new link works: the token's hash replaces the last one's."""
    token = secrets.token_urlsafe(32)
    invitation.token_hash = Invitation.hash_token(token)
    invitation.invited_by = sender
    invitation.sent_at = timezone.now()
    invitation.send_count += 1
    invitation.save()
    organization, email, role = invitation.organization, invitation.email, invitation.role
    link = settings.SITE_URL + reverse("dashboard:accept_invitation", args=[token])
    days = INVITATION_LIFETIME.days
    transaction.on_commit(
        lambda: send_mail(
            subject=f"You are invited to {single_line(organization.name)} on Modelworks",
            message=(
                f"{sender.email} invited you to join {organization.name} on Modelworks as {role}.\n\n"
                f"Accept the invitation: {link}\n\nThe link is valid for {days} days."
            ),
            from_email=None,
            recipient_list=[email],
        )
    )


@transaction.atomic
def resend_invitation(actor: User, invitation: Invitation) -> Invitation:
    """Sends an open invitation again, expired or not, from `actor`: a new link (the old one stops
    working) and a new lifetime. A sender who may no longer invite is replaced by `actor`, so a void
    invitation becomes valid again."""
    require_manager(actor, invitation.organization)
    locked = Invitation.objects.select_for_update().select_related("organization").get(pk=invitation.pk)
    if not locked.is_open:
        raise ActionError(
            f"The invitation to {locked.email} was already {'accepted' if locked.accepted_at else 'revoked'}: "
            "there is nothing to send again."
        )
    _require_may_invite_as(actor, locked.organization, locked.role)
    _send_invitation(locked, actor)
    return locked


INVITER_GONE = (
    "This invitation is no longer valid: the person who sent it may no longer invite people to {organization}. "
    "Ask an owner or admin of {organization} for a new invitation."
)


def inviter_refusal(invitation: Invitation) -> str | None:
    """Why the invitation is void because of its inviter, or None. An invitation carries its
    inviter's right to invite: it is void once they leave, are demoted, or (for an owner
    invitation) are no longer an owner, and valid again if that right comes back."""
    inviter = invitation.invited_by
    membership = get_membership(inviter, invitation.organization) if inviter is not None else None
    if (
        membership is not None
        and membership.can_manage
        and (invitation.role != Role.OWNER or membership.role == Role.OWNER)
    ):
        return None
    return INVITER_GONE.format(organization=invitation.organization.name)


def find_invitation(token: str) -> Invitation | None:
    invitation = (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(token_hash=Invitation.hash_token(token))
        .first()
    )
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
    refusal = inviter_refusal(invitation)
    if refusal is not None:
        raise ActionError(refusal)
    membership, _ = Membership.objects.get_or_create(
        organization=invitation.organization, user=user, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    return membership


def open_invitations(actor: User, organization: Organization) -> list[Invitation]:
    """The invitations neither accepted nor revoked, expired ones too (they can be sent again), for
    the organization's owners and admins only."""
    require_manager(actor, organization)
    return list(
        Invitation.objects.filter(
            organization=organization, accepted_at__isnull=True, revoked_at__isnull=True
        ).select_related("invited_by", "organization")
    )


def revoke_invitation(actor: User, invitation: Invitation) -> None:
    require_manager(actor, invitation.organization)
    Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


@transaction.atomic
def change_role(actor: User, membership: Membership, role: str) -> Membership:
    actor_membership = require_manager(actor, membership.organization)
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
        actor_membership = require_manager(actor, membership.organization)
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


REVOKE_KEY_REFUSAL = "Only owners and admins can revoke another member's API key."


def revoke_api_key(actor: User, key: ApiKey) -> None:
    require_manager_or_creator(actor, key.project.organization, key.created_by_id, REVOKE_KEY_REFUSAL)
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
