"""T26, T27, T32: the admin and roles, API key storage and lifecycle, CSRF, cookies, headers, CORS
and error pages."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path, reverse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

import saas.urls
from apps.accounts.models import ApiKey, Invitation, Membership, Role
from apps.api.base import ProjectAPIView
from apps.projects.models import File, Project
from tests.conftest import PASSWORD, login, make_user
from tests.security.test_bola import all_routes
from tests.test_deploy import production_env

pytestmark = pytest.mark.usefixtures("media")


KEY = re.compile(r"sk-mw-[A-Za-z0-9]{40}")
SECRET_MESSAGE = "secret-detail-that-must-not-leak"


# --- A URL conf with views that fail, for the 500 pages ----------------------------------------
def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(SECRET_MESSAGE)


class BoomView(ProjectAPIView):
    def get(self, request: Request) -> Response:
        raise RuntimeError(SECRET_MESSAGE)


urlpatterns = [
    path("boom", boom),
    path("v1/boom", BoomView.as_view()),
    path("v1/boom-plain", boom),
    *saas.urls.urlpatterns,
]
handler400, handler403 = saas.urls.handler400, saas.urls.handler403
handler404, handler500 = saas.urls.handler404, saas.urls.handler500


# --- Django admin (T26) ---------------------------------------------------------------------------
ADMIN_ROUTES = [
    r for r in all_routes() if r.name.startswith("admin:") and r.name not in ("admin:login", "admin:logout")
]


def test_the_admin_sends_non_staff_users_to_its_login(carol_client: Any) -> None:
    assert ADMIN_ROUTES
    for route in ADMIN_ROUTES:
        kwargs = {p: ("accounts" if p == "app_label" else "1") for p in route.params}
        response = carol_client.get(reverse(route.name, kwargs=kwargs))
        assert response.status_code in (302, 404), route.name
        if response.status_code == 302:
            assert response["Location"].startswith("/admin/login/"), route.name


def test_staff_without_permissions_cannot_open_any_changelist(db: None) -> None:
    staff = make_user("staff@example.com")
    staff.is_staff = True
    staff.save()
    client = login(Client(), staff)
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 403, url
    index = client.get("/admin/").content.decode()
    assert "Api keys" not in index and "Usage records" not in index
    for url in ("/admin/accounts/apikey/", "/admin/billing/usagerecord/"):
        assert client.get(url).status_code == 403


def test_the_admin_never_shows_a_key_digest(db: None, alice_project: Project, alice: Any) -> None:
    from apps.projects import actions

    key, _ = actions.create_api_key(alice_project, "ci", alice)
    root = make_user("root@example.com")
    root.is_staff = root.is_superuser = True
    root.save()
    client = login(Client(), root)
    for url in ("/admin/accounts/apikey/", f"/admin/accounts/apikey/{key.pk}/change/"):
        response = client.get(url)
        assert response.status_code == 200
        assert key.hashed_key not in response.content.decode()


# --- Roles (T26) ----------------------------------------------------------------------------------
def errors_of(response: Any) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request) if m.level_tag == "error"]


def test_a_member_cannot_manage_the_team_or_delete_a_project(
    alice: Any, bob: Any, alice_org: Any, alice_project: Project
) -> None:
    client = login(Client(), bob)
    owner = Membership.objects.get(organization=alice_org, user=alice)
    own = Membership.objects.get(organization=alice_org, user=bob)
    refusals = [
        ("/team/", {"email": "eve@example.com", "role": Role.MEMBER}),
        (f"/team/members/{owner.pk}/role", {"role": Role.MEMBER}),
        (f"/team/members/{own.pk}/role", {"role": Role.OWNER}),
        (f"/team/members/{owner.pk}/remove", {}),
        (f"/projects/{alice_project.public_id}/delete", {"confirm": alice_project.name}),
    ]
    for url, data in refusals:
        response = client.post(url, data)
        assert response.status_code == 302, url
        assert errors_of(response), f"{url}: no message"
    assert not Invitation.objects.exists()
    assert Membership.objects.get(pk=owner.pk).role == Role.OWNER
    assert Membership.objects.get(pk=own.pk).role == Role.MEMBER
    assert Project.objects.filter(pk=alice_project.pk).exists()


def test_an_owner_can_do_what_a_member_cannot(
    alice: Any, bob: Any, alice_org: Any, alice_client: Any
) -> None:
    """The positive control of the refusals above."""
    alice_client.post("/team/", {"email": "eve@example.com", "role": Role.MEMBER})
    assert Invitation.objects.filter(organization=alice_org, email="eve@example.com").exists()
    member = Membership.objects.get(organization=alice_org, user=bob)
    alice_client.post(f"/team/members/{member.pk}/role", {"role": Role.ADMIN})
    assert Membership.objects.get(pk=member.pk).role == Role.ADMIN


# --- CSRF (T32) -----------------------------------------------------------------------------------
def test_dashboard_forms_without_a_csrf_token_are_403(alice: Any, alice_project: Project) -> None:
    client = login(Client(enforce_csrf_checks=True), alice)
    projects = Project.objects.count()
    posts = [
        ("/projects/", {"name": "sneaky"}),
        ("/team/", {"email": "eve@example.com", "role": "member"}),
        (f"/projects/{alice_project.public_id}/api-keys/", {"name": "sneaky"}),
        (
            f"/projects/{alice_project.public_id}/files/upload",
            {"purpose": "fine-tune", "file": SimpleUploadedFile("a.csv", b"text,label\nhi,a\n")},
        ),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    assert Project.objects.count() == projects
    assert not Invitation.objects.exists() and not ApiKey.objects.exists() and not File.objects.exists()


def test_a_form_with_its_csrf_token_goes_through(alice: Any) -> None:
    client = login(Client(enforce_csrf_checks=True), alice)
    client.get("/projects/")
    token = client.cookies["csrftoken"].value
    response = client.post("/projects/", {"name": "legit", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert Project.objects.filter(name="legit").exists()


def test_api_key_requests_need_no_csrf_token_and_a_session_is_no_credential(
    alice: Any, alice_key: str
) -> None:
    with_key = APIClient(enforce_csrf_checks=True)
    with_key.credentials(HTTP_AUTHORIZATION=f"Bearer {alice_key}")
    upload = {"purpose": "fine-tune", "file": SimpleUploadedFile("a.csv", b"text,label\nhi,a\n")}
    assert with_key.post("/v1/files", upload, format="multipart").status_code == 200
    with_session = login(APIClient(enforce_csrf_checks=True), alice)
    assert with_session.post("/v1/fine_tuning/jobs", {}, format="json").status_code == 401


# --- Headers, cookies, CORS (T32) -----------------------------------------------------------------
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def test_pages_and_api_responses_carry_the_security_headers(alice_client: Any, api: Any) -> None:
    anonymous = Client()
    responses = {
        "login page": anonymous.get("/accounts/login/"),
        "dashboard": alice_client.get("/projects/"),
        "404 page": alice_client.get("/no-such-page"),
        "api": api.get("/v1/models"),
        "api 401": anonymous.get("/v1/models"),
        "api 404": api.get("/v1/files/file-nope"),
        "schema": anonymous.get("/v1/schema"),
    }
    for name, response in responses.items():
        for header, value in SECURITY_HEADERS.items():
            assert response.get(header) == value, f"{name}: {header}={response.get(header)!r}"


def production_security_settings() -> dict[str, Any]:
    """The security settings that .env.example (the production example) turns on."""
    env = production_env()
    assert env["SESSION_COOKIE_SECURE"] == "true" and env["BEHIND_TLS_PROXY"] == "true"
    return {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_SSL_REDIRECT": env["SECURE_SSL_REDIRECT"] == "true",
        "SECURE_HSTS_SECONDS": int(env["SECURE_HSTS_SECONDS"]),
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
    }


def test_production_cookies_are_secure_httponly_and_lax(alice: Any) -> None:
    with override_settings(**production_security_settings()):
        client = Client(HTTP_X_FORWARDED_PROTO="https")
        page = client.get("/accounts/login/")
        assert "max-age=31536000" in page["Strict-Transport-Security"]
        csrf = client.cookies["csrftoken"]
        assert csrf["secure"] and csrf["samesite"] == "Lax"
        response = client.post("/accounts/login/", {"login": alice.email, "password": PASSWORD})
        assert response.status_code == 302, response.content
        session = response.cookies["sessionid"]
        assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"
        # Plain HTTP, not through the TLS proxy: sent to https.
        plain = Client().get("/accounts/login/")
        assert plain.status_code == 301 and plain["Location"].startswith("https://")


def test_no_cors_headers_for_a_foreign_origin(api: Any, alice_client: Any) -> None:
    evil = {"Origin": "https://evil.example"}
    preflight = {
        **evil,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    responses = [
        api.get("/v1/models", headers=evil),
        api.options("/v1/chat/completions", headers=preflight),
        Client().options("/v1/files", headers=preflight),
        alice_client.get("/projects/", headers=evil),
        Client().get("/v1/schema", headers=evil),
    ]
    for response in responses:
        assert "Access-Control-Allow-Origin" not in response
        assert "Access-Control-Allow-Credentials" not in response


# --- Error pages (T32) ----------------------------------------------------------------------------
def assert_no_internals(text: str) -> None:
    for leak in ("Traceback", SECRET_MESSAGE, "RuntimeError", "/work/", ".py", "SECRET_KEY", "DATABASES"):
        assert leak not in text, leak


@pytest.mark.urls(__name__)
def test_error_pages_show_no_traceback(settings: Any, alice: Any, alice_key: str) -> None:
    assert settings.DEBUG is False
    client = login(Client(raise_request_exception=False), alice)
    api = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {alice_key}")
    pages = {"/no-such-page": 404, "/projects/proj_nope/": 404, "/boom": 500}
    for url, status in pages.items():
        response = client.get(url)
        assert response.status_code == status, url
        assert_no_internals(response.content.decode())
    for url, status in {"/v1/no-such-route": 404, "/v1/boom": 500, "/v1/boom-plain": 500}.items():
        response = api.get(url)
        assert response.status_code == status, url
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert_no_internals(response.content.decode())


# --- API keys (T27) -------------------------------------------------------------------------------
def create_key_in_the_dashboard(client: Any, project: Project) -> str:
    url = f"/projects/{project.public_id}/api-keys/"
    page = client.post(url, {"name": "ci"}, follow=True).content.decode()
    found = KEY.findall(page)
    assert len(found) == 1, "the new key is shown exactly once, on the page after creating it"
    return found[0]


def test_only_the_prefix_and_a_sha256_digest_are_stored(alice_client: Any, alice_project: Project) -> None:
    raw = create_key_in_the_dashboard(alice_client, alice_project)
    key = ApiKey.objects.get()
    assert key.prefix == raw[len(ApiKey.PREFIX) : len(ApiKey.PREFIX) + 8]
    assert key.hashed_key == hashlib.sha256(raw.encode()).hexdigest()
    row = json.dumps(list(ApiKey.objects.values()), default=str)
    assert raw[len(ApiKey.PREFIX) + 8 :] not in row
    # The list shows the prefix only, from now on; the session no longer holds the key either.
    page = alice_client.get(f"/projects/{alice_project.public_id}/api-keys/").content.decode()
    assert key.display_prefix in page and raw not in page
    assert "new_api_key" not in alice_client.session


def test_a_revoked_key_is_refused_on_the_very_next_request(alice_client: Any, alice_project: Project) -> None:
    raw = create_key_in_the_dashboard(alice_client, alice_project)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/v1/models").status_code == 200
    alice_client.post(f"/projects/{alice_project.public_id}/api-keys/{ApiKey.objects.get().prefix}/revoke")
    response = client.get("/v1/models")
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]


def test_a_key_outside_the_authorization_header_is_not_accepted(alice_key: str) -> None:
    client = APIClient()
    for name in ("api_key", "key", "access_token", "apikey"):
        assert client.get("/v1/models", {name: alice_key}).status_code == 401, name
        assert client.post("/v1/fine_tuning/jobs", {name: alice_key}, format="json").status_code == 401, name
    assert client.get("/v1/models", HTTP_X_API_KEY=alice_key).status_code == 401
    assert client.get("/v1/models", HTTP_API_KEY=alice_key).status_code == 401


@pytest.mark.urls(__name__)
def test_the_full_key_never_reaches_the_logs(caplog: Any, alice_client: Any, alice_project: Project) -> None:
    caplog.set_level(logging.DEBUG)
    raw = create_key_in_the_dashboard(alice_client, alice_project)
    client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.get("/v1/models")
    client.get("/v1/files/file-nope")
    client.post("/v1/fine_tuning/jobs", "{not json", content_type="application/json")
    client.get("/v1/boom")
    client.get("/v1/models", {"api_key": raw})
    Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw[:-1]}x")
    alice_client.post(f"/projects/{alice_project.public_id}/api-keys/{ApiKey.objects.get().prefix}/revoke")
    client.get("/v1/models")
    assert caplog.records, "nothing was logged: the capture is not working"
    secret = raw[len(ApiKey.PREFIX) + 8 :]
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert secret not in text, f"{record.name}: {record.getMessage()[:200]}"
