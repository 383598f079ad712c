"""Every change to users, organizations, memberships and invitations. A new organization is made by
`apps.projects.onboarding`, which adds its default project and its subscription."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Invitation, Membership, Organization, Role, User
from apps.core.errors import ActionError, PermissionDenied
from apps.core.mail import single_line


def organization_name(name: str) -> str:
    """The name a new organization gets, or a refusal when there is none."""
    name = name.strip()
    if not name:
        raise ActionError("Give the organization a name.", param="name")
    return name[:100]


def personal_organization_name(user: User) -> str:
    return f"{user.name or user.email.split('@')[0]}'s organization"


def create_owned_organization(user: User, name: str) -> Organization:
    """The organization and its first owner, `user`. Only onboarding calls this
    (`apps.projects.onboarding.create_organization`): an organization needs its project and its
    subscription from the start."""
    organization = Organization.objects.create(name=organization_name(name), created_by=user)
    Membership.objects.create(organization=organization, user=user, role=Role.OWNER)
    return organization


def owned_or_created(user: User) -> QuerySet[Organization]:
    """The organizations `user` owns or created (an organization handed over still counts as its
    creator's)."""
    owned = Membership.objects.filter(user=user, role=Role.OWNER).values("organization_id")
    return Organization.objects.filter(Q(pk__in=owned) | Q(created_by=user))


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


INVITER_GONE = (
    "This invitation is no longer valid: the person who sent it may no longer invite people to {organization}. "
    "Ask an owner or admin of {organization} for a new invitation."
)


def inviter_refusal(invitation: Invitation) -> str | None:
    """Why the invitation is void because of its inviter, or None. An invitation carries its
    inviter's right to invite: it is void once they leave, are demoted, are deactivated, or (for an
    owner invitation) are no longer an owner, and valid again if that right comes back."""
    inviter = invitation.invited_by
    membership = None
    # A deactivated account acts no more (its sessions and API keys are refused): nor do its invitations.
    if inviter is not None and inviter.is_active:
        membership = get_membership(inviter, invitation.organization)
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


def pending_invitations(actor: User, organization: Organization) -> list[Invitation]:
    """The invitations still open, for the organization's owners and admins only."""
    require_manager(actor, organization)
    invitations = Invitation.objects.filter(
        organization=organization, accepted_at__isnull=True, revoked_at__isnull=True
    ).select_related("invited_by", "organization")
    return [invitation for invitation in invitations if invitation.is_pending]


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
