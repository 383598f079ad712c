"""Deliveries: the outbox, signatures the `openai` SDK verifies, retries with the same id, and what
makes a delivery or an endpoint give up."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import openai
import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone

from apps.jobs import actions as job_actions
from apps.jobs.models import Job, JobKind, JobStatus
from apps.webhooks import actions
from apps.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.conftest import sentiment_csv, wait_for
from tests.webhooks.receiver import Receiver, Reply

pytestmark = pytest.mark.integration


def sdk(live_server: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=live_server.url + "/v1", api_key=key, max_retries=0, _strict_response_validation=True
    )


def endpoint(project: Any, alice: Any, url: str, *types: str) -> tuple[WebhookEndpoint, str]:
    return actions.create_endpoint(project, alice, name="hooks", url=url, event_types=list(types))


def sweep_until(predicate: Any, timeout: float = 30) -> Any:
    """Runs the beat's sweep (its task body) until `predicate` holds: retries go out when due."""

    def check() -> Any:
        actions.send_due()
        return predicate()

    return wait_for(check, timeout=timeout, interval=0.2)


def test_a_succeeded_fine_tune_reaches_the_receiver_and_the_sdk_verifies_it(
    live_server: Any, alice: Any, alice_key: str, alice_project: Any, celery_worker: Any, tiny_base: Any
) -> None:
    client = sdk(live_server, alice_key)
    with Receiver() as receiver:
        made = client.webhooks.create(
            name="ci", url=receiver.url, event_types=["fine_tuning.job.succeeded", "file.processed"]
        )
        file = client.files.create(file=("train.csv", io.BytesIO(sentiment_csv(40))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny-bert",
            training_file=file.id,
            extra_body={
                "method": {"type": "classification", "classification": {"hyperparameters": {"n_epochs": 1}}}
            },
        )
        wait_for(lambda: len(receiver.received) >= 2, timeout=120, message="two deliveries")
        by_type = {}
        for request in receiver.received:
            event = client.webhooks.unwrap(request.body, request.headers, secret=made.signing_secret)
            by_type[event.type] = (event, request)
        done, request = by_type["fine_tuning.job.succeeded"]
        assert done.data.id == job.id and done.id == request.headers["webhook-id"]
        assert Job.objects.get(public_id=job.id).status == JobStatus.SUCCEEDED
        assert by_type["file.processed"][0].data.id == file.id
        assert request.headers["user-agent"].startswith("Modelworks-Webhooks/")
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(request.body, request.headers, secret=actions.new_secret())
        delivery = WebhookDelivery.objects.get(event__public_id=done.id)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 1)
        assert delivery.attempt_log.get().status_code == 200


def test_a_failing_receiver_gets_the_same_event_again_until_it_answers_2xx(
    alice: Any, alice_project: Any, celery_worker: Any
) -> None:
    with Receiver() as receiver:
        receiver.replies.extend(
            [Reply(500), Reply(503), Reply(302, headers={"location": "https://elsewhere.example"})]
        )
        hook, secret = endpoint(alice_project, alice, receiver.url, "batch.completed")
        with transaction.atomic():
            event = actions.emit(alice_project.pk, "batch.completed", "batch_abc")
        assert event is not None
        delivery = WebhookDelivery.objects.get(event=event)
        sweep_until(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == DeliveryStatus.DELIVERED)
        ids = {r.headers["webhook-id"] for r in receiver.received}
        bodies = set(receiver.bodies())
        assert len(receiver.received) == 4 and ids == {event.public_id} and bodies == {event.payload.encode()}
        attempts = list(delivery.attempt_log.order_by("number"))
        assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 503), (3, 302), (4, 200)]
        assert attempts[0].error == "answered 500"
        assert attempts[2].error == "redirected to https://elsewhere.example; redirects are not followed"
        assert all(a.next_attempt_at for a in attempts[:3]) and attempts[3].next_attempt_at is None
        for request in receiver.received:  # each attempt is signed afresh, with its own timestamp
            Webhook = openai.OpenAI(api_key="x").webhooks
            Webhook.verify_signature(request.body, request.headers, secret=secret)
        hook.refresh_from_db()
        assert hook.failing_since is None


def test_an_event_is_written_with_its_change_and_not_without_it(alice: Any, alice_project: Any) -> None:
    endpoint(alice_project, alice, "https://hooks.example.com/x", "fine_tuning.job.cancelled")
    job = Job.objects.create(
        organization=alice_project.organization,
        project=alice_project,
        kind=JobKind.FINE_TUNE,
        status=JobStatus.QUEUED,
        model_name="tiny-bert",
        request={},
    )
    with pytest.raises(RuntimeError), transaction.atomic():
        job_actions.cancel(job)
        raise RuntimeError("the request failed after the cancel")
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED and not WebhookEvent.objects.exists()

    job_actions.cancel(job)
    event = WebhookEvent.objects.get()
    assert json.loads(event.payload) == {
        "id": event.public_id,
        "object": "event",
        "type": "fine_tuning.job.cancelled",
        "created_at": int(event.created_at.timestamp()),
        "data": {"id": job.public_id},
    }
    assert WebhookDelivery.objects.get().status == DeliveryStatus.PENDING


