"""A new organization, whole: the organization and its owner (accounts), its default project
(projects) and its Free subscription (billing), in one transaction. Signup, the dashboard's "new
organization" page and `manage.py create_tenant` all come here, so no organization ever exists
without its project or its subscription.
"""

from __future__ import annotations

from django.db import transaction

from apps.accounts import actions as accounts
from apps.accounts.models import Organization, User
from apps.billing import actions as billing
from apps.billing.quotas import free_organization_refusal
from apps.core.errors import ActionError
from apps.projects.actions import DEFAULT_PROJECT_NAME, create_project


@transaction.atomic
def create_organization(user: User, name: str, *, slug: str | None = None) -> Organization:
    """An organization owned by `user`, with a default project, on the Free plan; refused (403)
    once `user` has all the free organizations a person may have. Its slug (the organization's
    part of its model ids) is `slug`, or one made from its name."""
    name = accounts.organization_name(name)
    # Locks the user's row: two concurrent creations cannot both see room for one more.
    User.objects.select_for_update().filter(pk=user.pk).first()
    refusal = free_organization_refusal(user)
    if refusal is not None:
        raise ActionError(refusal, code="free_organization_limit", status=403)
    organization = accounts.create_owned_organization(user, name, slug=slug)
    create_project(organization, user, DEFAULT_PROJECT_NAME)
    billing.start_free_subscription(organization)
    return organization


def create_personal_organization(user: User) -> Organization:
    """Signup's organization. Its name says whose it is; its slug does not, as model ids travel
    further than the dashboard (logs, code, other companies' systems)."""
    return create_organization(user, accounts.personal_organization_name(user), slug=accounts.neutral_slug())
