"""The API keys page: a new key is shown once, the list, revocation, outsiders."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import ApiKey


def api_client(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def create_key(client: Any, project: Any, name: str) -> tuple[Any, str]:
    """Create a key through the page; returns the page shown right after and the full key."""
    response = client.post(f"/projects/{project.public_id}/api-keys/", {"name": name}, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    match = re.search(r'<div class="secret" id="new-key-value">(sk-mw-[A-Za-z0-9]+)</div>', html)
    assert match is not None, html
    return response, match.group(1)


def test_a_new_key_is_shown_once(alice_client: Any, alice_project: Any) -> None:
    # when
    response, raw = create_key(alice_client, alice_project, "production")

    # then: shown in full on the page right after creation, and it works
    html = response.content.decode()
    assert "Your new key “production”." in html
    assert "it will not be shown again" in html
    assert api_client(raw).get("/v1/files").status_code == 200
    # ... and never again
    again = alice_client.get(f"/projects/{alice_project.public_id}/api-keys/").content.decode()
    assert raw not in again
    assert raw[len(ApiKey.PREFIX) + 8 :] not in again
    assert 'id="new-key"' not in again
    key = ApiKey.objects.get(name="production")
    assert key.project == alice_project
    assert key.hashed_key != raw and raw not in key.hashed_key


def test_a_blank_name_gets_a_default(alice_client: Any, alice_project: Any) -> None:
    create_key(alice_client, alice_project, "   ")

    assert ApiKey.objects.get().name == "Secret key"


def test_the_list_shows_name_prefix_creator_and_dates(
    alice_client: Any, alice_project: Any, bob: Any, alice_key: str
) -> None:
    from apps.projects import actions

    actions.create_api_key(alice_project, "bob's key", bob)
    used = ApiKey.objects.get(name="test")
    ApiKey.objects.filter(pk=used.pk).update(
        created_at=timezone.now() - timedelta(days=3), last_used_at=timezone.now() - timedelta(hours=2)
    )
    used.refresh_from_db()

    html = alice_client.get(f"/projects/{alice_project.public_id}/api-keys/").content.decode()

    rows = html.split("<tbody>")[1].split("</tr>")
    alice_row = next(row for row in rows if ">test<" in row)
    bob_row = next(row for row in rows if "bob&#x27;s key" in row)
    assert f"{used.display_prefix}…" in alice_row
    assert alice_key not in html
    assert "alice@example.com" in alice_row
    assert used.created_at.strftime("%Y-%m-%d %H:%M") in alice_row
    assert used.last_used_at is not None
    assert used.last_used_at.strftime("%Y-%m-%d %H:%M") in alice_row
    assert "bob@example.com" in bob_row
    assert "never" in bob_row


def test_last_used_appears_after_a_request(alice_client: Any, alice_project: Any, api: Any) -> None:
    before = alice_client.get(f"/projects/{alice_project.public_id}/api-keys/").content.decode()
    assert "<td>never</td>" in before

    api.get("/v1/files")

    after = alice_client.get(f"/projects/{alice_project.public_id}/api-keys/").content.decode()
    assert "<td>never</td>" not in after
    assert timezone.now().strftime("%Y-%m-%d") in after.split("<tbody>")[1]


def test_a_revoked_key_is_rejected_at_once(alice_client: Any, alice_project: Any) -> None:
    _, raw = create_key(alice_client, alice_project, "ci")
    client = api_client(raw)
    assert client.get("/v1/files").status_code == 200
    key = ApiKey.objects.get(name="ci")

    # when
    response = alice_client.post(
        f"/projects/{alice_project.public_id}/api-keys/{key.prefix}/revoke", follow=True
    )

    # then
    assert "Key “ci” revoked. Requests using it are now refused." in response.content.decode()
    assert '<span class="badge revoked">revoked</span>' in response.content.decode()
    refused = client.get("/v1/files")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_revoking_needs_a_post(alice_client: Any, alice_project: Any, alice_key: str) -> None:
    key = ApiKey.objects.get()

    response = alice_client.get(f"/projects/{alice_project.public_id}/api-keys/{key.prefix}/revoke")

    assert response.status_code == 405
    assert api_client(alice_key).get("/v1/files").status_code == 200


def test_keys_pages_are_404_for_outsiders(
    carol_client: Any, alice_project: Any, alice_key: str, carol_project: Any
) -> None:
    key = ApiKey.objects.get(project=alice_project)
    keys_page = f"/projects/{alice_project.public_id}/api-keys/"

    assert carol_client.get(keys_page).status_code == 404
    assert carol_client.post(keys_page, {"name": "sneaky"}).status_code == 404
    assert carol_client.post(f"{keys_page}{key.prefix}/revoke").status_code == 404
    # nor through her own project's URL
    assert (
        carol_client.post(f"/projects/{carol_project.public_id}/api-keys/{key.prefix}/revoke").status_code
        == 404
    )

    key.refresh_from_db()
    assert key.revoked_at is None
    assert not ApiKey.objects.filter(name="sneaky").exists()
    assert api_client(alice_key).get("/v1/files").status_code == 200
    assert (
        key.prefix not in carol_client.get(f"/projects/{carol_project.public_id}/api-keys/").content.decode()
    )


# --- Expiry (T27) ---------------------------------------------------------------------------------
def create_expiring_key(client: Any, project: Any, expires: str) -> tuple[Any, str]:
    response = client.post(
        f"/projects/{project.public_id}/api-keys/", {"name": "ci", "expires": expires}, follow=True
    )
    match = re.search(r'id="new-key-value">(sk-mw-[A-Za-z0-9]+)<', response.content.decode())
    assert match is not None
    return response, match.group(1)


def test_a_key_expires_after_the_days_chosen_and_the_list_shows_when(
    alice_client: Any, alice_project: Any
) -> None:
    # given
    before = timezone.now()
    _, never = create_expiring_key(alice_client, alice_project, "never")
    response, in_90 = create_expiring_key(alice_client, alice_project, "90")
    after = timezone.now()
    # then
    forever, expiring = ApiKey.objects.get(prefix=never[6:14]), ApiKey.objects.get(prefix=in_90[6:14])
    assert forever.expires_at is None
    assert expiring.expires_at is not None
    assert before + timedelta(days=90) <= expiring.expires_at <= after + timedelta(days=90)
    html = response.content.decode()
    assert f"<td>{expiring.expires_at:%Y-%m-%d %H:%M}</td>" in html
    assert html.count("<td>no expiry</td>") == 1
    assert api_client(in_90).get("/v1/files").status_code == 200


def test_an_expired_key_is_refused_with_401(alice_client: Any, alice_project: Any) -> None:
    # given: a 30-day key whose 30 days have passed
    _, raw = create_expiring_key(alice_client, alice_project, "30")
    assert api_client(raw).get("/v1/files").status_code == 200
    expired = timezone.now().replace(microsecond=0) - timedelta(seconds=1)
    ApiKey.objects.filter(prefix=raw[6:14]).update(expires_at=expired)
    # when
    response = api_client(raw).get("/v1/files")
    # then
    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": f"This API key expired on {expired:%Y-%m-%d %H:%M} UTC. Create a new key on the dashboard's "
        "API keys page.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    page = alice_client.get(f"/projects/{alice_project.public_id}/api-keys/").content.decode()
    assert '<span class="badge revoked">expired</span>' in page


def test_an_unknown_expiry_creates_no_key(alice_client: Any, alice_project: Any) -> None:
    response = alice_client.post(
        f"/projects/{alice_project.public_id}/api-keys/", {"name": "ci", "expires": "7"}, follow=True
    )
    assert "Choose when the key expires: never, in 30 days or in 90 days." in response.content.decode()
    assert not ApiKey.objects.filter(project=alice_project).exists()
