"""The organization settings page: owners and admins rename the organization; an owner chooses,
once, the slug its model ids are built from."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.test import Client

from apps.accounts.models import Organization
from apps.projects import onboarding
from tests.conftest import login

SETTINGS = "/organization/"
RENAME = "/organization/rename"
SLUG = "/organization/slug"


def test_the_page_shows_the_name_and_the_slug_in_a_model_id(alice_client: Client, alice_org: Any) -> None:
    page = alice_client.get(SETTINGS).content.decode()

    assert '<input type="text" id="organization-name-input" name="name" value="Acme"' in page
    assert 'ft:&lt;base model&gt;:<strong id="current-slug">acme</strong>:&lt;suffix&gt;:&lt;job&gt;' in page
    assert '<form method="post" action="/organization/slug" novalidate' in page
    assert "<strong>You can set it once</strong>: after that it is fixed." in page
    assert (
        '<a href="/organization/" class="active" aria-current="page">Settings</a>' in page
    )  # in the sidebar


def test_an_owner_renames_the_organization(alice_client: Client, alice_org: Any) -> None:
    response = alice_client.post(RENAME, {"name": "  Acme Labs  "}, follow=True)

    assert response.redirect_chain == [(SETTINGS, 302)]
    assert "The organization is now called “Acme Labs”." in response.content.decode()
    alice_org.refresh_from_db()
    assert (alice_org.name, alice_org.slug) == ("Acme Labs", "acme")  # model ids do not move
    assert (
        '<option value="' + alice_org.public_id + '" selected>Acme Labs</option>' in response.content.decode()
    )


def test_an_admin_renames_the_organization(client: Client, erin: Any, alice_org: Any) -> None:
    login(client, erin)
    client.post(RENAME, {"name": "Acme Research"})
    alice_org.refresh_from_db()
    assert alice_org.name == "Acme Research"


def test_a_member_cannot_rename_the_organization(client: Client, bob: Any, alice_org: Any) -> None:
    login(client, bob)
    page = client.get(SETTINGS).content.decode()
    assert 'action="/organization/rename"' not in page
    assert "Owners and admins can rename the organization." in page

    response = client.post(RENAME, {"name": "Bob's now"})

    assert response.status_code == 403
    assert "Only owners and admins can do that." in response.content.decode()
    alice_org.refresh_from_db()
    assert alice_org.name == "Acme"


def test_a_blank_name_is_refused_beside_the_field(alice_client: Client, alice_org: Any) -> None:
    response = alice_client.post(RENAME, {"name": "   "})

    assert response.status_code == 200
    page = response.content.decode()
    assert (
        '<p class="errorlist" id="organization-name-error" role="alert">Give the organization a name.</p>'
        in page
    )
    assert 'aria-invalid="true" aria-describedby="organization-name-error"' in page
    alice_org.refresh_from_db()
    assert alice_org.name == "Acme"


def test_an_owner_sets_the_slug_once_and_then_it_is_fixed(alice_client: Client, alice_org: Any) -> None:
    # given
    response = alice_client.post(SLUG, {"slug": " Acme-ML "}, follow=True)
    assert response.redirect_chain == [(SETTINGS, 302)]
    page = response.content.decode()
    assert (
        "New model ids now start ft:&lt;base model&gt;:acme-ml:… Models made before keep their ids." in page
    )
    alice_org.refresh_from_db()
    assert alice_org.slug == "acme-ml" and alice_org.slug_chosen_at is not None
    assert 'action="/organization/slug"' not in page
    assert "is fixed: model ids are built from it, and code that calls them must keep working." in page

    # when: a second choice
    response = alice_client.post(SLUG, {"slug": "acme-two"})

    # then
    assert response.status_code == 200
    assert (
        "This organization&#x27;s slug is already “acme-ml” and cannot be changed: model ids are built from it."
        in response.content.decode()
    )
    alice_org.refresh_from_db()
    assert alice_org.slug == "acme-ml"


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "Choose a slug: 2 to 40 lowercase letters, digits and hyphens."),
        ("   ", "Choose a slug: 2 to 40 lowercase letters, digits and hyphens."),
        ("a", "A slug is 2 to 40 lowercase letters, digits and hyphens; “a” has 1 character."),
        (
            "a" * 41,
            f"A slug is 2 to 40 lowercase letters, digits and hyphens; “{'a' * 41}” has 41 characters.",
        ),
        ("my org", "A slug may contain only letters, digits and hyphens; “my org” contains a space."),
        ("acme:labs", "A slug may contain only letters, digits and hyphens; “acme:labs” contains “:”."),
        ("acme_labs", "A slug may contain only letters, digits and hyphens; “acme_labs” contains “_”."),
        ("café", "A slug may contain only letters, digits and hyphens; “café” contains “é”."),
        ("-acme", "A slug starts and ends with a letter or a digit, not a hyphen."),
        ("acme-", "A slug starts and ends with a letter or a digit, not a hyphen."),
    ],
)
def test_a_bad_slug_is_refused_with_what_is_wrong(
    alice_client: Client, alice_org: Any, typed: str, message: str
) -> None:
    response = alice_client.post(SLUG, {"slug": typed})

    assert response.status_code == 200
    page = response.content.decode()
    assert f'<p class="errorlist" id="organization-slug-error" role="alert">{message}</p>' in page
    assert 'aria-invalid="true"' in page
    alice_org.refresh_from_db()
    assert (alice_org.slug, alice_org.slug_chosen_at) == ("acme", None)


def test_a_slug_another_organization_has_is_refused(alice_client: Client, alice_org: Any, carol: Any) -> None:
    response = alice_client.post(SLUG, {"slug": "outsiders-inc"})

    assert response.status_code == 200
    assert (
        "The slug “outsiders-inc” is taken by another organization. Choose another."
        in response.content.decode()
    )
    alice_org.refresh_from_db()
    assert alice_org.slug == "acme"


@pytest.mark.parametrize("persona", ["bob", "erin"])
def test_only_owners_choose_the_slug(client: Client, alice_org: Any, persona: str, request: Any) -> None:
    login(client, request.getfixturevalue(persona))
    page = client.get(SETTINGS).content.decode()
    assert 'action="/organization/slug"' not in page
    assert "Only owners can choose the slug, once; until then model ids use" in page

    response = client.post(SLUG, {"slug": "taken-over"})

    assert response.status_code == 403
    assert "Only owners can choose the organization&#x27;s slug." in response.content.decode()
    alice_org.refresh_from_db()
    assert alice_org.slug == "acme"


def test_an_outsider_only_ever_changes_their_own_organization(
    carol_client: Client, alice_org: Any, carol: Any
) -> None:
    carol_client.post(RENAME, {"name": "Acme"})
    carol_client.post(SLUG, {"slug": "acme-hijack"})
    # The organization switcher refuses alice's organization: the page never shows it.
    assert (
        carol_client.post("/organizations/switch", {"organization": alice_org.public_id}).status_code == 404
    )

    alice_org.refresh_from_db()
    carols = carol.memberships.get().organization
    assert (alice_org.name, alice_org.slug) == ("Acme", "acme")
    assert (carols.name, carols.slug) == ("Acme", "acme-hijack")


def test_a_new_organization_gets_a_slug_from_its_name_and_a_number_when_taken(
    alice_org: Any, carol: Any, settings: Any
) -> None:
    settings.FREE_ORGANIZATIONS_PER_USER = 5

    second = onboarding.create_organization(carol, "Acme")
    third = onboarding.create_organization(carol, "ACME")

    assert (alice_org.slug, second.slug, third.slug) == ("acme", "acme-2", "acme-3")
    assert onboarding.create_organization(carol, "Acme Labs, Inc.").slug == "acme-labs-inc"
    assert onboarding.create_organization(carol, "  ✓ ").slug == "org"


def test_signup_s_organization_slug_does_not_carry_the_email_handle(client: Client, db: None) -> None:
    client.post(
        "/accounts/signup/",
        {
            "email": "dora.smith@example.com",
            "password1": "a-long-password-1",
            "password2": "a-long-password-1",
        },
    )

    organization = Organization.objects.get()
    assert organization.name == "dora.smith's organization"
    assert organization.slug.startswith("org-") and len(organization.slug) == 12
    assert "dora" not in organization.slug and organization.slug_chosen_at is None


def test_existing_organizations_get_the_slug_their_model_ids_were_built_with(db: None) -> None:
    # given: organizations as they were before slugs, one name twice
    names = ["Acme", "Acme", "Été Corp!", "a - b", "✓", "Very Long Name " * 4]
    organizations = [Organization.objects.create(name=name, slug=f"tmp-{i}") for i, name in enumerate(names)]
    migration = importlib.import_module("apps.accounts.migrations.0006_organization_slug")

    # when
    migration.slugs_from_names(django_apps, None)

    # then: what `ft:{base}:{org}:…` used for each name; the second "Acme" gets a number
    slugs = [Organization.objects.get(pk=o.pk).slug for o in organizations]
    assert slugs == ["acme", "acme-2", "t-corp", "a---b", "org", "very-long-name-very-long-name-very-long-"]
