"""Every change to users, organizations, memberships and invitations. A new organization is made by
`apps.projects.onboarding`, which adds its default project and its subscription."""

from __future__ import annotations

import re
import secrets
import string

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import (
    INVITATION_LIFETIME,
    SLUG_MAX_LENGTH,
    Invitation,
    Membership,
    Organization,
    Role,
    User,
)
from apps.core.errors import ActionError, PermissionDenied
from apps.core.mail import single_line

BLANK_ORGANIZATION_NAME = "Give the organization a name."


def organization_name(name: str) -> str:
    """The name a new organization gets, or a refusal when there is none."""
    name = name.strip()
    if not name:
        raise ActionError(BLANK_ORGANIZATION_NAME, param="name")
    return name[:100]


def personal_organization_name(user: User) -> str:
    return f"{user.name or user.email.split('@')[0]}'s organization"


def create_owned_organization(user: User, name: str, *, slug: str | None = None) -> Organization:
    """The organization and its first owner, `user`. Only onboarding calls this
    (`apps.projects.onboarding.create_organization`): an organization needs its project and its
    subscription from the start. Its slug is `slug`, or one made from its name; an owner may choose
    another once (`choose_organization_slug`)."""
    name = organization_name(name)
    organization = _create_with_free_slug(name, user, slug or slug_from_name(name))
    Membership.objects.create(organization=organization, user=user, role=Role.OWNER)
    return organization


def owned_or_created(user: User) -> QuerySet[Organization]:
    """The organizations `user` owns or created (an organization handed over still counts as its
    creator's)."""
    owned = Membership.objects.filter(user=user, role=Role.OWNER).values("organization_id")
    return Organization.objects.filter(Q(pk__in=owned) | Q(created_by=user))


# --- Slugs: the organization's part of its model ids ----------------------------------------------
SLUG_MIN_LENGTH = 2
SLUG_RULES = f"{SLUG_MIN_LENGTH} to {SLUG_MAX_LENGTH} lowercase letters, digits and hyphens"
BLANK_SLUG = f"Choose a slug: {SLUG_RULES}."
SLUG_LENGTH = "A slug is {rules}; “{slug}” has {count} character{s}."
SLUG_CHARACTER = "A slug may contain only letters, digits and hyphens; “{slug}” contains {character}."
SLUG_EDGE = "A slug starts and ends with a letter or a digit, not a hyphen."
SLUG_TAKEN = "The slug “{slug}” is taken by another organization. Choose another."
SLUG_FIXED = (
    "This organization's slug is already “{slug}” and cannot be changed: model ids are built from it."
)
SLUG_OWNERS_ONLY = "Only owners can choose the organization's slug."
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_SLUG_CHARACTERS = frozenset(string.ascii_lowercase + string.digits + "-")


def slug_from_name(name: str) -> str:
    """ "Acme Labs, Inc." → "acme-labs-inc" ("org" when nothing of the name is usable)."""
    slug = _NOT_SLUG.sub("-", name.lower()).strip("-")[:SLUG_MAX_LENGTH].strip("-")
    return slug if len(slug) >= SLUG_MIN_LENGTH else "org"


def neutral_slug() -> str:
    return "org-" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _numbered(base: str, n: int) -> str:
    tail = f"-{n}"
    return base[: SLUG_MAX_LENGTH - len(tail)].rstrip("-") + tail


def _create_with_free_slug(name: str, user: User, base: str) -> Organization:
    """The organization, under `base` or the first of `base-2`, `base-3`… that no one has."""
    taken = set(Organization.objects.filter(slug__startswith=base).values_list("slug", flat=True))
    candidates = (base if n == 1 else _numbered(base, n) for n in range(1, 1000))
    for slug in (candidate for candidate in candidates if candidate not in taken):
        try:
            with transaction.atomic():  # a savepoint: a slug taken meanwhile only costs a retry
                return Organization.objects.create(name=name, created_by=user, slug=slug)
        except IntegrityError:
            taken.add(slug)
    raise ActionError(SLUG_TAKEN.format(slug=base), param="slug")  # a thousand organizations of one name


def clean_slug(raw: str) -> str:
    """The slug as typed, lowered, or an ActionError that says what is wrong with it."""
    slug = raw.strip().lower()
    if not slug:
        raise ActionError(BLANK_SLUG, param="slug")
    bad = next((c for c in slug if c not in _SLUG_CHARACTERS), None)
    if bad is not None:
        character = "a space" if bad.isspace() else f"“{bad}”"
        raise ActionError(SLUG_CHARACTER.format(slug=slug, character=character), param="slug")
    if not SLUG_MIN_LENGTH <= len(slug) <= SLUG_MAX_LENGTH:
        count = len(slug)
        message = SLUG_LENGTH.format(rules=SLUG_RULES, slug=slug, count=count, s="" if count == 1 else "s")
        raise ActionError(message, param="slug")
    if slug.startswith("-") or slug.endswith("-"):
        raise ActionError(SLUG_EDGE, param="slug")
    return slug


@transaction.atomic
def choose_organization_slug(actor: User, organization: Organization, raw: str) -> Organization:
    """Sets the slug new model ids are built from. Once: existing models keep the ids they have."""
    membership = get_membership(actor, organization)
    if membership is None or membership.role != Role.OWNER:
        raise PermissionDenied(SLUG_OWNERS_ONLY)
    # Locked, so that of two owners choosing at once the second sees the first one's choice.
    locked = Organization.objects.select_for_update().get(pk=organization.pk)
    if locked.slug_chosen_at is not None:
        raise ActionError(SLUG_FIXED.format(slug=locked.slug), code="slug_fixed", param="slug", status=409)
    slug = clean_slug(raw)
    if Organization.objects.filter(slug=slug).exclude(pk=locked.pk).exists():
        raise ActionError(SLUG_TAKEN.format(slug=slug), code="slug_taken", param="slug", status=409)
    locked.slug, locked.slug_chosen_at = slug, timezone.now()
    try:
        with transaction.atomic():
            locked.save(update_fields=["slug", "slug_chosen_at"])
    except IntegrityError:  # another organization took it between the check and the write
        raise ActionError(SLUG_TAKEN.format(slug=slug), code="slug_taken", param="slug", status=409) from None
    organization.slug, organization.slug_chosen_at = locked.slug, locked.slug_chosen_at
    return organization


def rename_organization(actor: User, organization: Organization, name: str) -> Organization:
    """A new display name. Model ids do not change: they are built from the slug."""
    require_manager(actor, organization)
    name = name.strip()
    if not name:
        raise ActionError(BLANK_ORGANIZATION_NAME, param="name")
    Organization.objects.filter(pk=organization.pk).update(name=name[:100])
    organization.name = name[:100]
    return organization


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
            subject=f"You are invited to {single_line(organization.name)} on {settings.SITE_NAME}",
            message=(
                f"{sender.email} invited you to join {organization.name} on {settings.SITE_NAME} as {role}.\n\n"
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
