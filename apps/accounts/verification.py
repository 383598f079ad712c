"""The sign-up (or login) this browser has waiting for its email address to be confirmed, as
allauth keeps it in the session until the link is followed or `ACCOUNT_LOGIN_TIMEOUT` passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# allauth's own modules import each other in a circle; its views load `internal` first, and so
# must we, or `stages` below fails to import.
from allauth.account.internal import flows  # noqa: F401
from allauth.account.models import Login
from allauth.account.stages import EmailVerificationStage, LoginStageController
from allauth.account.utils import user_email
from django.http import HttpRequest


@dataclass(frozen=True)
class PendingVerification:
    login: Login
    # A new account's login carries its user, not the address; allauth's answer to a sign-up with an
    # address that already has an account carries the address and no user.
    email: str


def pending_verification(request: HttpRequest) -> PendingVerification | None:
    stage: Any = LoginStageController.enter(request, EmailVerificationStage.key)
    if stage is None:
        return None
    login = stage.login
    email = login.email or (user_email(login.user) if login.user is not None else "")
    return PendingVerification(login, email) if email else None
