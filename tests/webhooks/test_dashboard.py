"""The Webhooks pages: create with the secret shown once, the delivery log with resend and a test
event, roles, and another organization's 404."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from apps.webhooks import actions
from apps.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from tests.conftest import login
from tests.webhooks.receiver import Receiver, Reply


def pages(project: Any, hook: WebhookEndpoint) -> list[str]:
    base = f"/projects/{project.public_id}/webhooks/"
    return [base, f"{base}{hook.public_id}/"]


def posts(project: Any, hook: WebhookEndpoint, delivery_pk: int = 1) -> list[tuple[str, dict[str, Any]]]:
    base = f"/projects/{project.public_id}/webhooks/{hook.public_id}/"
    return [
        (f"{base}update", {"name": "x", "url": "https://x.example.com", "event_types": ["batch.failed"]}),
        (f"{base}update", {"enabled": "false"}),
        (f"{base}rotate", {"keep_old": "on"}),
        (f"{base}test", {"event_type": "batch.failed"}),
        (f"{base}deliveries/{delivery_pk}/resend", {}),
        (f"{base}delete", {}),
    ]


def test_an_owner_adds_an_endpoint_and_sees_its_secret_once(alice_client: Any, alice_project: Any) -> None:
    url = f"/projects/{alice_project.public_id}/webhooks/"
    assert "No endpoints yet." in alice_client.get(url).content.decode()
    response = alice_client.post(
        url,
        {
            "name": "ci",
            "url": "https://ci.example.com/hook",
            "event_types": ["batch.completed", "file.failed"],
        },
    )
    hook = WebhookEndpoint.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/webhooks/{hook.public_id}/")
    first = alice_client.get(response["Location"]).content.decode()
    assert 'id="new-secret-value"' in first and "whsec_" in first
    assert hook.event_types == ["batch.completed", "file.failed"]
    again = alice_client.get(response["Location"]).content.decode()
    assert 'id="new-secret-value"' not in again and hook.secret_hint in again


def test_a_bad_form_keeps_what_was_typed_and_says_why(
    alice_client: Any, alice_project: Any, settings: Any
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    url = f"/projects/{alice_project.public_id}/webhooks/"
    page = alice_client.post(
        url, {"name": "ci", "url": "http://ci.example.com/hook", "event_types": ["batch.failed"]}
    )
    text = page.content.decode()
    assert page.status_code == 200 and not WebhookEndpoint.objects.exists()
    assert (
        "url must be an HTTPS URL, such as https://example.com/webhooks; got &#x27;http://ci.example.com/hook&#x27;."
        in text
    )
    assert 'value="http://ci.example.com/hook"' in text
    page = alice_client.post(url, {"name": "ci", "url": "https://ci.example.com/hook"})
    assert "event_types must be a non-empty list of event type names." in page.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_log_shows_each_attempt_and_resend_sends_the_same_event(
    alice_client: Any, alice: Any, alice_project: Any, celery_worker: Any
) -> None:
    from tests.conftest import wait_for

    with Receiver() as receiver:
        receiver.replies.append(Reply(500))
        hook, _ = actions.create_endpoint(
            alice_project, alice, name="ci", url=receiver.url, event_types=["batch.failed"]
        )
        with transaction.atomic():
            event = actions.emit(alice_project.pk, "batch.failed", "batch_1")
        assert event is not None
        delivery = WebhookDelivery.objects.get()

        def delivered() -> bool:
            actions.send_due()
            return WebhookDelivery.objects.get().status == DeliveryStatus.DELIVERED

        wait_for(delivered, timeout=30)
        page = alice_client.get(
            f"/projects/{alice_project.public_id}/webhooks/{hook.public_id}/"
        ).content.decode()
        assert event.public_id in page and "answered 500" in page and ">delivered<" in page
        resend = (
            f"/projects/{alice_project.public_id}/webhooks/{hook.public_id}/deliveries/{delivery.pk}/resend"
        )
        assert alice_client.post(resend).status_code == 302
        wait_for(lambda: len(receiver.received) == 3, timeout=30)
        assert {r.headers["webhook-id"] for r in receiver.received} == {event.public_id}
        test = f"/projects/{alice_project.public_id}/webhooks/{hook.public_id}/test"
        done = alice_client.post(test, {"event_type": "file.processed"}, follow=True).content.decode()
        assert "Test file.processed event delivered: 200 in" in done and len(receiver.received) == 4


def test_an_owner_switches_off_rotates_and_deletes(alice_client: Any, alice: Any, alice_project: Any) -> None:
    hook, secret = actions.create_endpoint(
        alice_project, alice, name="ci", url="https://a.example.com", event_types=["batch.failed"]
    )
    base = f"/projects/{alice_project.public_id}/webhooks/{hook.public_id}/"
    page = alice_client.post(f"{base}update", {"enabled": "false"}, follow=True).content.decode()
    assert (
        "Endpoint switched off: nothing is sent to it." in page and not WebhookEndpoint.objects.get().enabled
    )
    page = alice_client.post(f"{base}rotate", {"keep_old": "on"}, follow=True).content.decode()
    hook.refresh_from_db()
    assert (
        'id="new-secret-value"' in page and hook.secret_hint in page and secret[-4:] not in hook.secret_hint
    )
    assert "the previous one also signs until" in page
    page = alice_client.post(f"{base}delete", follow=True).content.decode()
    assert "Endpoint “ci” deleted." in page and not WebhookEndpoint.objects.exists()


def test_a_member_sees_endpoints_but_cannot_change_them(
    client: Any, bob: Any, alice: Any, alice_project: Any
) -> None:
    hook, _ = actions.create_endpoint(
        alice_project, alice, name="ci", url="https://a.example.com", event_types=["batch.failed"]
    )
    with transaction.atomic():
        actions.emit(alice_project.pk, "batch.failed", "batch_1")
    delivery = WebhookDelivery.objects.get()
    login(client, bob)
    for url in pages(alice_project, hook):
        text = client.get(url).content.decode()
        assert "Owners and admins add and change endpoints." in text or "Delete endpoint" not in text
    for url, data in posts(alice_project, hook, delivery.pk):
        page = client.post(url, data, follow=True).content.decode()
        assert "Only owners and admins can manage webhook endpoints." in page, url
    hook.refresh_from_db()
    assert (hook.name, hook.enabled) == ("ci", True)


def test_another_organization_gets_404_on_every_page(
    carol_client: Any, alice: Any, alice_project: Any
) -> None:
    hook, _ = actions.create_endpoint(
        alice_project, alice, name="ci", url="https://a.example.com", event_types=["batch.failed"]
    )
    with transaction.atomic():
        actions.emit(alice_project.pk, "batch.failed", "batch_1")
    delivery = WebhookDelivery.objects.get()
    for url in pages(alice_project, hook):
        assert carol_client.get(url).status_code == 404, url
    for url, data in posts(alice_project, hook, delivery.pk):
        assert carol_client.post(url, data).status_code == 404, url
    assert WebhookEndpoint.objects.get().name == "ci"
