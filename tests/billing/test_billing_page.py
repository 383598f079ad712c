"""The billing page: what owners, members and outsiders see and may change; spend alerts; numbers
that agree to the micro-dollar between the database, the page and Stripe."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core import mail
from django.db.models import Sum
from django.utils import timezone

from apps.accounts.models import Membership, Organization, Role
from apps.billing import actions, meters
from apps.billing.models import Invoice, MeterEvent, Subscription, UsageRecord
from apps.billing.quotas import subscription_for
from apps.core.crypto import encrypt
from apps.core.errors import ActionError
from tests.api.test_proxy import NO_KEY
from tests.billing.test_meters import record_usage
from tests.conftest import login, make_user
from tests.fake_stripe import FakeStripe

OPENAI_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789wxyz"


def page(client: Any) -> str:
    response = client.get("/billing/")
    assert response.status_code == 200
    return response.content.decode()


def test_the_owner_sees_plan_spend_invoices_and_the_forms(
    pro_alice: dict[str, Any], alice_client: Any, alice_org: Any
) -> None:
    html = page(alice_client)

    invoice = Invoice.objects.get(organization=alice_org)
    assert "Pro" in html and 'badge active">active' in html
    assert invoice.stripe_invoice_id in html and "<td>$49.00</td>" in html
    assert 'name="spend_limit"' in html and 'name="alert_threshold"' in html
    assert "Manage billing" in html
    assert 'name="openai_api_key"' in html
    assert "Upgrade to" not in html  # a paying organization changes plans in the portal
    assert '<div class="stat" id="month-spend" title="$0.000000 exactly">$0.00</div>' in html
    assert "Billing is off" not in html


def test_a_free_organization_is_offered_the_paid_plans(alice_client: Any, fake_stripe: FakeStripe) -> None:
    html = page(alice_client)

    assert "Upgrade to Pro" in html and "Upgrade to Team" in html
    assert "Upgrade to Free" not in html
    assert "Manage billing" not in html  # no billing account yet


def test_a_member_sees_billing_read_only(
    client: Any, bob: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    actions.set_spend_limits(
        alice_org, alice_org.memberships.get(role=Role.OWNER).user, 250_000_000, 100_000_000
    )
    login(client, bob)

    html = page(client)

    assert "Spend limit: $250.00 · Alert threshold: $100.00" in html
    assert "Only owners and admins can change the plan and limits." in html
    for form_field in ('name="spend_limit"', 'name="plan"', 'name="openai_api_key"', "Manage billing"):
        assert form_field not in html


def test_a_member_cannot_change_limits_or_the_key(
    client: Any, bob: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    login(client, bob)

    limits = client.post("/billing/limits", {"spend_limit": "1", "alert_threshold": ""})
    key = client.post("/billing/openai-key", {"openai_api_key": OPENAI_KEY})
    remove = client.post("/billing/openai-key/remove")

    assert limits.status_code == 403
    assert "Only owners and admins can change spend limits." in limits.content.decode()
    assert key.status_code == 403 and remove.status_code == 403
    assert subscription_for(alice_org).spend_limit is None
    assert Organization.objects.get(pk=alice_org.pk).openai_api_key_encrypted == ""


def test_an_admin_can_change_limits(client: Any, alice_org: Any, fake_stripe: FakeStripe) -> None:
    dana = make_user("dana@example.com")
    Membership.objects.create(organization=alice_org, user=dana, role=Role.ADMIN)
    login(client, dana)

    response = client.post("/billing/limits", {"spend_limit": "10", "alert_threshold": "5"})

    assert response.status_code == 302
    assert subscription_for(alice_org).spend_limit == 10_000_000


def test_limits_are_typed_in_dollars_and_stored_in_micro_dollars(
    alice_client: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    response = alice_client.post(
        "/billing/limits", {"spend_limit": "$1,250", "alert_threshold": "99.123456"}, follow=True
    )

    assert response.status_code == 200
    assert "Spend limit and alert saved." in response.content.decode()
    subscription = subscription_for(alice_org)
    assert (subscription.spend_limit, subscription.alert_threshold) == (1_250_000_000, 99_123_456)
    html = response.content.decode()
    assert 'value="1250"' in html and 'value="99.123456"' in html

    # blank removes both
    alice_client.post("/billing/limits", {"spend_limit": "", "alert_threshold": ""})
    subscription.refresh_from_db()
    assert (subscription.spend_limit, subscription.alert_threshold) == (None, None)


def test_bad_limits_are_refused_with_a_clear_message(
    alice_client: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    cases = {
        ("ten", ""): "The spend limit: enter an amount in dollars, like 250 or 99.50.",
        ("-5", ""): "The spend limit cannot be negative.",
        ("1.0000001", ""): "The spend limit: use at most 6 decimal places.",
        ("100", "150"): "The alert threshold ($150.00) is above the spend limit ($100.00)",
        ("2000000", ""): "The spend limit can be at most $1,000,000.00 a month.",
        # a finite Decimal whose micro-dollars overflow Decimal's exponent (it was a 500)
        ("1e999999", ""): "The spend limit can be at most $1,000,000.00 a month.",
        ("50", "1e999999"): "The alert threshold can be at most $1,000,000.00 a month.",
    }
    for (limit, threshold), message in cases.items():
        response = alice_client.post("/billing/limits", {"spend_limit": limit, "alert_threshold": threshold})
        assert response.status_code == 400, (limit, threshold)
        html = response.content.decode()
        assert message in html, html[:3000]
        assert f'value="{limit}"' in html  # what was typed stays in the form
    subscription = subscription_for(alice_org)
    assert (subscription.spend_limit, subscription.alert_threshold) == (None, None)


def test_the_openai_key_is_write_only(alice_client: Any, alice_org: Any, fake_stripe: FakeStripe) -> None:
    response = alice_client.post("/billing/openai-key", {"openai_api_key": f"  {OPENAI_KEY} "}, follow=True)

    html = response.content.decode()
    assert "OpenAI key saved." in html
    assert "sk-…wxyz" in html and OPENAI_KEY not in html and OPENAI_KEY[3:20] not in html
    stored = Organization.objects.get(pk=alice_org.pk)
    assert stored.openai_api_key_encrypted and OPENAI_KEY not in stored.openai_api_key_encrypted
    assert stored.openai_key() == OPENAI_KEY

    removed = alice_client.post("/billing/openai-key/remove", follow=True).content.decode()
    assert "OpenAI key removed." in removed and "sk-…wxyz" not in removed
    assert Organization.objects.get(pk=alice_org.pk).openai_key() is None


UNREADABLE = (
    "Your organization&#x27;s stored OpenAI key cannot be read (it was saved under an encryption key this "
    "server no longer has, or it is damaged). An owner or admin must enter it again on the billing page; "
    "until then OpenAI models are refused rather than run on another key."
)


def store_unreadable_key(organization: Any, how: str) -> None:
    """An organization's key as it is left by a changed FIELD_ENCRYPTION_KEY, or a damaged row."""
    if how == "other key":
        stored = Fernet(Fernet.generate_key()).encrypt(OPENAI_KEY.encode()).decode()
    else:
        stored = encrypt(OPENAI_KEY)[:-8] + "AAAAAAAA"
    organization.openai_api_key_encrypted = stored
    organization.save(update_fields=["openai_api_key_encrypted"])


