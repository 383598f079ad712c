"""Usage reaches Stripe Billing Meters exactly once, through the outbox (docs/reliability.md, T14–T16)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.billing import meters
from apps.billing.models import MeterEvent, UsageRecord
from apps.jobs.models import Job, JobKind, JobStatus
from tests.fake_stripe import FakeStripe

METER_PATH = "/v1/billing/meter_events"


def record_usage(org: Any, unit: str, cost: int, at: datetime, quantity: int = 1) -> UsageRecord:
    """A finished job's usage record, written at `at`."""
    job = Job.objects.create(
        kind=JobKind.GENERATION,
        organization=org,
        project=org.projects.first(),
        model_name="tiny-gpt2",
        status=JobStatus.SUCCEEDED,
    )
    record = UsageRecord.objects.create(
        organization=org,
        project=job.project,
        job=job,
        model_name="tiny-gpt2",
        unit=unit,
        quantity=quantity,
        cost=cost,
    )
    UsageRecord.objects.filter(pk=record.pk).update(created_at=at)
    return record


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@pytest.fixture
def now() -> datetime:
    return timezone.now()


@pytest.fixture
def usage(pro_alice: dict[str, Any], alice_org: Any, carol: Any, now: datetime) -> dict[str, Any]:
    """Two closed hours of alice's usage (three (hour, unit) pairs), and carol's, who has no customer."""
    first, second = hour_of(now) - timedelta(hours=3), hour_of(now) - timedelta(hours=2)
    record_usage(alice_org, "input_tokens", 1_234_567, first + timedelta(minutes=5))
    record_usage(alice_org, "input_tokens", 1, first + timedelta(minutes=59, seconds=59))
    record_usage(alice_org, "output_tokens", 333, first + timedelta(minutes=30))
    record_usage(alice_org, "output_tokens", 42, second)
    record_usage(carol.memberships.get().organization, "input_tokens", 999, first)
    return {"first": first, "second": second, "customer": pro_alice["customer"]}


def test_a_run_sends_one_event_per_organization_hour_and_unit(
    usage: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, now: datetime
) -> None:
    # when
    added = meters.fill_outbox(now)
    counts = meters.send_outbox(now)

    # then
    first, second, org = usage["first"], usage["second"], alice_org.public_id
    assert added == 3 and counts == {"sent": 3, "failed": 0, "skipped": 0}
    sent = {e["identifier"]: e for e in fake_stripe.meter_events}
    assert set(sent) == {
        f"mw-{org}-{first:%Y%m%d%H}-input_tokens",
        f"mw-{org}-{first:%Y%m%d%H}-output_tokens",
        f"mw-{org}-{second:%Y%m%d%H}-output_tokens",
    }
    event = sent[f"mw-{org}-{first:%Y%m%d%H}-input_tokens"]
    assert event["event_name"] == "modelworks_usage"
    assert event["payload"] == {"stripe_customer_id": usage["customer"], "value": "1234568"}
    assert event["timestamp"] == int(first.timestamp())
    assert sent[f"mw-{org}-{second:%Y%m%d%H}-output_tokens"]["payload"]["value"] == "42"
    # The identifier is also the Idempotency-Key, and is at most 100 characters.
    for request in fake_stripe.requests_to("POST", METER_PATH):
        assert request.idempotency_key == request.params["identifier"]
        assert len(request.params["identifier"]) <= 100
    assert list(MeterEvent.objects.values_list("attempts", flat=True)) == [1, 1, 1]
    assert not MeterEvent.objects.filter(sent_at=None).exists()
    assert not MeterEvent.objects.exclude(organization=alice_org).exists()  # carol has no customer


def test_a_second_run_sends_nothing(usage: dict[str, Any], fake_stripe: FakeStripe, now: datetime) -> None:
    meters.fill_outbox(now)
    meters.send_outbox(now)
    posts = len(fake_stripe.requests_to("POST", METER_PATH))

    assert meters.fill_outbox(now) == 0
    assert meters.send_outbox(now) == {"sent": 0, "failed": 0, "skipped": 0}

    assert len(fake_stripe.requests_to("POST", METER_PATH)) == posts == 3


