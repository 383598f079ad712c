from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from apps.accounts.models import Membership

SESSION_KEY = "organization_id"


class CurrentOrganizationMiddleware:
    """Sets `request.membership` and `request.organization` for dashboard pages.

    The current organization is the one chosen in the switcher (kept in the session), or the
    user's first. Only organizations the user is a member of can ever be current.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.membership = None  # type: ignore[attr-defined]
        request.organization = None  # type: ignore[attr-defined]
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and not request.path.startswith("/v1/"):
            memberships = Membership.objects.filter(user=user).select_related("organization")
            chosen = request.session.get(SESSION_KEY)
            membership = (chosen and memberships.filter(organization__public_id=chosen).first()) or (
                memberships.first()
            )
            if membership is not None:
                request.membership = membership  # type: ignore[attr-defined]
                request.organization = membership.organization  # type: ignore[attr-defined]
        return self.get_response(request)
