from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from apps.core.crypto import UnreadableSecret, decrypt
from apps.core.errors import ActionError
from apps.core.ids import random_id

UNREADABLE_OPENAI_KEY = (
    "Your organization's stored OpenAI key cannot be read (it was saved under an encryption key this "
    "server no longer has, or it is damaged). An owner or admin must enter it again on the billing page; "
    "until then OpenAI models are refused rather than run on another key."
)
NO_OPENAI_KEY = (
    "No OpenAI key is configured, so openai:* models cannot be called. An owner or admin can add the "
    "organization's own key on the dashboard's Billing page (Your own OpenAI key), or whoever runs this server "
    "can set OPENAI_API_KEY."
)


def new_org_id() -> str:
    return random_id("org-")


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Logs in with an email address; belongs to organizations through Membership."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []  # type: ignore[misc]

    def __str__(self) -> str:
        return self.email


class OrganizationQuerySet(models.QuerySet["Organization"]):
    def for_user(self, user: User) -> OrganizationQuerySet:
        if not getattr(user, "is_authenticated", False):
            return self.none()
        return self.filter(memberships__user=user)


SLUG_MAX_LENGTH = 40


class Organization(models.Model):
    """Owns everything billable: projects, files, jobs, models, usage."""

    public_id = models.CharField(max_length=40, unique=True, default=new_org_id, editable=False)
    name = models.CharField(max_length=100)
    # The organization's part of its fine-tuned model ids, `ft:{base}:{slug}:{suffix}:{job}`. Made
    # when the organization is, chosen by an owner once (`slug_chosen_at`), then fixed: a model keeps
    # the id it was made with, so a later change would only split one organization's ids in two.
    slug = models.CharField(max_length=SLUG_MAX_LENGTH, unique=True)
    slug_chosen_at = models.DateTimeField(null=True, blank=True)
    # Who created it. Kept after they leave: a free organization counts against its creator's
    # allowance (`FREE_ORGANIZATIONS_PER_USER`) even once handed to someone else.
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # The organisation's own OpenAI key, encrypted at rest (apps.core.crypto); never shown again.
    openai_api_key_encrypted = models.TextField(blank=True, default="")

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def openai_key(self) -> str | None:
        """The organization's own key; None when it stored none. Raises UnreadableSecret when the
        stored key cannot be decrypted."""
        return decrypt(self.openai_api_key_encrypted) if self.openai_api_key_encrypted else None

    @property
    def openai_key_hint(self) -> str:
        """`sk-…abcd` for the stored key, "" when none; raises UnreadableSecret like `openai_key`."""
        key = self.openai_key()
        return f"sk-…{key[-4:]}" if key else ""

    def openai_key_for_calls(self) -> str:
        """The key `openai:*` calls run on: the organization's own, else the platform's. Every
        caller (the proxy, batches, distillation teachers) gets the same refusals from here:

        - a stored key that cannot be read (`openai_key_unreadable`): running the call on the
          platform's key instead would send the organization's data through an account it chose
          not to use;
        - no key at all (`provider_not_configured`), saying where to add one."""
        try:
            key = self.openai_key()
        except UnreadableSecret:
            raise ActionError(UNREADABLE_OPENAI_KEY, code="openai_key_unreadable", param="model") from None
        key = key or settings.OPENAI_API_KEY
        if not key.strip():
            raise ActionError(NO_OPENAI_KEY, code="provider_not_configured", param="model")
        return key


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


MANAGER_ROLES = (Role.OWNER, Role.ADMIN)


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="unique_membership")]
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def can_manage(self) -> bool:
        return self.role in MANAGER_ROLES

    def can_destroy(self, created_by_id: int | None) -> bool:
        """Destructive actions on an object (deleting it, revoking it) are for owners and admins,
        and for the member who created it."""
        return self.can_manage or (created_by_id is not None and created_by_id == self.user_id)


INVITATION_LIFETIME = timedelta(days=7)


class Invitation(models.Model):
    """An invitation to join an organization, by email. An address has at most one open invitation
    (neither accepted nor revoked) per organization: inviting it again, or resending, updates that
    one (apps.accounts.actions.invite_member, resend_invitation)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    # Only the SHA-256 of the token is stored; the link in the email carries the token itself.
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # The last email: its link is the only one that works, and the lifetime runs from it.
    sent_at = models.DateTimeField(default=timezone.now)
    send_count = models.PositiveIntegerField(default=1)
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                models.F("organization"),
                Lower("email"),
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="one_open_invitation_per_address",
            )
        ]

    def __str__(self) -> str:
        return f"{self.email} → {self.organization}"

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @property
    def expires_at(self) -> datetime:
        return self.sent_at + INVITATION_LIFETIME

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None

    @property
    def is_pending(self) -> bool:
        """Neither accepted, revoked nor expired. Whether its inviter may still invite is a
        separate check (`apps.accounts.actions.inviter_refusal`): that can change either way."""
        return self.is_open and timezone.now() < self.expires_at


class ApiKey(models.Model):
    """A project's API key. The full key is shown once; only its SHA-256 is stored.

    Format: `sk-mw-<prefix 8><secret 32>`. The prefix is indexed for lookup; the digest is
    compared in constant time. A password hasher would cost ~300 ms per request
    (docs/architecture.md, "The API edge").
    """

    PREFIX = "sk-mw-"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    hashed_key = models.CharField(max_length=64)
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Chosen at creation (never, or a number of days): a key that leaks and is forgotten stops
    # working by itself.
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix}…)"

    @property
    def display_prefix(self) -> str:
        return f"{self.PREFIX}{self.prefix}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @staticmethod
    def hash_secret(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @classmethod
    def generate(cls) -> tuple[str, str]:
        """Returns (prefix, full key)."""
        prefix = random_id("", 8)
        return prefix, f"{cls.PREFIX}{prefix}{random_id('', 32)}"