@pytest.mark.parametrize("how", ["other key", "damaged"])
def test_an_unreadable_stored_key_is_an_error_never_the_platform_key(
    alice_org: Any, settings: Any, how: str
) -> None:
    from apps.core.crypto import UnreadableSecret

    settings.OPENAI_API_KEY = "sk-platform-0123456789abcdef"
    store_unreadable_key(alice_org, how)
    organization = Organization.objects.get(pk=alice_org.pk)

    with pytest.raises(UnreadableSecret):
        organization.openai_key()
    with pytest.raises(ActionError) as refused:
        organization.openai_key_for_calls()
    assert (refused.value.code, refused.value.status) == ("openai_key_unreadable", 400)


def test_the_platform_key_serves_only_organizations_without_their_own(alice_org: Any, settings: Any) -> None:
    settings.OPENAI_API_KEY = "sk-platform-0123456789abcdef"
    assert alice_org.openai_key_for_calls() == "sk-platform-0123456789abcdef"
    alice_org.openai_api_key_encrypted = encrypt(OPENAI_KEY)
    assert alice_org.openai_key_for_calls() == OPENAI_KEY


@pytest.mark.parametrize("platform_key", ["", "  "])
def test_without_any_key_openai_calls_are_refused_saying_where_to_add_one(
    alice_org: Any, settings: Any, platform_key: str
) -> None:
    settings.OPENAI_API_KEY = platform_key

    with pytest.raises(ActionError) as refused:
        alice_org.openai_key_for_calls()

    assert (refused.value.code, refused.value.status, refused.value.param) == (
        "provider_not_configured",
        400,
        "model",
    )
    assert refused.value.message == NO_KEY