@pytest.mark.django_db(transaction=True)
def test_an_event_outside_a_transaction_is_refused(alice_project: Any) -> None:
    with pytest.raises(RuntimeError, match="written in the transaction of the change"):
        actions.emit(alice_project.pk, "batch.completed", "batch_x")


def test_only_enabled_endpoints_that_subscribe_get_a_delivery(
    alice: Any, alice_project: Any, carol: Any, carol_project: Any
) -> None:
    wanted, _ = endpoint(alice_project, alice, "https://a.example.com/x", "batch.failed")
    endpoint(alice_project, alice, "https://b.example.com/x", "batch.completed")
    off, _ = endpoint(alice_project, alice, "https://c.example.com/x", "batch.failed")
    actions.update_endpoint(off, alice, {"enabled": False})
    endpoint(carol_project, carol, "https://d.example.com/x", "batch.failed")
    with transaction.atomic():
        actions.emit(alice_project.pk, "batch.failed", "batch_1")
    assert list(WebhookDelivery.objects.values_list("endpoint", flat=True)) == [wanted.pk]


def test_job_statuses_map_to_openai_event_names(alice_project: Any) -> None:
    def types(kind: str, status: str, **fields: Any) -> list[str]:
        return job_actions.webhook_event_types(Job(kind=kind, status=status, project=alice_project, **fields))

    assert types(JobKind.FINE_TUNE, JobStatus.SUCCEEDED) == ["fine_tuning.job.succeeded"]
    assert types(JobKind.FINE_TUNE, JobStatus.SUCCEEDED, status_reason="budget_reached") == [
        "fine_tuning.job.succeeded",
        "fine_tuning.job.budget_reached",
    ]
    assert types(JobKind.FINE_TUNE, JobStatus.FAILED, error={"code": "budget_reached"}) == [
        "fine_tuning.job.failed",
        "fine_tuning.job.budget_reached",
    ]
    assert types(JobKind.FINE_TUNE, JobStatus.PAUSED) == ["fine_tuning.job.paused"]
    assert types(JobKind.FINE_TUNE, JobStatus.RUNNING) == []
    assert types(JobKind.BATCH, JobStatus.SUCCEEDED) == ["batch.completed"]
    assert types(JobKind.BATCH, JobStatus.CANCELLED) == ["batch.cancelled"]
    assert types(JobKind.GENERATION, JobStatus.SUCCEEDED) == []


def _failed_delivery(alice: Any, alice_project: Any, url: str) -> WebhookDelivery:
    endpoint(alice_project, alice, url, "batch.failed")
    with transaction.atomic():
        event = actions.emit(alice_project.pk, "batch.failed", "batch_1")
    return WebhookDelivery.objects.get(event=event)


def test_a_delivery_gives_up_when_the_retry_window_closes(
    alice: Any, alice_project: Any, settings: Any
) -> None:
    delivery = _failed_delivery(alice, alice_project, "https://hooks.example.com/x")
    WebhookEvent.objects.filter(pk=delivery.event_id).update(
        created_at=timezone.now() - timedelta(hours=71, minutes=59, seconds=59)
    )
    settings.WEBHOOK_RETRY_BASE_SECONDS = settings.WEBHOOK_RETRY_MAX_SECONDS = 10
    attempt = actions.record(delivery, actions.Outcome(500, 12, error="answered 500"))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.next_attempt_at, attempt.next_attempt_at) == (
        DeliveryStatus.FAILED,
        None,
        None,
    )


