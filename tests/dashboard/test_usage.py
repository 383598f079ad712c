"""The Usage page, its chart's JSON and its CSV: exact numbers, escaping, outsiders."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.billing.models import UsageRecord
from apps.billing.quotas import subscription_for
from apps.projects import actions
from apps.projects.models import Project
from tests.billing.test_usage_api import record
from tests.conftest import login

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
FORMULA = '=HYPERLINK("http://evil.example","click")'


@pytest.fixture
def march(alice: Any, alice_project: Project, carol_project: Project) -> dict[str, Any]:
    """alice's usage in March 2026: two projects, a key, a dashboard job, a model named like a formula."""
    key, _ = actions.create_api_key(alice_project, "production", alice)
    research = Project.objects.create(organization=alice_project.organization, name="@Research")
    record(alice_project, MARCH + timedelta(hours=5), "input_tokens", 1000, 1500, api_key=key)
    record(alice_project, MARCH + timedelta(hours=6), "output_tokens", 200, 1200, api_key=key)
    record(alice_project, MARCH + timedelta(days=1, hours=1), "input_tokens", 10, 7, api_key=key)
    record(research, MARCH + timedelta(days=1, hours=2), "classified_texts", 50, 333, model=FORMULA)
    record(research, MARCH + timedelta(days=30, hours=23), "trained_tokens", 9000, 18_000, model="minilm")
    record(alice_project, MARCH - timedelta(seconds=1), "input_tokens", 1, 1_000_000, api_key=key)  # February
    record(alice_project, MARCH + timedelta(days=31), "input_tokens", 1, 1_000_000, api_key=key)  # April
    record(
        carol_project, MARCH + timedelta(hours=5), "input_tokens", 999, 777_777, model="carol-secret-model"
    )
    return {
        "project": alice_project,
        "research": research,
        "key": key,
        "total": 1500 + 1200 + 7 + 333 + 18_000,
    }


def march_records(org: Any) -> list[UsageRecord]:
    return list(
        UsageRecord.objects.filter(
            organization=org, created_at__gte=MARCH, created_at__lt=datetime(2026, 4, 1, tzinfo=UTC)
        )
    )


def test_the_page_totals_by_project_and_key(alice_client: Any, march: dict[str, Any]) -> None:
    response = alice_client.get("/usage/?month=2026-03")
    assert response.status_code == 200
    page = response.content.decode()
    assert sum(r.cost for r in march_records(march["project"].organization)) == march["total"] == 21_040
    assert 'id="spend-total">$0.021<' in page  # 21,040 micro-dollars
    assert 'title="$0.021040 exactly"' in page  # the table's total, to the micro-dollar on hover
    tables = response.context["tables"]
    assert [(r.project_name, r.quantity_list, r.cost) for r in tables.by_project] == [
        ("@Research", [0, 0, 9000, 50], 18_333),
        (march["project"].name, [1010, 200, 0, 0], 2707),
    ]
    assert [(r.api_key_id, r.project_name, r.cost) for r in tables.by_api_key] == [
        (None, "@Research", 18_333),
        (march["key"].display_prefix, march["project"].name, 2707),
    ]
    assert tables.total.cost == march["total"]
    assert march["key"].display_prefix in page
    assert "carol-secret-model" not in page
    assert "/usage/export.csv?month=2026-03" in page
    assert "vendor/chartjs/chart.umd.min.js" in page and "js/usage.js" in page


def test_the_chart_json_splits_each_day_by_model_and_unit(alice_client: Any, march: dict[str, Any]) -> None:
    body = alice_client.get("/usage/daily.json?month=2026-03").json()
    assert body["days"][0] == "2026-03-01" and body["days"][-1] == "2026-03-31" and len(body["days"]) == 31
    models = {s["key"]: s["costs"] for s in body["by_model"]}
    assert sorted(models) == sorted(["gpt-small", "minilm", FORMULA])
    assert models["gpt-small"][:3] == [2700, 7, 0]
    assert models[FORMULA][1] == 333
    assert models["minilm"][30] == 18_000
    units = {s["key"]: s["costs"] for s in body["by_unit"]}
    assert [s["key"] for s in body["by_unit"]] == [
        "input_tokens",
        "output_tokens",
        "trained_tokens",
        "classified_texts",
    ]
    assert units["input_tokens"][:2] == [1500, 7] and units["output_tokens"][0] == 1200
    assert body["total"] == march["total"]
    assert sum(map(sum, models.values())) == sum(map(sum, units.values())) == march["total"]


def test_the_csv_has_a_row_per_day_project_key_model_and_unit(
    alice_client: Any, march: dict[str, Any]
) -> None:
    response = alice_client.get("/usage/export.csv?month=2026-03")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    org = march["project"].organization
    assert response["Content-Disposition"] == f'attachment; filename="usage-{org.public_id}-2026-03.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    key = march["key"].display_prefix
    assert [
        (r["date"], r["project"], r["api_key_id"], r["model"], r["unit"], r["quantity"], r["cost_micros"])
        for r in rows
    ] == [
        ("2026-03-01", march["project"].name, key, "gpt-small", "input_tokens", "1000", "1500"),
        ("2026-03-01", march["project"].name, key, "gpt-small", "output_tokens", "200", "1200"),
        ("2026-03-02", "'@Research", "", "'" + FORMULA, "classified_texts", "50", "333"),
        ("2026-03-02", march["project"].name, key, "gpt-small", "input_tokens", "10", "7"),
        ("2026-03-31", "'@Research", "", "minilm", "trained_tokens", "9000", "18000"),
    ]
    assert rows[0]["cost_usd"] == "0.001500" and rows[0]["api_key"] == "production"
    assert (
        sum(int(r["cost_micros"]) for r in rows) == sum(r.cost for r in march_records(org)) == march["total"]
    )


