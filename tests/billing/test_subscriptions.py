"""Every organization has its subscription from the moment it exists; reading one never writes."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps as installed_apps

from apps.accounts.models import Organization
from apps.billing.models import Plan, Price, Subscription
from apps.billing.quotas import SubscriptionMissing, subscription_for
from apps.projects import onboarding

pytestmark = pytest.mark.django_db


def test_a_new_organization_starts_with_its_owner_project_and_free_subscription(
    billing_plans: None,
) -> None:
    from tests.conftest import make_user

    dora = make_user("dora@example.com")

    organization = onboarding.create_organization(dora, "  Dora's  ")

    assert organization.name == "Dora's"
    assert [(m.user, m.role) for m in organization.memberships.all()] == [(dora, "owner")]
    assert list(organization.projects.values_list("name", flat=True)) == ["Default project"]
    assert Subscription.objects.get(organization=organization).plan.slug == "free"


def test_an_organization_refused_by_the_free_allowance_leaves_nothing_behind(alice: Any) -> None:
    from apps.core.errors import ActionError

    with pytest.raises(ActionError) as refused:
        onboarding.create_organization(alice, "One too many")

    assert refused.value.code == "free_organization_limit"
    assert not Organization.objects.filter(name="One too many").exists()


def test_reading_a_missing_subscription_refuses_and_writes_nothing() -> None:
    # given an organization made around onboarding, and a database whose price book is gone
    bare = Organization.objects.create(name="Bare")
    Price.objects.all().delete()
    Plan.objects.all().delete()

    # when its subscription is read
    with pytest.raises(SubscriptionMissing) as refused:
        subscription_for(bare)

    # then the error says what is wrong, and nothing was created or seeded
    assert str(refused.value) == (
        f"Organization {bare.public_id} has no subscription; every organization gets one when it is created."
    )
    assert not Subscription.objects.exists()
    assert not Plan.objects.exists() and not Price.objects.exists()


def test_the_migration_puts_every_organization_without_a_subscription_on_free(alice: Any, carol: Any) -> None:
    # given an organization from before onboarding subscribed it, and alice's on a paid plan
    bare = Organization.objects.create(name="From before")
    alices = alice.memberships.get().organization
    Subscription.objects.filter(organization=alices).update(plan=Plan.objects.get(slug="pro"))
    migration = importlib.import_module("apps.billing.migrations.0007_every_organization_has_a_subscription")

    migration.subscribe_the_rest_to_free(installed_apps, None)

    assert subscription_for(bare).plan.slug == "free"
    assert subscription_for(alices).plan.slug == "pro"  # an existing subscription is left alone
    assert Subscription.objects.count() == 3
