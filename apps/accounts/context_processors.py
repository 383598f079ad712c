from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from apps.accounts.models import Organization


def organizations(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "current_organization": getattr(request, "organization", None),
        "current_membership": getattr(request, "membership", None),
        "user_organizations": Organization.objects.for_user(user),
    }


def product(request: HttpRequest) -> dict[str, Any]:
    """The product's name and where to write to it, for every page (signed in or not)."""
    return {"site_name": settings.SITE_NAME, "support_email": settings.SUPPORT_EMAIL}