@pytest.mark.parametrize("how", ["other key", "damaged"])
def test_the_owner_is_told_the_stored_key_cannot_be_read_and_enters_it_again(
    alice_client: Any, alice_org: Any, fake_stripe: FakeStripe, how: str
) -> None:
    store_unreadable_key(alice_org, how)

    html = page(alice_client)

    assert UNREADABLE in html
    assert "OpenAI models run on the platform&#x27;s key." not in html
    assert "Replace key" in html and "Remove key" in html
    # entering it again mends it
    response = alice_client.post("/billing/openai-key", {"openai_api_key": OPENAI_KEY}, follow=True)
    html = response.content.decode()
    assert UNREADABLE not in html and "sk-…wxyz" in html
    assert Organization.objects.get(pk=alice_org.pk).openai_key() == OPENAI_KEY


def test_a_malformed_openai_key_is_refused(
    alice_client: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    for bad in ("", "not-a-key", "sk-short", "sk-has spaces in it 1234567890"):
        response = alice_client.post("/billing/openai-key", {"openai_api_key": bad})
        assert response.status_code == 400, bad
    assert Organization.objects.get(pk=alice_org.pk).openai_api_key_encrypted == ""


def test_carol_sees_none_of_alices_billing(
    pro_alice: dict[str, Any], alice_client: Any, alice_org: Any, client: Any, carol: Any
) -> None:
    # given: alice has an invoice, limits, an OpenAI key and a customer
    alice_client.post("/billing/limits", {"spend_limit": "777", "alert_threshold": "555"})
    alice_client.post("/billing/openai-key", {"openai_api_key": OPENAI_KEY})
    invoice = Invoice.objects.get(organization=alice_org)
    mine = page(alice_client)
    assert "$777" in mine and "$555" in mine  # the markers below do show on alice's page
    login(client, carol)

    # when
    html = page(client)
    changed = client.post("/billing/limits", {"spend_limit": "1", "alert_threshold": ""})

    # then: carol's own page, with nothing of alice's
    # (amounts as the page shows them: a bare "555" can occur inside a random CSRF token)
    for marker in (invoice.stripe_invoice_id, "sk-…wxyz", "$777", "$555", pro_alice["customer"], "Acme"):
        assert marker not in html, marker
    assert "No invoices yet." in html
    assert changed.status_code == 302
    assert subscription_for(alice_org).spend_limit == 777_000_000
    assert subscription_for(carol.memberships.get().organization).spend_limit == 1_000_000


def test_anonymous_visitors_are_sent_to_log_in(client: Any, fake_stripe: FakeStripe) -> None:
    for method, url in (
        ("get", "/billing/"),
        ("post", "/billing/checkout"),
        ("post", "/billing/limits"),
        ("post", "/billing/portal"),
        ("get", "/billing/checkout/return?session_id=cs_x"),
    ):
        response = getattr(client, method)(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url


def test_the_database_the_page_and_stripe_agree_to_the_micro_dollar(
    pro_alice: dict[str, Any], alice_client: Any, alice_org: Any, fake_stripe: FakeStripe
) -> None:
    # given: usage with odd costs in this hour, once it has closed and been reported
    now = timezone.now()
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for cost, unit in (
        (1_234_567, "input_tokens"),
        (7_654_321, "output_tokens"),
        (1, "output_tokens"),
        (99, "classified_texts"),
    ):
        record_usage(alice_org, unit, cost, now)
    meters.fill_outbox(hour + timedelta(hours=1, minutes=10))
    meters.send_outbox(hour + timedelta(hours=1, minutes=10))

    # then
    in_database = UsageRecord.objects.filter(organization=alice_org).aggregate(total=Sum("cost"))["total"]
    in_outbox = MeterEvent.objects.filter(organization=alice_org, sent_at__isnull=False).aggregate(
        total=Sum("value")
    )["total"]
    at_stripe = sum(int(e["payload"]["value"]) for e in fake_stripe.meter_events)
    assert in_database == in_outbox == at_stripe == 8_888_988
    html = page(alice_client)
    # shown as every amount is ($8.89), and to the micro-dollar on hover
    assert '<div class="stat" id="month-spend" title="$8.888988 exactly">$8.89</div>' in html
    assert '<span id="reported" title="$8.888988 exactly">$8.89</span>' in html


def test_the_spend_alert_is_emailed_once_a_month_to_owners_and_admins(
    alice_org: Any, alice: Any, bob: Any, alice_client: Any, fake_stripe: FakeStripe
) -> None:
    dana = make_user("dana@example.com")
    Membership.objects.create(organization=alice_org, user=dana, role=Role.ADMIN)
    actions.set_spend_limits(alice_org, alice, None, 1_000_000)
    record_usage(alice_org, "output_tokens", 400_000, timezone.now())

    # below the threshold: nothing
    assert actions.check_spend_alert(alice_org) is False
    assert "passed your alert threshold" not in page(alice_client)

    # past it: one email to the owner and the admin, not the member
    record_usage(alice_org, "output_tokens", 700_000, timezone.now())
    assert actions.check_spend_alert(alice_org) is True
    assert len(mail.outbox) == 1
    assert sorted(mail.outbox[0].to) == ["alice@example.com", "dana@example.com"]
    assert mail.outbox[0].subject == "Acme passed $1.00 of spend this month"
    assert "spent $1.10" in mail.outbox[0].body
    assert subscription_for(alice_org).alert_sent_for == timezone.now().strftime("%Y-%m")
    assert "This month&#x27;s spend, $1.10, passed your alert threshold of $1.00." in page(alice_client)

    # again, and through the periodic task: no second email this month
    from workers.tasks import check_spend_alerts

    assert actions.check_spend_alert(alice_org) is False
    assert check_spend_alerts() == 0
    assert len(mail.outbox) == 1

    # next month (the last alert was for an earlier month): a new email
    Subscription.objects.filter(organization=alice_org).update(alert_sent_for="2000-01")
    assert check_spend_alerts() == 1
    assert len(mail.outbox) == 2


def test_banners_say_when_the_included_credit_is_used_up(
    alice_org: Any, alice_client: Any, fake_stripe: FakeStripe
) -> None:
    credit = subscription_for(alice_org).plan.included_credit
    record_usage(alice_org, "output_tokens", credit, timezone.now())

    assert actions.billing_banners(alice_org) == [
        "You used this month's $5.00 of included credit on the Free plan: upgrade under Billing to keep going."
    ]
    assert "You used this month&#x27;s $5.00 of included credit" in page(alice_client)


def test_manage_billing_during_an_outage_is_a_503_with_a_message(
    pro_alice: dict[str, Any], alice_client: Any, fake_stripe: FakeStripe
) -> None:
    fake_stripe.fail(500)

    response = alice_client.post("/billing/portal")

    assert response.status_code == 503
    assert "Billing is temporarily unavailable" in response.content.decode()


# --- Billing off: no Stripe key on this instance ---------------------------------------------------
def test_without_stripe_the_page_says_billing_is_off_and_how_to_turn_it_on(
    alice_client: Any, alice_org: Any, settings: Any
) -> None:
    # given: no Stripe key, though the plans have prices and the organization a Stripe customer
    settings.STRIPE_SECRET_KEY = ""
    subscription = subscription_for(alice_org)
    subscription.stripe_customer_id = "cus_test"
    subscription.save(update_fields=["stripe_customer_id"])

    # when
    html = page(alice_client)

    # then
    notice = html.split('id="billing-off"')[1].split("</div>")[0]
    assert "Billing is off on this instance" in notice
    for setting in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_PRICE_PRO", "STRIPE_PRICE_TEAM"):
        assert f"<code>{setting}</code>" in notice
    assert '<a href="/docs/guides/deploying#billing-with-stripe">' in notice
    assert "Upgrade to" not in html and "Manage billing" not in html
    assert "Reported to Stripe" not in html


def test_the_billing_off_notice_links_to_a_section_that_exists(client: Any, db: None) -> None:
    response = client.get("/docs/guides/deploying")

    assert response.status_code == 200
    assert '<h2 id="billing-with-stripe">Billing with Stripe</h2>' in response.content.decode()


def test_with_stripe_the_page_offers_checkout_and_the_portal(
    pro_alice: dict[str, Any], client: Any, alice_org: Any, carol: Any, fake_stripe: FakeStripe
) -> None:
    # given a paying organization (alice's: Manage billing) and a free one (carol's: Upgrade)
    paying = page(login(client, alice_org.memberships.get(role=Role.OWNER).user))

    # when
    free = page(login(client, carol))

    # then
    assert 'action="/billing/portal"' in paying and "Manage billing" in paying
    assert 'action="/billing/checkout"' in free and "Upgrade to Pro" in free and "Upgrade to Team" in free
    assert "Billing is off" not in paying + free
