"""The month's spend is one row that a trigger keeps equal to the sum of the month's usage records,
whatever writes them (apps.billing.models.MonthSpend)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from django.db.models import Sum

from apps.billing.models import MONTH_SPEND_SHARDS, MonthSpend, UsageRecord
from apps.billing.quotas import month_spend, month_start
from apps.jobs import actions
from apps.jobs.models import Job, JobKind, JobStatus


def summed(organization: Any) -> int:
    total = UsageRecord.objects.filter(organization=organization, created_at__gte=month_start()).aggregate(
        total=Sum("cost")
    )["total"]
    return int(total or 0)


def record(organization: Any, cost: int, **fields: Any) -> UsageRecord:
    return UsageRecord.objects.create(
        organization=organization, model_name="m", unit="input_tokens", quantity=1, cost=cost, **fields
    )


def test_every_way_of_writing_records_keeps_the_sum(
    alice_org: Any, alice_project: Any, carol_project: Any
) -> None:
    carol_org = carol_project.organization
    assert month_spend(alice_org) == 0

    first = record(alice_org, 1_000)
    record(carol_org, 7_000)  # another organization's
    job = Job.objects.create(
        kind=JobKind.FINE_TUNE, organization=alice_org, project=alice_project, model_name="tiny-bert"
    )
    assert actions.claim(job.public_id) is not None
    assert actions.finish(job.pk, 1, JobStatus.SUCCEEDED, usage={"trained_tokens": 1_000}) is not None
    assert month_spend(alice_org) == summed(alice_org) == 1_000 + 2_000

    first.cost = 1_500  # a staff correction in admin
    first.save()
    assert month_spend(alice_org) == summed(alice_org) == 1_500 + 2_000

    first.delete()
    assert month_spend(alice_org) == summed(alice_org) == 2_000
    assert month_spend(carol_org) == summed(carol_org) == 7_000


def test_a_record_of_last_month_counts_in_last_month(alice_org: Any) -> None:
    last_month = month_start() - timedelta(days=1)
    old = record(alice_org, 5_000)
    UsageRecord.objects.filter(pk=old.pk).update(created_at=last_month)  # moves it, trigger included
    record(alice_org, 300)

    assert month_spend(alice_org) == summed(alice_org) == 300
    assert (
        MonthSpend.objects.get(organization=alice_org, month=last_month.date().replace(day=1)).spent == 5_000
    )


def test_a_record_skipped_as_a_duplicate_adds_nothing(alice_org: Any, alice_project: Any) -> None:
    job = Job.objects.create(
        kind=JobKind.GENERATION, organization=alice_org, project=alice_project, model_name="m"
    )
    fields = {"organization": alice_org, "job": job, "model_name": "m", "unit": "input_tokens", "start": 0}
    UsageRecord.objects.bulk_create([UsageRecord(**fields, quantity=10, cost=40)], ignore_conflicts=True)
    UsageRecord.objects.bulk_create([UsageRecord(**fields, quantity=10, cost=40)], ignore_conflicts=True)

    assert month_spend(alice_org) == summed(alice_org) == 40


def test_an_organization_with_spend_can_be_deleted(alice_org: Any) -> None:
    record(alice_org, 1_000)
    alice_org.delete()
    assert not MonthSpend.objects.exists() and not UsageRecord.objects.exists()


def test_the_spend_is_read_without_reading_the_records(
    alice_org: Any, django_assert_num_queries: Any
) -> None:
    for _ in range(40):
        record(alice_org, 10)
    with django_assert_num_queries(1) as queries:
        assert month_spend(alice_org) == 400
    sql = queries.captured_queries[0]["sql"]
    assert "billing_monthspend" in sql and "billing_usagerecord" not in sql
    assert MonthSpend.objects.filter(organization=alice_org).count() == MONTH_SPEND_SHARDS


def test_a_bill_waits_for_no_other_transaction_that_bills(
    transactional_db: None, alice_org: Any, alice_project: Any
) -> None:
    # given another transaction that billed the organization and has not committed (a worker paused
    # inside its finishing transaction)
    from django.db import connection

    params = connection.get_connection_params()
    other = psycopg.connect(**params)
    other.execute(
        "INSERT INTO billing_usagerecord (organization_id, model_name, unit, start, quantity, cost, created_at) "
        "VALUES (%s, 'm', 'input_tokens', 0, 1, 500, now())",
        (alice_org.pk,),
    )
    try:
        # when a request of the organization is billed meanwhile
        job = Job.objects.create(
            kind=JobKind.CLASSIFICATION, organization=alice_org, project=alice_project, model_name="m"
        )
        claimed = actions.claim(job.public_id, with_files=False)
        assert claimed is not None
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        try:
            # then it does not wait for the other to commit
            assert actions.finish_request(claimed, {"data": []}, {"classified_texts": 1, "input_tokens": 2})
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = 0")
    finally:
        other.commit()
        other.close()
    assert month_spend(alice_org) == summed(alice_org)
