from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from apps.accounts.models import Membership, Organization, User

SESSION_KEY = "organization_id"


class AuthenticatedRequest(HttpRequest):
    """A request from a logged-in user: what `login_required` guarantees a view receives. Only
    ever a type: the object is Django's own request."""

    user: User


class OrganizationRequest(AuthenticatedRequest):
    """A dashboard request from a member of the current organization: what `member_required`
    guarantees a view receives (`apps.dashboard.views.common`), with the two attributes
    `CurrentOrganizationMiddleware` sets."""

    organization: Organization
    membership: Membership


class CurrentOrganizationMiddleware:
    """Sets `request.membership` and `request.organization` for dashboard pages (None for a visitor
    who is in no organization).

    The current organization is the one chosen in the switcher (kept in the session), or the
    user's first. Only organizations the user is a member of can ever be current.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        membership = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and not request.path.startswith("/v1/"):
            memberships = Membership.objects.filter(user=user).select_related("organization")
            chosen = request.session.get(SESSION_KEY)
            membership = (chosen and memberships.filter(organization__public_id=chosen).first()) or (
                memberships.first()
            )
        # Set on every request, so a page can always ask (`getattr` would hide a missing middleware).
        request.membership = membership  # type: ignore[attr-defined]
        request.organization = membership.organization if membership else None  # type: ignore[attr-defined]
        return self.get_response(request)