@pytest.mark.parametrize("name", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_the_csv_neutralises_formulas(alice_client: Any, alice_project: Project, name: str) -> None:
    record(alice_project, timezone.now(), "input_tokens", 1, 1, model=name)
    rows = list(csv.reader(io.StringIO(alice_client.get("/usage/export.csv").content.decode(), newline="")))
    assert rows[1][5] == "'" + name


def test_the_current_month_shows_spend_against_credit_and_limit(
    alice_client: Any, alice_project: Project
) -> None:
    subscription = subscription_for(alice_project.organization)
    assert subscription.plan.included_credit == 5_000_000  # Free
    record(alice_project, timezone.now(), "trained_tokens", 1_000_000, 1_250_000)
    record(alice_project, timezone.now() - timedelta(days=40), "trained_tokens", 1, 9_000_000)  # an old month
    page = alice_client.get("/usage/").content.decode()
    assert 'value="25.0" aria-label="Spend this month"' in page  # $1.25 of the $5.00 credit
    assert "$1.25 of $5.00 (25%)" in page
    assert "$3.75 left" in page
    subscription.spend_limit = 2_000_000
    subscription.save(update_fields=["spend_limit"])
    page = alice_client.get("/usage/").content.decode()
    assert "$1.25 of $2.00 (62%)" in page and "of your spend limit" in page


def test_a_capped_month_says_so(alice_client: Any, alice_project: Project) -> None:
    record(alice_project, timezone.now(), "trained_tokens", 1, 6_000_000)
    page = alice_client.get("/usage/").content.decode()
    assert 'class="progress usage-progress over" max="100" value="100.0"' in page
    assert "New paid work is refused" in page


def test_bob_sees_his_organization(client: Any, bob: Any, march: dict[str, Any]) -> None:
    login(client, bob)
    assert client.get("/usage/daily.json?month=2026-03").json()["total"] == march["total"]


def test_carol_sees_none_of_alice_usage(carol_client: Any, march: dict[str, Any]) -> None:
    page = carol_client.get("/usage/?month=2026-03").content.decode()
    assert march["key"].display_prefix not in page and "@Research" not in page and "gpt-small" not in page
    assert carol_client.get("/usage/?month=2026-03").context["tables"].total.cost == 777_777
    body = carol_client.get("/usage/daily.json?month=2026-03").json()
    assert body["total"] == 777_777 and [s["key"] for s in body["by_model"]] == ["carol-secret-model"]
    rows = list(
        csv.DictReader(io.StringIO(carol_client.get("/usage/export.csv?month=2026-03").content.decode()))
    )
    assert [(r["model"], r["cost_micros"]) for r in rows] == [("carol-secret-model", "777777")]


def test_an_empty_month_renders(alice_client: Any) -> None:
    response = alice_client.get("/usage/?month=2025-01")
    assert response.status_code == 200
    assert "No usage in this month." in response.content.decode()
    assert alice_client.get("/usage/daily.json?month=2025-02").json()["days"][-1] == "2025-02-28"


@pytest.mark.parametrize("month", ["2026-13", "2026-3", "march", "1999-12"])
def test_a_malformed_month_is_not_found(alice_client: Any, month: str) -> None:
    assert alice_client.get(f"/usage/?month={month}").status_code == 404
    assert alice_client.get(f"/usage/export.csv?month={month}").status_code == 404


def test_it_needs_a_login(client: Any, db: None) -> None:
    for path in ("/usage/", "/usage/daily.json", "/usage/export.csv"):
        response = client.get(path)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_api_and_the_page_agree(alice_client: Any, api: Any, march: dict[str, Any]) -> None:
    end = datetime(2026, 4, 1, tzinfo=UTC)
    response = api.get("/v1/usage", {"start_time": int(MARCH.timestamp()), "end_time": int(end.timestamp())})
    api_total = sum(r["cost"] for b in response.json()["data"] for r in b["results"])
    assert api_total == alice_client.get("/usage/daily.json?month=2026-03").json()["total"] == march["total"]


def test_the_number_of_queries_does_not_grow_with_usage(
    alice_client: Any, alice: Any, march: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    for n in range(5):
        project = Project.objects.create(organization=march["project"].organization, name=f"p{n}")
        key, _ = actions.create_api_key(project, f"k{n}", alice)
        for day in range(3):
            record(project, MARCH + timedelta(days=day), "input_tokens", 1, 1, model=f"m{n}", api_key=key)
    alice_client.get("/usage/?month=2026-03")  # the session and the subscription, once
    for path in (
        "/usage/?month=2026-03",
        "/usage/daily.json?month=2026-03",
        "/usage/export.csv?month=2026-03",
    ):
        with django_assert_max_num_queries(8):
            assert alice_client.get(path).status_code == 200
