"""The Free plan's monthly credit is per person: one may own or have created at most
`FREE_ORGANIZATIONS_PER_USER` organizations on it (signup's personal one is the first).
Organizations on a paid plan do not count."""

from __future__ import annotations

import html
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from apps.accounts import actions
from apps.accounts.models import Membership, Organization, Role
from apps.core.errors import ActionError
from apps.projects import onboarding
from tests.conftest import login, use_plan

REFUSAL = (
    "Each person may have 1 organization on the Free plan, and you have 1 (Acme). To create another, upgrade "
    "one of yours to a paid plan under Billing, or ask an owner or admin of an existing organization to invite you."
)


def create(client: Any, name: str) -> Any:
    return client.post("/organizations/new", {"name": name})


def test_a_second_free_organization_is_refused(client: Any, alice: Any) -> None:
    login(client, alice)

    page = client.get("/organizations/new")
    response = create(client, "Acme again")

    assert REFUSAL in html.unescape(page.content.decode())  # said before the form is sent
    assert response.status_code == 200
    assert REFUSAL in html.unescape(response.content.decode())
    assert list(Organization.objects.values_list("name", flat=True)) == ["Acme"]


def test_after_upgrading_the_first_a_new_one_is_allowed(client: Any, alice: Any, alice_org: Any) -> None:
    # given
    use_plan(alice_org, "pro")
    login(client, alice)
    # when
    response = create(client, "Side project")
    # then: created, current, and free: the next one is refused again
    assert (response.status_code, response["Location"]) == (302, "/projects/")
    side = Organization.objects.get(name="Side project")
    assert side.created_by == alice
    assert client.session["organization_id"] == side.public_id
    refused = create(client, "Third")
    assert REFUSAL.replace("(Acme)", "(Side project)") in html.unescape(refused.content.decode())
    assert not Organization.objects.filter(name="Third").exists()


def test_handing_a_free_organization_over_does_not_free_its_place(
    alice: Any, bob: Any, alice_org: Any
) -> None:
    # given: alice makes bob an owner of Acme and leaves it
    actions.change_role(alice, Membership.objects.get(user=bob), Role.OWNER)
    actions.remove_member(alice, Membership.objects.get(user=alice))
    assert not Membership.objects.filter(user=alice).exists()
    # then she still created it
    with pytest.raises(ActionError) as refused:
        onboarding.create_organization(alice, "Acme two")
    assert refused.value.message == REFUSAL
    # and bob owns it
    with pytest.raises(ActionError) as also_refused:
        onboarding.create_organization(bob, "Bob's own")
    assert also_refused.value.message == REFUSAL


def test_being_a_member_or_admin_does_not_count(client: Any, bob: Any, erin: Any) -> None:
    login(client, bob)
    assert 'class="errorlist"' not in client.get("/organizations/new").content.decode()
    assert onboarding.create_organization(bob, "Bob's").created_by == bob
    assert onboarding.create_organization(erin, "Erin's").created_by == erin


def test_the_allowance_is_a_setting(alice: Any, settings: Any) -> None:
    settings.FREE_ORGANIZATIONS_PER_USER = 2

    onboarding.create_organization(alice, "Second")
    with pytest.raises(ActionError) as refused:
        onboarding.create_organization(alice, "Third")

    assert refused.value.message.startswith(
        "Each person may have 2 organizations on the Free plan, and you have 2 (Acme, Second). "
    )
    assert refused.value.status == 403


def test_the_management_command_is_refused_too(alice: Any) -> None:
    with pytest.raises(CommandError, match="^Each person may have 1 organization on the Free plan"):
        call_command(
            "create_tenant", "alice@example.com", "--organization", "Via the command", stdout=StringIO()
        )

    assert not Organization.objects.filter(name="Via the command").exists()


def test_existing_organizations_get_their_first_member_as_creator(
    alice: Any, bob: Any, alice_org: Any
) -> None:
    from importlib import import_module

    from django.apps import apps as django_apps

    Organization.objects.filter(pk=alice_org.pk).update(created_by=None)

    import_module("apps.accounts.migrations.0005_organization_created_by").creators_from_first_members(
        django_apps, None
    )

    assert Organization.objects.get(pk=alice_org.pk).created_by == alice
