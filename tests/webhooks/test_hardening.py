"""What a hostile or broken receiver, or a hurried customer, must not achieve: memory or threads
held past the timeout, a 500, a delivery that goes round unrecorded, a secret replayed."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from apps.projects import actions as project_actions
from apps.webhooks import actions
from apps.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.webhooks.receiver import Receiver, Reply


class RawServer:
    """Answers every connection with `answer(conn)`: for replies no HTTP library would send."""

    def __init__(self, answer: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.answer = answer
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hooks"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            self.requests.append(conn.recv(65536))
            with contextlib.suppress(OSError):
                self.answer(conn)

    def close(self) -> None:
        self.sock.close()


def hook_for(project: Any, alice: Any, url: str) -> tuple[WebhookEndpoint, WebhookDelivery]:
    endpoint, _ = actions.create_endpoint(project, alice, name="h", url=url, event_types=["batch.failed"])
    with transaction.atomic():
        event = actions.emit(project.pk, "batch.failed", "batch_1")
    return endpoint, WebhookDelivery.objects.get(event=event, endpoint=endpoint)


def test_only_the_start_of_an_answer_is_read_and_never_inflated(alice: Any, alice_project: Any) -> None:
    def huge(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 50000000\r\n\r\n")
        for _ in range(200):
            conn.sendall(b"\x1f\x8b" + b"x" * 250_000)

    server = RawServer(huge)
    try:
        endpoint, delivery = hook_for(alice_project, alice, server.url)
        outcome = actions.post(endpoint, delivery.event)
    finally:
        server.close()
    assert outcome.ok and len(outcome.excerpt) <= 1000
    assert b"accept-encoding: identity" in server.requests[0].lower()


def test_an_answer_that_trickles_in_past_the_deadline_fails(
    alice: Any, alice_project: Any, settings: Any
) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5

    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        for _ in range(100):
            conn.sendall(b"x")
            time.sleep(0.1)

    server = RawServer(trickle)
    try:
        endpoint, delivery = hook_for(alice_project, alice, server.url)
        started = time.monotonic()
        outcome = actions.post(endpoint, delivery.event)
        took = time.monotonic() - started
    finally:
        server.close()
    assert (
        not outcome.ok
        and outcome.error.startswith("answered after ")
        and outcome.error.endswith(", past the 0.5 s limit")
    )
    assert took < 5  # it stopped reading at the deadline instead of waiting out the 10 s trickle


def test_a_nul_in_the_answer_is_logged_escaped(alice: Any, alice_project: Any) -> None:
    server = RawServer(lambda conn: conn.sendall(b"HTTP/1.1 500 Oops\r\ncontent-length: 3\r\n\r\na\x00b"))
    try:
        endpoint, delivery = hook_for(alice_project, alice, server.url)
        attempt = actions.record(delivery, actions.post(endpoint, delivery.event))
    finally:
        server.close()
    assert attempt is not None and attempt.response_excerpt == "a\\u0000b" and attempt.error == "answered 500"


def test_a_host_name_dns_cannot_encode_is_refused_and_never_loops(
    alice: Any, alice_project: Any, api: APIClient
) -> None:
    long_label = "https://" + "a" * 64 + ".example.com/hook"
    response = api.post(
        "/v1/webhook_endpoints",
        {"name": "x", "url": long_label, "event_types": ["batch.failed"]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"url has an invalid host name: '{'a' * 64}.example.com'."
    endpoint, delivery = hook_for(alice_project, alice, "https://ok.example.com/hook")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=long_label)  # saved before the check existed
    assert actions.deliver(delivery.pk) == f"could not resolve {'a' * 64}.example.com: not a valid host name"
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.next_attempt_at is not None


def test_a_failure_while_sending_is_recorded_as_an_attempt(alice: Any, alice_project: Any) -> None:
    endpoint, delivery = hook_for(alice_project, alice, "https://ok.example.com/hook")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(secret="not-a-fernet-token")
    assert actions.deliver(delivery.pk) == "sending failed"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.claimed_until) == (DeliveryStatus.PENDING, 1, None)
    assert delivery.attempt_log.get().error == "sending failed"


def test_a_delivery_whose_endpoint_was_deleted_ends_quietly(alice: Any, alice_project: Any) -> None:
    endpoint, delivery = hook_for(alice_project, alice, "https://ok.example.com/hook")
    endpoint.delete()
    assert actions.deliver(delivery.pk) == "not due"
    assert actions.record(delivery, actions.Outcome(200, 1)) is None


def test_test_events_and_resends_are_rate_limited_per_organization(
    alice: Any, alice_project: Any, settings: Any
) -> None:
    settings.WEBHOOK_MANUAL_SENDS_PER_MINUTE = 3
    with Receiver() as receiver:
        endpoint, delivery = hook_for(alice_project, alice, receiver.url)
        for _ in range(2):
            actions.send_test(endpoint, alice, "batch.failed")
        actions.resend(delivery, alice)
        with pytest.raises(actions.ActionError) as refused:
            actions.send_test(endpoint, alice, "batch.failed")
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.message.startswith(
        "At most 3 test events and resends a minute per organization; try again in "
    )
    assert len(receiver.received) == 2


def test_a_delivery_being_sent_is_not_resent_over_it(alice: Any, alice_project: Any) -> None:
    _, delivery = hook_for(alice_project, alice, "https://ok.example.com/hook")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        claimed_until=timezone.now() + timedelta(seconds=30)
    )
    with pytest.raises(actions.ActionError, match="This delivery is being sent right now"):
        actions.resend(delivery, alice)


def test_a_slow_receiver_holds_a_test_request_only_until_the_timeout(
    alice: Any, alice_project: Any, settings: Any
) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    with Receiver(default=Reply(200, delay=3)) as receiver:
        endpoint, _ = hook_for(alice_project, alice, receiver.url)
        started = time.monotonic()
        attempt = actions.send_test(endpoint, alice, "batch.failed")
        assert time.monotonic() - started < 2.5
    assert attempt.status_code is None and attempt.error in (
        "no answer within 0.5 s",
        "no complete answer within 0.5 s",
    )


def test_the_create_answer_is_never_replayed_to_another_key(
    api: APIClient, bob: Any, alice_project: Any
) -> None:
    body = {"name": "x", "url": "https://ok.example.com/hook", "event_types": ["batch.failed"]}
    first = api.post("/v1/webhook_endpoints", body, format="json", HTTP_IDEMPOTENCY_KEY="create-1")
    assert first.status_code == 200 and "signing_secret" in first.json()
    _, raw = project_actions.create_api_key(alice_project, "bob's", bob)
    member = APIClient()
    member.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    replay = member.post("/v1/webhook_endpoints", body, format="json", HTTP_IDEMPOTENCY_KEY="create-1")
    assert replay.status_code == 403 and "signing_secret" not in replay.content.decode()


def test_events_past_retention_are_pruned(alice: Any, alice_project: Any, settings: Any) -> None:
    _, delivery = hook_for(alice_project, alice, "https://ok.example.com/hook")
    WebhookEvent.objects.filter(pk=delivery.event_id).update(created_at=timezone.now() - timedelta(days=31))
    _, kept = hook_for(alice_project, alice, "https://ok2.example.com/hook")
    actions.send_due(timezone.now() - timedelta(days=1))  # nothing due yet: this sweep only prunes
    assert not WebhookEvent.objects.filter(pk=delivery.event_id).exists()
    assert WebhookDelivery.objects.filter(pk=kept.pk).exists()
