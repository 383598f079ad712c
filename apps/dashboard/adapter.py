from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.internal import ratelimit
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest

from apps.projects import onboarding

# The `ACCOUNT_RATE_LIMITS` action that counts failed logins per account *and* client address
# (saas/settings.py explains the figures). allauth's own `login_failed` counts per address and per
# account; this one sits in front of it.
LOGIN_FAILED_FROM_IP = "login_failed_from_ip"


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request: Any, user: Any, form: Any, commit: bool = True) -> Any:
        """Signup creates the user's personal organization, with its default project and its
        subscription (`apps.projects.onboarding`)."""
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=commit)
            if commit:
                onboarding.create_personal_organization(user)
        return user

    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        """allauth's emails, with where to write for help (their footer names it)."""
        super().send_mail(template_prefix, email, {"support_email": settings.SUPPORT_EMAIL, **context})

    def pre_authenticate(self, request: HttpRequest, **credentials: Any) -> None:
        """Before allauth's own counts, the count of this account's failures from this address.

        It goes first so that an attempt it refuses is not also added to the account-wide count:
        otherwise one address, refused here, could still fill that count and lock the owner out."""
        usage = ratelimit.consume(
            request,
            app="allauth.account",
            action=LOGIN_FAILED_FROM_IP,
            key=self._account_at_address(request, credentials),
        )
        if not usage:
            raise self.validation_error("too_many_login_attempts")
        try:
            super().pre_authenticate(request, **credentials)
        except Exception:
            usage.rollback()  # refused by the per-address or account-wide limit: not a try from here
            raise
        self._from_ip_usage = usage

    def authenticate(self, request: HttpRequest, **credentials: Any) -> Any:
        """A successful login takes back its own counts, as allauth does for `login_failed`: a right
        password is not a failure (and never wipes the counts, or an attacker who knows one password
        could interleave it to reset them)."""
        user = super().authenticate(request, **credentials)
        if user is not None:
            self._from_ip_usage.rollback()
        return user

    def _account_at_address(self, request: HttpRequest, credentials: dict[str, Any]) -> str:
        login = str(credentials.get("email", credentials.get("username", ""))).lower()
        # allauth's address: the client's behind a trusted proxy, an IPv6 address cut to its /64.
        return f"{login}@{ratelimit.get_ip(request)}"
