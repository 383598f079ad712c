"""The spend-alert sweep: customer text in a subject cannot break an email, and one organization's
failing alert never stops the others'."""

from __future__ import annotations

import logging
import smtplib
from typing import Any

import pytest
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend
from django.utils import timezone

from apps.accounts.models import Organization
from apps.billing import actions
from apps.billing.quotas import subscription_for
from apps.projects.onboarding import create_organization
from tests.billing.test_meters import record_usage
from tests.conftest import make_user
from workers.tasks import check_spend_alerts

REFUSED_DOMAIN = "refused.example"


class RefusingBackend(EmailBackend):
    """A mail server that refuses every recipient at REFUSED_DOMAIN, as SMTP servers do."""

    def send_messages(self, messages: Any) -> int:
        for message in messages:
            refused = {
                to: (550, b"no such user") for to in message.recipients() if to.endswith(REFUSED_DOMAIN)
            }
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)  # type: ignore[arg-type]
        return int(super().send_messages(messages))


def past_its_threshold(name: str, owner_email: str) -> Organization:
    owner = make_user(owner_email)
    organization = create_organization(owner, name)
    actions.set_spend_limits(organization, owner, None, 1_000_000)
    record_usage(organization, "output_tokens", 1_500_000, timezone.now())
    return organization


@pytest.mark.django_db
def test_a_line_break_in_an_organizations_name_breaks_no_alert() -> None:
    # given two organizations past their thresholds, the first named with a header in its name
    past_its_threshold("Acme\nBcc: attacker@evil.example", "owner@acme.example")
    past_its_threshold("Zeta", "owner@zeta.example")

    # when the periodic sweep runs
    assert check_spend_alerts() == 2

    # then both got their alert, each subject one line and no one else a copy
    subjects = sorted(message.subject for message in mail.outbox)
    assert subjects == [
        "Acme Bcc: attacker@evil.example passed $1.00 of spend this month",
        "Zeta passed $1.00 of spend this month",
    ]
    for message in mail.outbox:
        assert message.recipients() in (["owner@acme.example"], ["owner@zeta.example"])
        headers = message.message().as_string().split("\n\n", 1)[0]
        assert "\nBcc:" not in headers


@pytest.mark.django_db
def test_one_organizations_failing_alert_never_stops_the_others(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.EMAIL_BACKEND = f"{__name__}.RefusingBackend"
    refused = past_its_threshold("Acme", f"owner@{REFUSED_DOMAIN}")
    served = past_its_threshold("Zeta", "owner@zeta.example")

    with caplog.at_level(logging.ERROR, logger="apps.billing.actions"):
        assert check_spend_alerts() == 1

    assert [message.to for message in mail.outbox] == [["owner@zeta.example"]]
    assert f"spend alert for organization {refused.public_id} failed" in caplog.text
    assert "SMTPRecipientsRefused" in caplog.text
    # the failed one is tried again at the next sweep; the served one is not sent twice
    month = timezone.now().strftime("%Y-%m")
    assert subscription_for(refused).alert_sent_for != month
    assert subscription_for(served).alert_sent_for == month
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert check_spend_alerts() == 1
    assert sorted(message.to[0] for message in mail.outbox) == [
        f"owner@{REFUSED_DOMAIN}",
        "owner@zeta.example",
    ]