def test_an_hour_is_reported_only_once_it_has_closed(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, now: datetime
) -> None:
    hour = hour_of(now)
    record_usage(alice_org, "input_tokens", 500, hour + timedelta(minutes=1))

    assert meters.fill_outbox(hour + timedelta(minutes=59)) == 0
    assert meters.fill_outbox(hour + timedelta(minutes=61)) == 0  # settling: a commit may still land
    assert meters.fill_outbox(hour + timedelta(minutes=66)) == 1


def test_a_crash_after_stripe_accepted_resends_the_same_identifier_and_stripe_counts_one(
    usage: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given: the sender dies right after Stripe answered 200, before marking the row sent
    real_send = meters.stripe_api.send_meter_event

    def send_then_crash(*args: Any, **kwargs: Any) -> Any:
        real_send(*args, **kwargs)
        raise SystemExit("worker killed after Stripe accepted the event")

    meters.fill_outbox(now)
    monkeypatch.setattr(meters.stripe_api, "send_meter_event", send_then_crash)
    with pytest.raises(SystemExit):
        meters.send_outbox(now)
    crashed = MeterEvent.objects.get(identifier__in=[e["identifier"] for e in fake_stripe.meter_events])
    assert crashed.sent_at is None and crashed.attempts == 1

    # when: the next run
    monkeypatch.undo()
    counts = meters.send_outbox(now)

    # then: sent again with the same identifier and key, and Stripe has it once
    assert counts["sent"] == 3
    posts = [
        r for r in fake_stripe.requests_to("POST", METER_PATH) if r.params["identifier"] == crashed.identifier
    ]
    assert len(posts) == 2
    assert {r.idempotency_key for r in posts} == {crashed.identifier}
    assert [e["identifier"] for e in fake_stripe.meter_events].count(crashed.identifier) == 1
    assert len(fake_stripe.meter_events) == 3
    crashed.refresh_from_db()
    assert crashed.sent_at is not None and crashed.attempts == 2


def test_a_resend_after_stripe_forgot_the_key_is_recognised_by_its_identifier(
    usage: dict[str, Any], fake_stripe: FakeStripe, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idempotency keys expire after 24 h; the identifier still makes Stripe refuse a duplicate."""
    real_send = meters.stripe_api.send_meter_event

    def send_then_crash(*args: Any, **kwargs: Any) -> Any:
        real_send(*args, **kwargs)
        raise SystemExit("crash")

    meters.fill_outbox(now)
    monkeypatch.setattr(meters.stripe_api, "send_meter_event", send_then_crash)
    with pytest.raises(SystemExit):
        meters.send_outbox(now)
    monkeypatch.undo()
    fake_stripe.state.idempotency.clear()  # a day later

    counts = meters.send_outbox(now)

    assert counts == {"sent": 3, "failed": 0, "skipped": 0}
    assert len(fake_stripe.meter_events) == 3
    assert not MeterEvent.objects.filter(sent_at=None).exists()


def test_a_stripe_outage_leaves_rows_unsent_and_the_next_run_sends_them_once(
    usage: dict[str, Any], fake_stripe: FakeStripe, now: datetime
) -> None:
    # given: Stripe answers 500 to everything
    meters.fill_outbox(now)
    fake_stripe.fail(500)

    # when
    counts = meters.send_outbox(now)

    # then: nothing sent, every try counted and explained; the SDK retried twice with the same key
    assert counts["sent"] == 0 and counts["failed"] == 3
    for row in MeterEvent.objects.all():
        assert row.sent_at is None and row.attempts == 1
        assert row.last_error.startswith("Billing is temporarily unavailable")
        tries = [
            r for r in fake_stripe.requests_to("POST", METER_PATH) if r.params["identifier"] == row.identifier
        ]
        assert len(tries) == 3 and {r.idempotency_key for r in tries} == {row.identifier}
    assert fake_stripe.meter_events == []

    # when: Stripe is back
    fake_stripe.recover()
    counts = meters.send_outbox(now)

    # then
    assert counts["sent"] == 3
    assert len(fake_stripe.meter_events) == 3
    assert list(MeterEvent.objects.values_list("attempts", "last_error")) == [(2, ""), (2, ""), (2, "")]


def test_a_run_stops_after_three_outage_errors_in_a_row(
    pro_alice: dict[str, Any], alice_org: Any, fake_stripe: FakeStripe, now: datetime, settings: Any
) -> None:
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    for hours in range(3, 8):
        record_usage(alice_org, "input_tokens", 10, hour_of(now) - timedelta(hours=hours))
    meters.fill_outbox(now)
    fake_stripe.fail(503)

    counts = meters.send_outbox(now)

    assert counts["failed"] == 3
    assert sorted(MeterEvent.objects.values_list("attempts", flat=True)) == [0, 0, 1, 1, 1]


def test_rows_unsent_after_30_days_raise_an_alert_and_are_never_dropped(
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    now: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given: an outbox row 31 days old (still accepted by Stripe) and one 36 days old (refused)
    late_hour, lost_hour = hour_of(now) - timedelta(days=31), hour_of(now) - timedelta(days=36)
    late = MeterEvent.objects.create(
        organization=alice_org,
        hour=late_hour,
        unit="input_tokens",
        value=7,
        identifier=meters.identifier(alice_org.public_id, late_hour, "input_tokens"),
    )
    lost = MeterEvent.objects.create(
        organization=alice_org,
        hour=lost_hour,
        unit="input_tokens",
        value=9,
        identifier=meters.identifier(alice_org.public_id, lost_hour, "input_tokens"),
    )

    # when
    meters.send_outbox(now)

    # then: both alerted at ERROR, with the outcome on the row
    alerts = [r for r in caplog.records if r.levelname == "ERROR" and "ALERT" in r.getMessage()]
    assert {late.identifier in r.getMessage() for r in alerts} == {True, False} and len(alerts) == 2
    late.refresh_from_db()
    lost.refresh_from_db()
    assert late.sent_at is not None and late.last_error == "ALERT: unsent for 31 days; sent"
    assert lost.sent_at is None and lost.last_error.startswith(
        "ALERT: unsent for 36 days; older than Stripe accepts"
    )
    assert [e["identifier"] for e in fake_stripe.meter_events] == [late.identifier]

    # ... and the lost row stays, alerting on every run
    caplog.clear()
    meters.send_outbox(now)
    assert MeterEvent.objects.filter(pk=lost.pk, sent_at=None).exists()
    assert any("ALERT" in r.getMessage() and lost.identifier in r.getMessage() for r in caplog.records)


def test_usage_recorded_after_an_hour_was_filled_updates_an_unsent_row(
    pro_alice: dict[str, Any],
    alice_org: Any,
    fake_stripe: FakeStripe,
    now: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hour = hour_of(now) - timedelta(hours=2)
    record_usage(alice_org, "input_tokens", 100, hour)
    meters.fill_outbox(now)
    record_usage(alice_org, "input_tokens", 5, hour + timedelta(minutes=1))

    meters.fill_outbox(now)
    assert MeterEvent.objects.get().value == 105

    meters.send_outbox(now)
    record_usage(alice_org, "input_tokens", 1, hour + timedelta(minutes=2))
    meters.fill_outbox(now)
    assert MeterEvent.objects.get().value == 105  # sent values never change
    assert "was sent with 105 but the hour's usage is now 106" in caplog.text


def test_the_report_usage_task_fills_and_sends(usage: dict[str, Any], fake_stripe: FakeStripe) -> None:
    from workers.tasks import report_usage

    result = report_usage()

    assert result == {"added": 3, "sent": 3, "failed": 0, "skipped": 0}
    assert len(fake_stripe.meter_events) == 3
