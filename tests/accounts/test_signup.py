from __future__ import annotations

import re
from typing import Any

from django.core import mail

from apps.accounts.models import Membership, Role, User


def test_signup_verifies_email_then_creates_an_organization_and_project(client: Any, db: None) -> None:
    # given a visitor who signs up
    response = client.post(
        "/accounts/signup/",
        {"email": "dora@example.com", "password1": "a-long-password-1", "password2": "a-long-password-1"},
    )
    assert response.status_code == 302
    # then an organization they own, with a default project, exists
    user = User.objects.get(email="dora@example.com")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    assert list(membership.organization.projects.values_list("name", flat=True)) == ["Default project"]
    # and a verification email was sent; following its link verifies the address
    assert len(mail.outbox) == 1
    link = re.search(r"http://\S+/accounts/confirm-email/\S+/", mail.outbox[0].body)
    assert link, mail.outbox[0].body
    path = link.group(0).split("://", 1)[1].split("/", 1)[1]
    assert client.post("/" + path).status_code == 302
    assert user.emailaddress_set.get().verified


def test_login_is_refused_until_the_email_is_verified(client: Any, db: None) -> None:
    client.post(
        "/accounts/signup/",
        {"email": "eve@example.com", "password1": "a-long-password-1", "password2": "a-long-password-1"},
    )
    client.logout()
    response = client.post("/accounts/login/", {"login": "eve@example.com", "password": "a-long-password-1"})
    assert response.status_code == 302
    assert "confirm-email" in response["Location"]
    assert client.get("/projects/").status_code == 302


def test_login_and_logout(client: Any, alice: Any) -> None:
    from tests.conftest import PASSWORD

    response = client.post("/accounts/login/", {"login": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/projects/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/projects/").status_code == 302


def test_password_reset_sends_a_link(client: Any, alice: Any) -> None:
    response = client.post("/accounts/password/reset/", {"email": "alice@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    assert "/accounts/password/reset/key/" in mail.outbox[0].body


def test_pages_require_login(client: Any, db: None) -> None:
    for path in ("/projects/", "/team/", "/usage/", "/billing/", "/organization/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/accounts/login/"), path
