"""`/v1/webhook_endpoints`: the SDK's `client.webhooks`, every refusal with its message, roles and
tenants."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from rest_framework.test import APIClient

from apps.core.crypto import decrypt
from apps.projects import actions as project_actions
from apps.webhooks.models import EVENT_TYPES, WebhookEndpoint

HOOK = "https://hooks.example.com/modelworks"


def sdk(live_server: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=live_server.url + "/v1", api_key=key, max_retries=0, _strict_response_validation=True
    )


def create(api: APIClient, **overrides: Any) -> Any:
    body = {"name": "deploys", "url": HOOK, "event_types": ["fine_tuning.job.succeeded"], **overrides}
    return api.post("/v1/webhook_endpoints", body, format="json")


def error(response: Any) -> tuple[int, str, str | None]:
    body = response.json()["error"]
    return response.status_code, body["message"], body["param"]


@pytest.fixture
def bob_api(bob: Any, alice_project: Any) -> APIClient:
    _, raw = project_actions.create_api_key(alice_project, "bob's", bob)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_the_sdk_manages_endpoints(live_server: Any, alice_key: str, settings: Any) -> None:
    client = sdk(live_server, alice_key)
    made = client.webhooks.create(
        name="deploys", url=HOOK, event_types=["fine_tuning.job.succeeded", "batch.completed"]
    )
    assert made.signing_secret.startswith("whsec_") and made.object == "webhook_endpoint"
    assert made.signing_secret_hint == "whsec_…" + made.signing_secret[-4:]
    stored = WebhookEndpoint.objects.get(public_id=made.id)
    assert decrypt(stored.secret) == made.signing_secret and made.signing_secret not in stored.secret

    fetched = client.webhooks.retrieve(made.id)
    assert not hasattr(fetched, "signing_secret") or getattr(fetched, "signing_secret", None) is None
    assert fetched.event_types == ["fine_tuning.job.succeeded", "batch.completed"]
    assert [e.id for e in client.webhooks.list()] == [made.id]

    updated = client.webhooks.update(made.id, name="releases", event_types=["batch.failed"])
    assert (updated.name, updated.event_types, updated.url) == ("releases", ["batch.failed"], HOOK)
    assert updated.updated_at is not None and updated.updated_at >= made.created_at

    rotated = client.webhooks.rotate_secret(made.id, keep_old_secret_active_for_24_hours=True)
    assert rotated.signing_secret != made.signing_secret
    stored.refresh_from_db()
    assert decrypt(stored.previous_secret) == made.signing_secret and stored.previous_secret_expires_at

    assert client.webhooks.event_types.list().data == list(EVENT_TYPES)
    deleted = client.webhooks.delete(made.id)
    assert deleted.deleted and deleted.object == "webhook_endpoint.deleted"
    assert not WebhookEndpoint.objects.exists()


def test_rotating_without_overlap_drops_the_old_secret(api: APIClient) -> None:
    made = create(api).json()
    rotated = api.post(f"/v1/webhook_endpoints/{made['id']}/rotate_secret", {}, format="json").json()
    stored = WebhookEndpoint.objects.get(public_id=made["id"])
    assert rotated["signing_secret"] != made["signing_secret"]
    assert stored.previous_secret == "" and stored.previous_secret_expires_at is None


def test_an_unchanged_update_keeps_updated_at(api: APIClient) -> None:
    made = create(api).json()
    WebhookEndpoint.objects.filter(public_id=made["id"]).update(updated_at="2026-01-01T00:00:00Z")
    same = api.post(f"/v1/webhook_endpoints/{made['id']}", {"name": "deploys"}, format="json").json()
    assert same["updated_at"] == 1767225600


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"url": ""}, "url must be a non-empty string.", "url"),
        ({"url": 7}, "url must be a non-empty string.", "url"),
        (
            {"url": "ftp://example.com/x"},
            "url must be an HTTPS URL, such as https://example.com/webhooks; got 'ftp://example.com/x'.",
            "url",
        ),
        ({"url": "https://" + "a" * 2048 + ".com"}, "url must be at most 2048 characters.", "url"),
        ({"url": "https://user:pw@example.com/x"}, "url must not contain a user name or password.", "url"),
        (
            {"url": "https://example.com:99999/x"},
            "url is not a valid URL: 'https://example.com:99999/x'.",
            "url",
        ),
        ({"name": " "}, "name must be a non-empty string.", "name"),
        ({"name": "n" * 201}, "name must be at most 200 characters.", "name"),
        ({"event_types": []}, "event_types must be a non-empty list of event type names.", "event_types"),
        (
            {"event_types": "batch.failed"},
            "event_types must be a non-empty list of event type names.",
            "event_types",
        ),
        (
            {"event_types": ["response.completed"]},
            "Unknown event type 'response.completed'. The event types are: " + ", ".join(EVENT_TYPES) + ".",
            "event_types",
        ),
        ({"secret": "x"}, "Unrecognized request argument supplied: secret", "secret"),
    ],
)
def test_a_bad_endpoint_is_refused_with_its_reason(
    api: APIClient, body: dict[str, Any], message: str, param: str
) -> None:
    response = create(api, **body)
    assert error(response) == (400, message, param)
    assert not WebhookEndpoint.objects.exists()


def test_a_body_that_is_not_an_object_is_refused(api: APIClient) -> None:
    response = api.post("/v1/webhook_endpoints", ["x"], format="json")
    assert error(response) == (400, "The request body must be a JSON object.", None)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "https://localhost/x",
        "https://127.0.0.1/x",
        "https://10.0.0.8/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://[::ffff:192.168.1.1]/x",
    ],
)
def test_in_production_only_public_https_urls_are_accepted(api: APIClient, settings: Any, url: str) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    status, message, param = error(create(api, url=url))
    assert (status, param) == (400, "url")
    if url.startswith("http:"):
        assert message == f"url must be an HTTPS URL, such as https://example.com/webhooks; got '{url}'."
    else:
        assert message == "url must be a public address, not one on a private network."


def test_update_validates_like_create(api: APIClient) -> None:
    made = create(api).json()
    path = f"/v1/webhook_endpoints/{made['id']}"
    assert error(api.post(path, {"enabled": "yes"}, format="json")) == (
        400,
        "enabled must be true or false.",
        "enabled",
    )
    assert error(api.post(path, {"url": "ftp://x"}, format="json"))[2] == "url"
    rotate = f"{path}/rotate_secret"
    assert error(api.post(rotate, {"keep_old_secret_active_for_24_hours": "yes"}, format="json")) == (
        400,
        "keep_old_secret_active_for_24_hours must be true or false.",
        "keep_old_secret_active_for_24_hours",
    )
    test = f"{path}/test"
    assert error(api.post(test, {"event_type": "response.completed"}, format="json")) == (
        400,
        "event_type must be one of: " + ", ".join(EVENT_TYPES) + ".",
        "event_type",
    )
    assert WebhookEndpoint.objects.get(public_id=made["id"]).url == HOOK


def test_a_project_holds_at_most_twenty_endpoints(api: APIClient) -> None:
    for n in range(20):
        assert create(api, name=f"e{n}").status_code == 200
    assert error(create(api)) == (400, "A project can have at most 20 webhook endpoints.", None)


def test_members_read_endpoints_but_only_owners_and_admins_change_them(
    api: APIClient, bob_api: APIClient
) -> None:
    made = create(api).json()
    path = f"/v1/webhook_endpoints/{made['id']}"
    assert bob_api.get(path).status_code == 200
    assert bob_api.get("/v1/webhook_endpoints").json()["data"][0]["id"] == made["id"]
    refused = (403, "Only owners and admins can manage webhook endpoints.", None)
    assert error(create(bob_api)) == refused
    assert error(bob_api.post(path, {"name": "mine"}, format="json")) == refused
    assert error(bob_api.delete(path)) == refused
    assert error(bob_api.post(f"{path}/rotate_secret", {}, format="json")) == refused
    assert error(bob_api.post(f"{path}/test", {"event_type": "batch.failed"}, format="json")) == refused
    assert WebhookEndpoint.objects.get(public_id=made["id"]).name == "deploys"


def test_another_organization_gets_404_for_every_operation(api: APIClient, carol_api: APIClient) -> None:
    made = create(api).json()
    path = f"/v1/webhook_endpoints/{made['id']}"
    missing = (404, f"No such webhook endpoint: '{made['id']}'.", "id")
    assert error(carol_api.get(path)) == missing
    assert error(carol_api.post(path, {"name": "taken"}, format="json")) == missing
    assert error(carol_api.delete(path)) == missing
    assert error(carol_api.post(f"{path}/rotate_secret", {}, format="json")) == missing
    assert error(carol_api.post(f"{path}/test", {"event_type": "batch.failed"}, format="json")) == missing
    assert carol_api.get("/v1/webhook_endpoints").json()["data"] == []
    assert WebhookEndpoint.objects.get(public_id=made["id"]).name == "deploys"


def test_every_event_type_has_a_sample_object_for_test_events() -> None:
    """A test event names a made-up object of the event's kind: each kind has its id prefix."""
    from apps.webhooks.actions import SAMPLE_IDS

    assert {event_type.split(".", 1)[0] for event_type in EVENT_TYPES} <= set(SAMPLE_IDS)
