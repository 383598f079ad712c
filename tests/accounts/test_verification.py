"""The verify-email page and the emails around it: the email can be sent again (within allauth's
limit), the page links back and names a contact, the link logs the browser that signed up in, and
every email carries the product's name from settings, never the host of a request."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.sites.models import Site
from django.core import mail
from django.core.management import call_command
from django.test import Client

from apps.dashboard.views.arriving import ALREADY_CONFIRMED, NO_SIGNUP_WAITING, RESEND_TOO_SOON

PASSWORD = "a-long-password-1"
CONFIRM = re.compile(r"http://[^/\s]+(/accounts/confirm-email/[^/\s]+/)")


def sign_up(client: Client, email: str = "dora@example.com") -> Any:
    return client.post("/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": PASSWORD})


def confirm_path(to: str) -> str:
    for message in reversed(mail.outbox):
        if to in message.to and (found := CONFIRM.search(message.body)):
            return found.group(1)
    raise AssertionError(f"no confirmation email to {to}")


def test_the_verification_page_offers_resend_links_back_and_a_contact(client: Client, db: None) -> None:
    response = sign_up(client)
    assert response["Location"] == "/accounts/confirm-email/"

    page = client.get("/accounts/confirm-email/").content.decode()

    assert '<h2 class="card-title">Verify your email address</h2>' in page
    assert "We sent an email to <strong>dora@example.com</strong> with a link." in page
    assert '<form method="post" action="/verify-email/resend" class="form-actions">' in page
    assert '<button type="submit" class="secondary">Send the email again</button>' in page
    assert '<a href="/accounts/login/">Back to log in</a> · <a href="/">Modelworks home</a>' in page
    assert 'Write to <a href="mailto:support@modelworks.localhost">support@modelworks.localhost</a>.' in page
    assert '<h1><a class="brand-link" href="/">Modelworks</a></h1>' in page


def test_the_contact_comes_from_the_support_email_setting(client: Client, db: None, settings: Any) -> None:
    settings.SUPPORT_EMAIL = "help@example.com"
    sign_up(client)

    page = client.get("/accounts/confirm-email/").content.decode()

    assert '<a href="mailto:help@example.com">help@example.com</a>' in page


def test_resend_sends_the_verification_email_again(client: Client, db: None) -> None:
    sign_up(client)
    assert len(mail.outbox) == 1

    response = client.post("/verify-email/resend", follow=True)

    assert response.redirect_chain == [("/accounts/confirm-email/", 302)]
    assert len(mail.outbox) == 2
    assert mail.outbox[1].to == ["dora@example.com"]
    assert CONFIRM.search(mail.outbox[1].body)
    assert "Confirmation email sent to dora@example.com." in response.content.decode()
    # the new link works
    assert client.post(confirm_path("dora@example.com")).status_code == 302
    assert client.get("/projects/").status_code == 200


def test_resend_is_limited_as_allauth_limits_verification_emails(
    client: Client, db: None, settings: Any
) -> None:
    # given: allauth's own limits (the test settings turn them off): one email an address per 3 minutes
    settings.ACCOUNT_RATE_LIMITS = {}
    sign_up(client)
    assert len(mail.outbox) == 1

    response = client.post("/verify-email/resend", follow=True)

    assert len(mail.outbox) == 1
    page = response.content.decode()
    assert RESEND_TOO_SOON.format(email="dora@example.com", minutes=3) in page.replace("&#x27;", "'")
    assert (
        "An email was sent to dora@example.com less than 3 minutes ago, and its link still works. Check your "
        "spam folder; you can ask for another 3 minutes after the last one."
    ) in page


def test_resend_without_a_sign_up_waiting_points_to_the_login(client: Client, db: None) -> None:
    response = client.post("/verify-email/resend", follow=True)

    assert response.redirect_chain == [("/accounts/login/", 302)]
    assert NO_SIGNUP_WAITING in response.content.decode()
    assert mail.outbox == []


def test_resend_needs_a_post(client: Client, db: None) -> None:
    sign_up(client)
    assert client.get("/verify-email/resend").status_code == 405
    assert len(mail.outbox) == 1


def test_resend_after_the_address_was_confirmed_elsewhere_says_to_log_in(client: Client, db: None) -> None:
    sign_up(client)
    Client().post(confirm_path("dora@example.com"))  # on the phone, say

    response = client.post("/verify-email/resend", follow=True)

    assert response.redirect_chain == [("/accounts/login/", 302)]
    assert ALREADY_CONFIRMED.format(email="dora@example.com") in response.content.decode()
    assert len(mail.outbox) == 1


def test_resend_for_an_address_with_an_account_answers_as_for_a_new_one(client: Client, alice: Any) -> None:
    # given: someone signs up with alice's address; allauth answers as for a new address
    response = sign_up(client, "alice@example.com")
    assert response["Location"] == "/accounts/confirm-email/"
    page = client.get("/accounts/confirm-email/").content.decode()
    assert "We sent an email to <strong>alice@example.com</strong> with a link." in page

    response = client.post("/verify-email/resend", follow=True)

    # then: the same answer; alice gets allauth's "account already exists" email, not a link
    assert response.redirect_chain == [("/accounts/confirm-email/", 302)]
    assert "Confirmation email sent to alice@example.com." in response.content.decode()
    assert [m.subject for m in mail.outbox] == ["[Modelworks] Account Already Exists"] * 2


def test_confirming_the_email_logs_the_browser_that_signed_up_in(client: Client, db: None) -> None:
    sign_up(client)
    assert client.get("/projects/").status_code == 302  # not yet

    response = client.post(confirm_path("dora@example.com"), follow=True)

    assert response.redirect_chain[-1] == ("/projects/", 302)
    page = response.content.decode()
    assert "You have confirmed dora@example.com." in page
    assert "dora@example.com ·" in page  # the top bar of a signed-in page
    assert client.get("/projects/").status_code == 200


def test_confirming_in_another_browser_confirms_but_does_not_log_it_in(client: Client, db: None) -> None:
    sign_up(client)
    other = Client()

    response = other.post(confirm_path("dora@example.com"), follow=True)

    assert response.redirect_chain[-1][0].startswith("/accounts/login/")
    assert "You have confirmed dora@example.com." in response.content.decode()
    assert other.get("/projects/").status_code == 302


def test_the_verification_email_carries_the_product_name(client: Client, db: None) -> None:
    sign_up(client)

    message = mail.outbox[0]

    assert message.subject == "[Modelworks] Confirm your email address"
    assert message.body.startswith(
        "Hello from Modelworks!\n\nSomeone, most likely you, signed up for Modelworks"
    )
    assert "Modelworks · 127.0.0.1:8000\nQuestions? Write to support@modelworks.localhost." in message.body
    assert "testserver" not in message.body.replace("http://testserver/accounts/confirm-email/", "")
    assert message.from_email == "Modelworks <noreply@modelworks.localhost>"


def test_the_site_name_and_domain_follow_the_settings_at_each_migrate(
    client: Client, db: None, settings: Any
) -> None:
    # given: a deployment with its own name and address
    settings.SITE_NAME = "Acme Models"
    settings.SITE_URL = "https://models.example.com"

    # when: `migrate` runs, as `make run` and the test database's setup do
    call_command("migrate", verbosity=0)

    # then: the Sites framework's site, and so allauth's emails, carry them
    site = Site.objects.get(pk=settings.SITE_ID)
    assert (site.name, site.domain) == ("Acme Models", "models.example.com")
    client.post("/accounts/password/reset/", {"email": "nobody@example.com"})
    sign_up(client)
    subjects = [message.subject for message in mail.outbox]
    assert "[Acme Models] Confirm your email address" in subjects
    body = mail.outbox[-1].body
    assert "signed up for Acme Models" in body and "Acme Models · models.example.com" in body


def test_confirming_the_email_lands_where_the_sign_up_started(client: Client, alice: Any) -> None:
    # given: an invited teammate signs up from the invitation's page
    client.post(
        "/accounts/signup/?next=/team/",
        {"email": "dora@example.com", "password1": PASSWORD, "password2": PASSWORD, "next": "/team/"},
    )

    response = client.post(confirm_path("dora@example.com"))

    assert response.status_code == 302
    assert response["Location"] == "/team/"