def test_an_endpoint_failing_for_days_is_disabled_and_its_owners_emailed(
    alice: Any,
    alice_project: Any,
    erin: Any,
    bob: Any,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    delivery = _failed_delivery(alice, alice_project, "https://hooks.example.com/x")
    hook = delivery.endpoint
    failed = actions.Outcome(None, 2000, error="no answer within 10 s")
    actions.record(delivery, failed)
    hook.refresh_from_db()
    assert hook.enabled and hook.failing_since is not None
    WebhookEndpoint.objects.filter(pk=hook.pk).update(
        failing_since=timezone.now() - timedelta(days=4, hours=23)
    )
    actions.record(delivery, failed)
    assert WebhookEndpoint.objects.get(pk=hook.pk).enabled and not mail.outbox
    WebhookEndpoint.objects.filter(pk=hook.pk).update(
        failing_since=timezone.now() - timedelta(days=5, minutes=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        actions.record(delivery, failed)
    hook.refresh_from_db()
    assert not hook.enabled and hook.disabled_reason.startswith(
        "Disabled automatically: every delivery has failed since "
    )
    [email] = mail.outbox
    assert email.subject == "Webhook endpoint hooks was disabled"
    assert sorted(email.to) == ["alice@example.com", "erin@example.com"]
    assert "https://hooks.example.com/x" in email.body and f"/webhooks/{hook.public_id}/" in email.body
    # Nothing more goes to it; switching it back on forgets the failures.
    assert actions.send_due(timezone.now() + timedelta(days=1)) == 0
    actions.update_endpoint(hook, alice, {"enabled": True})
    hook.refresh_from_db()
    assert hook.enabled and hook.failing_since is None and hook.disabled_reason == ""


def test_a_success_clears_the_failing_mark(alice: Any, alice_project: Any) -> None:
    delivery = _failed_delivery(alice, alice_project, "https://hooks.example.com/x")
    actions.record(delivery, actions.Outcome(500, 5, error="answered 500"))
    actions.record(delivery, actions.Outcome(204, 5))
    assert WebhookEndpoint.objects.get(pk=delivery.endpoint_id).failing_since is None


def test_no_delivery_reaches_a_private_address_in_production(
    alice: Any, alice_project: Any, settings: Any
) -> None:
    with Receiver() as receiver:
        delivery = _failed_delivery(alice, alice_project, receiver.url)
        settings.WEBHOOK_ALLOW_PRIVATE_URLS = False  # as if its name now pointed inside our network
        outcome = actions.post(delivery.endpoint, delivery.event)
        assert outcome.status_code is None and not receiver.received
        assert outcome.error == "127.0.0.1 resolves to a private address; webhooks go only to public ones"


def test_a_slow_answer_counts_as_a_failure(alice: Any, alice_project: Any, settings: Any) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.3
    with Receiver(default=Reply(200, delay=1.0)) as receiver:
        delivery = _failed_delivery(alice, alice_project, receiver.url)
        outcome = actions.post(delivery.endpoint, delivery.event)
    assert (outcome.status_code, outcome.error) == (None, "no answer within 0.3 s")


def test_during_a_rotation_overlap_both_secrets_verify(alice: Any, alice_project: Any) -> None:
    with Receiver() as receiver:
        delivery = _failed_delivery(alice, alice_project, receiver.url)
        hook = delivery.endpoint
        old = actions.rotate_secret(hook, alice, keep_old=False)
        new = actions.rotate_secret(hook, alice, keep_old=True)
        assert actions.post(hook, delivery.event).ok
        WebhookEndpoint.objects.filter(pk=hook.pk).update(
            previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
        )
        hook.refresh_from_db()
        assert actions.post(hook, delivery.event).ok
    webhooks = openai.OpenAI(api_key="x").webhooks
    overlap, after = receiver.received
    assert len(overlap.headers["webhook-signature"].split()) == 2
    webhooks.verify_signature(overlap.body, overlap.headers, secret=old)
    webhooks.verify_signature(overlap.body, overlap.headers, secret=new)
    webhooks.verify_signature(after.body, after.headers, secret=new)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        webhooks.verify_signature(after.body, after.headers, secret=old)


def test_a_test_event_goes_out_at_once_and_is_logged(live_server: Any, alice: Any, alice_key: str) -> None:
    client = sdk(live_server, alice_key)
    with Receiver() as receiver:
        made = client.webhooks.create(name="t", url=receiver.url, event_types=["batch.completed"])
        result = client.webhooks.test(made.id, event_type="fine_tuning.job.succeeded")
        assert (result.status_code, result.event_type, result.webhook_endpoint_id) == (
            200,
            "fine_tuning.job.succeeded",
            made.id,
        )
        [request] = receiver.received
        event = client.webhooks.unwrap(request.body, request.headers, secret=made.signing_secret)
        assert event.type == "fine_tuning.job.succeeded" and event.data.id == "ftjob-test"
        receiver.default = Reply(500)
        assert client.webhooks.test(made.id, event_type="batch.failed").status_code == 500
    delivery = WebhookDelivery.objects.filter(event__is_test=True).order_by("id").last()
    assert (
        delivery is not None and delivery.status == DeliveryStatus.FAILED and delivery.next_attempt_at is None
    )
    WebhookEndpoint.objects.filter(public_id=made.id).update(url="http://127.0.0.1:9/closed")
    with pytest.raises(openai.BadRequestError) as refused:
        client.webhooks.test(made.id, event_type="batch.failed")
    assert refused.value.body["message"].startswith(  # type: ignore[index]
        "The test event could not be delivered to http://127.0.0.1:9/closed: could not connect:"
    )
    assert WebhookEndpoint.objects.get(public_id=made.id).failing_since is None  # tests never count
