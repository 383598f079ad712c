from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from apps.accounts.models import ApiKey, Membership, User


def run(*args: str) -> dict[str, str]:
    out = StringIO()
    call_command("create_tenant", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db
def test_it_creates_a_verified_user_organization_project_and_key() -> None:
    data = run("Demo@Example.com", "--password", "pw-123456789", "--organization", "Demo Co")
    assert data["email"] == "demo@example.com"
    assert data["password"] == "pw-123456789"
    assert data["organization_name"] == "Demo Co"
    assert data["api_key"].startswith("sk-mw-")
    user = User.objects.get(email="demo@example.com")
    assert user.check_password("pw-123456789")
    assert user.emailaddress_set.get().verified
    key = ApiKey.objects.get(prefix=data["api_key"][6:14])
    assert key.project.public_id == data["project"]
    assert key.project.organization.subscription.plan.slug == "free"
    assert key.hashed_key != data["api_key"] and data["api_key"] not in key.hashed_key


@pytest.mark.django_db
def test_it_reuses_the_user_and_organization() -> None:
    first = run("demo@example.com", "--password", "pw-123456789")
    second = run("demo@example.com")
    assert "password" not in second
    assert first["organization"] == second["organization"]
    assert first["project"] == second["project"]
    assert first["api_key"] != second["api_key"]
    assert Membership.objects.count() == 1
