"""`Authorization: Bearer sk-mw-…` on /v1/: every refusal is a 401 `invalid_api_key` in OpenAI's shape."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts import actions
from apps.accounts.models import ApiKey, Membership
from apps.core import hotcache
from apps.projects.actions import create_api_key, revoke_api_key

MISSING = "You didn't provide an API key. Send it in the Authorization header as 'Bearer sk-…'."
INVALID = "Incorrect API key provided. You can find your API keys on the dashboard's API keys page."
REVOKED = "This API key has been revoked. Create a new key on the dashboard's API keys page."
DEACTIVATED = (
    "The account that created this API key is deactivated, so the key no longer works. "
    "Ask an owner or admin of your organization for a key of an active account."
)


def client_with(authorization: str | None) -> APIClient:
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    return client


def assert_401(response: Any, message: str) -> None:
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response["x-request-id"].startswith("req_")


def test_a_missing_header_is_401(db: None) -> None:
    assert_401(client_with(None).get("/v1/files"), MISSING)


def test_a_malformed_header_is_401(alice_key: str) -> None:
    for header in (
        f"Basic {alice_key}",
        "Bearer",
        f"Bearer {alice_key} extra",
        alice_key,
        f"Token {alice_key}",
    ):
        assert_401(client_with(header).get("/v1/files"), MISSING)


def test_an_unknown_key_is_401(alice_key: str) -> None:
    same_prefix = alice_key[:-4] + ("aaaa" if not alice_key.endswith("aaaa") else "bbbb")
    for key in ("sk-mw-" + "x" * 40, same_prefix, alice_key[:-1], alice_key + "0", "sk-" + alice_key[6:]):
        assert_401(client_with(f"Bearer {key}").get("/v1/files"), INVALID)


def test_the_scheme_is_case_insensitive(alice_key: str) -> None:
    assert client_with(f"bearer {alice_key}").get("/v1/files").status_code == 200


def test_a_revoked_key_is_refused_on_the_next_request(api: Any, alice: Any, alice_key: str) -> None:
    assert api.get("/v1/files").status_code == 200

    revoke_api_key(alice, ApiKey.objects.select_related("project__organization").get())

    assert_401(api.get("/v1/files"), REVOKED)
    assert_401(api.post("/v1/files", {"purpose": "fine-tune"}, format="multipart"), REVOKED)


def test_a_key_stops_working_when_its_creator_leaves_the_organization(
    alice: Any, bob: Any, alice_project: Any
) -> None:
    _, raw = create_api_key(alice_project, "bob's key", bob)
    client = client_with(f"Bearer {raw}")
    assert client.get("/v1/files").status_code == 200

    actions.remove_member(alice, Membership.objects.get(user=bob))

    assert_401(client.get("/v1/files"), REVOKED)


def test_a_key_stops_working_when_its_creator_is_deleted(alice: Any, bob: Any, alice_project: Any) -> None:
    _, raw = create_api_key(alice_project, "bob's key", bob)

    bob.delete()

    assert_401(client_with(f"Bearer {raw}").get("/v1/files"), REVOKED)


def test_a_deactivated_users_keys_and_session_stop_working(
    client: Any, alice: Any, bob: Any, alice_project: Any
) -> None:
    # given: bob has a key in use and an open dashboard session
    _, raw = create_api_key(alice_project, "bob's key", bob)
    api = client_with(f"Bearer {raw}")
    assert api.get("/v1/files").status_code == 200
    client.force_login(bob)
    assert client.get("/projects/").status_code == 200
    # when staff deactivate his account
    bob.is_active = False
    bob.save(update_fields=["is_active"])
    # then
    assert_401(api.get("/v1/files"), DEACTIVATED)
    assert_401(api.post("/v1/files", {"purpose": "fine-tune"}, format="multipart"), DEACTIVATED)
    response = client.get("/projects/")
    assert (response.status_code, response["Location"]) == (302, "/accounts/login/?next=/projects/")


def test_last_used_at_is_written_at_most_once_a_minute(api: Any) -> None:
    key = ApiKey.objects.get()
    assert key.last_used_at is None

    # when: the first request
    api.get("/v1/files")

    # then
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    assert timezone.now() - first < timedelta(seconds=5)

    # when: requests within the minute
    with CaptureQueriesContext(connection) as queries:
        api.get("/v1/files")
        api.get("/v1/files")

    # then: no write at all
    assert not [q for q in queries if q["sql"].startswith("UPDATE") and "accounts_apikey" in q["sql"]]
    key.refresh_from_db()
    assert key.last_used_at == first

    # when: the last use was over a minute ago
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=first - timedelta(seconds=61))
    hotcache.invalidate()  # an update() sends no signal: the request path's copy of the key is dropped
    api.get("/v1/files")

    # then
    key.refresh_from_db()
    assert key.last_used_at > first


def test_the_database_holds_only_the_prefix_and_a_sha256_digest(alice_key: str) -> None:
    key = ApiKey.objects.get()
    secret = alice_key[len(ApiKey.PREFIX) :]

    assert alice_key.startswith("sk-mw-")
    assert len(secret) == 40
    assert key.prefix == secret[:8]
    assert key.hashed_key == hashlib.sha256(alice_key.encode()).hexdigest()
    assert len(key.hashed_key) == 64
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(k)::text FROM accounts_apikey k")
        rows = [row[0] for row in cursor.fetchall()]
    assert len(rows) == 1
    assert secret not in rows[0]
    assert secret[8:] not in rows[0]
    assert alice_key not in rows[0]


def test_a_key_only_opens_its_own_project(api: Any, carol_api: Any, alice_project: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    created = carol_api.post(
        "/v1/files",
        {"file": SimpleUploadedFile("a.csv", b"text,label\n"), "purpose": "fine-tune"},
        format="multipart",
    ).json()

    assert api.get(f"/v1/files/{created['id']}").status_code == 404
    assert api.get("/v1/files").json()["data"] == []
