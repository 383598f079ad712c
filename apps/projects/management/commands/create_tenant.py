from __future__ import annotations

import json
from typing import Any

from allauth.account.models import EmailAddress
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.accounts.models import Membership, Organization, User
from apps.core.errors import ActionError
from apps.projects import actions, onboarding
from apps.projects.models import Project


class Command(BaseCommand):
    help = "Create (or reuse) a verified user, an organization, a project and an API key; print them as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--password", default=None)
        parser.add_argument("--organization", default=None, help="organization name (default: personal)")

    @transaction.atomic
    def handle(
        self, *args: Any, email: str, password: str | None, organization: str | None, **kw: Any
    ) -> None:
        email = email.strip().lower()
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            user = User.objects.create_user(email, password)
        elif password:
            user.set_password(password)
            user.save(update_fields=["password"])
        EmailAddress.objects.update_or_create(
            user=user, email=email, defaults={"verified": True, "primary": True}
        )
        try:
            org = self._organization(user, organization)
        except ActionError as exc:
            raise CommandError(exc.message) from None
        project = Project.objects.filter(organization=org).order_by("id").first() or actions.create_project(
            org, user, actions.DEFAULT_PROJECT_NAME
        )
        _, api_key = actions.create_api_key(project, "create_tenant", user)
        out = {
            "email": user.email,
            "organization": org.public_id,
            "organization_name": org.name,
            "project": project.public_id,
            "api_key": api_key,
        }
        if password:
            out["password"] = password
        self.stdout.write(json.dumps(out))

    def _organization(self, user: User, name: str | None) -> Organization:
        memberships = Membership.objects.filter(user=user).select_related("organization")
        if name:
            existing = memberships.filter(organization__name=name).first()
            if existing:
                return existing.organization
            return onboarding.create_organization(user, name)
        first = memberships.first()
        return first.organization if first else onboarding.create_personal_organization(user)
