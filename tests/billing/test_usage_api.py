"""`/v1/usage` and `/v1/usage/costs`: grouping, bucketing, validation, tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from apps.accounts.models import ApiKey
from apps.billing.models import UsageRecord
from apps.jobs.models import Job, JobKind
from apps.projects import actions
from apps.projects.models import Project

DAY1 = datetime(2026, 3, 10, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


def record(
    project: Project,
    at: datetime,
    unit: str,
    quantity: int,
    cost: int,
    *,
    model: str = "gpt-small",
    api_key: ApiKey | None = None,
) -> UsageRecord:
    """A usage record as a finished job leaves it, created at `at`."""
    job = Job.objects.create(
        organization=project.organization,
        project=project,
        kind=JobKind.GENERATION,
        model_name=model,
        api_key=api_key,
    )
    usage = UsageRecord.objects.create(
        organization=project.organization,
        project=project,
        api_key=api_key,
        job=job,
        model_name=model,
        unit=unit,
        quantity=quantity,
        cost=cost,
    )
    UsageRecord.objects.filter(pk=usage.pk).update(created_at=at)  # created_at is auto_now_add
    return usage


@pytest.fixture
def usage(api: Any, alice: Any, alice_project: Project, carol_project: Project) -> dict[str, Any]:
    """alice's organization: two projects, two keys, usage over two days; carol's usage on day 1."""
    key_a = ApiKey.objects.get(project=alice_project)
    research = Project.objects.create(organization=alice_project.organization, name="Research")
    key_b, _ = actions.create_api_key(research, "research", alice)
    record(alice_project, DAY1 + timedelta(hours=10, minutes=15), "input_tokens", 1000, 1500, api_key=key_a)
    record(alice_project, DAY1 + timedelta(hours=10, minutes=45), "output_tokens", 200, 1200, api_key=key_a)
    record(research, DAY2 - timedelta(seconds=1), "classified_texts", 50, 333, model="minilm", api_key=key_b)
    record(alice_project, DAY2, "input_tokens", 10, 7)  # from the dashboard: no key
    record(alice_project, DAY1 - timedelta(seconds=1), "input_tokens", 1, 1_000_000, api_key=key_a)  # before
    record(alice_project, DAY3, "input_tokens", 1, 1_000_000, api_key=key_a)  # at end_time: excluded
    record(carol_project, DAY1 + timedelta(hours=12), "input_tokens", 999, 999_999)
    return {"project": alice_project, "research": research, "key_a": key_a, "key_b": key_b}


def get(client: Any, path: str = "/v1/usage", **params: Any) -> Any:
    params.setdefault("start_time", unix(DAY1))
    params.setdefault("end_time", unix(DAY3))
    return client.get(path, {k: v for k, v in params.items() if v is not None})


def results(response: Any) -> list[list[dict[str, Any]]]:
    assert response.status_code == 200, response.content
    return [bucket["results"] for bucket in response.json()["data"]]


def result(quantity: int, cost: int, **group: str | None) -> dict[str, Any]:
    fields = {"project_id": None, "api_key_id": None, "model": None, "unit": None, **group}
    return {"object": "usage.result", "quantity": quantity, "cost": cost, "currency": "usd_micros", **fields}


def test_it_totals_each_day(api: Any, usage: dict[str, Any]) -> None:
    response = get(api)
    assert response.status_code == 200
    assert response.json() == {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": unix(DAY1),
                "end_time": unix(DAY2),
                "results": [result(1250, 3033)],
            },
            {
                "object": "bucket",
                "start_time": unix(DAY2),
                "end_time": unix(DAY3),
                "results": [result(10, 7)],
            },
        ],
        "has_more": False,
        "next_page": None,
    }


def test_it_groups_by_project_and_unit(api: Any, usage: dict[str, Any]) -> None:
    project, research = usage["project"].public_id, usage["research"].public_id
    day1 = [
        result(1000, 1500, project_id=project, unit="input_tokens"),
        result(200, 1200, project_id=project, unit="output_tokens"),
        result(50, 333, project_id=research, unit="classified_texts"),
    ]
    day1.sort(key=lambda r: (r["project_id"], r["unit"]))
    day2 = [result(10, 7, project_id=project, unit="input_tokens")]
    assert results(get(api, group_by="project_id,unit")) == [day1, day2]
    repeated = api.get(
        "/v1/usage", {"start_time": unix(DAY1), "end_time": unix(DAY3), "group_by": ["project_id", "unit"]}
    )
    assert results(repeated) == [day1, day2]


def test_it_groups_by_model_as_the_sdk_sends_arrays(api: Any, usage: dict[str, Any]) -> None:
    response = api.get(f"/v1/usage?start_time={unix(DAY1)}&end_time={unix(DAY3)}&group_by[]=model")
    assert results(response) == [
        [result(1200, 2700, model="gpt-small"), result(50, 333, model="minilm")],
        [result(10, 7, model="gpt-small")],
    ]


def test_it_names_api_keys_by_their_prefix_never_by_id(api: Any, usage: dict[str, Any]) -> None:
    key_a, key_b = usage["key_a"], usage["key_b"]
    day1, day2 = results(get(api, group_by="api_key_id"))
    by_key = {r["api_key_id"]: (r["quantity"], r["cost"]) for r in day1}
    assert by_key == {key_a.display_prefix: (1200, 2700), key_b.display_prefix: (50, 333)}
    assert day2 == [result(10, 7)]  # usage without a key has no key id
    for key_id in by_key:
        assert isinstance(key_id, str) and key_id.startswith("sk-mw-")
        assert key_id not in (str(key_a.pk), str(key_b.pk))


def test_hour_buckets_are_clipped_to_the_range(api: Any, usage: dict[str, Any]) -> None:
    start, end = DAY1 + timedelta(hours=10, minutes=30), DAY1 + timedelta(hours=12)
    response = get(api, start_time=unix(start), end_time=unix(end), bucket_width="1h", group_by="unit")
    assert response.status_code == 200
    data = response.json()["data"]
    assert [(b["start_time"], b["end_time"]) for b in data] == [
        (unix(start), unix(DAY1 + timedelta(hours=11))),
        (unix(DAY1 + timedelta(hours=11)), unix(end)),
    ]
    assert [b["results"] for b in data] == [[result(200, 1200, unit="output_tokens")], []]


def test_it_narrows_by_project_key_and_model(api: Any, usage: dict[str, Any]) -> None:
    research = usage["research"].public_id
    assert results(get(api, project_ids=research)) == [[result(50, 333)], []]
    assert results(get(api, api_key_ids=usage["key_a"].display_prefix)) == [[result(1200, 2700)], []]
    assert results(get(api, models="gpt-small")) == [[result(1200, 2700)], [result(10, 7)]]


def test_it_pages_through_buckets(api: Any, usage: dict[str, Any]) -> None:
    first = get(api, limit=1).json()
    assert [b["start_time"] for b in first["data"]] == [unix(DAY1)]
    assert first["has_more"] is True
    second = get(api, limit=1, page=first["next_page"]).json()
    assert [b["start_time"] for b in second["data"]] == [unix(DAY2)]
    assert second["data"][0]["results"] == [result(10, 7)]
    assert (second["has_more"], second["next_page"]) == (False, None)


def test_costs_total_each_day(api: Any, usage: dict[str, Any]) -> None:
    response = get(api, "/v1/usage/costs")
    assert response.status_code == 200
    body = response.json()
    assert (body["object"], body["has_more"], body["next_page"]) == ("page", False, None)
    assert body["data"][0]["results"] == [
        {
            "object": "organization.costs.result",
            "amount": {"value": 0.003033, "value_micros": 3033, "currency": "usd"},
            "line_item": None,
            "project_id": None,
        },
    ]
    assert body["data"][1]["results"][0]["amount"] == {
        "value": 0.000007,
        "value_micros": 7,
        "currency": "usd",
    }


def test_costs_group_by_line_item_and_project(api: Any, usage: dict[str, Any]) -> None:
    project, research = usage["project"].public_id, usage["research"].public_id
    day1, day2 = results(get(api, "/v1/usage/costs", group_by="line_item,project_id"))
    assert [(r["line_item"], r["project_id"], r["amount"]["value_micros"]) for r in day1] == [
        ("gpt-small", project, 2700),
        ("minilm", research, 333),
    ]
    assert [(r["line_item"], r["amount"]["value_micros"]) for r in day2] == [("gpt-small", 7)]


def test_costs_agree_with_usage_to_the_micro_dollar(api: Any, usage: dict[str, Any]) -> None:
    costs = [sum(r["amount"]["value_micros"] for r in b) for b in results(get(api, "/v1/usage/costs"))]
    used = [sum(r["cost"] for r in b) for b in results(get(api, group_by="project_id,api_key_id,model,unit"))]
    records = UsageRecord.objects.filter(
        organization=usage["project"].organization, created_at__gte=DAY1, created_at__lt=DAY3
    )
    assert costs == used == [3033, 7]
    assert sum(costs) == sum(r.cost for r in records)


MISSING = "Missing required parameter: 'start_time'."


@pytest.mark.parametrize(
    ("path", "params", "param", "message"),
    [
        ("/v1/usage", {"start_time": None}, "start_time", MISSING),
        ("/v1/usage/costs", {"start_time": None}, "start_time", MISSING),
        (
            "/v1/usage",
            {"start_time": "yesterday"},
            "start_time",
            "start_time must be an integer: a Unix time in seconds, e.g. 1735689600.",
        ),
        (
            "/v1/usage",
            {"start_time": "1.5"},
            "start_time",
            "start_time must be an integer: a Unix time in seconds, e.g. 1735689600.",
        ),
        (
            "/v1/usage",
            {"end_time": "soon"},
            "end_time",
            "end_time must be an integer: a Unix time in seconds, e.g. 1735689600.",
        ),
        (
            "/v1/usage",
            {"start_time": "-1"},
            "start_time",
            "start_time must be between 0 and 32503680000 (Unix seconds).",
        ),
        (
            "/v1/usage",
            {"end_time": str(unix(DAY1) * 1000)},
            "end_time",
            "end_time must be between 0 and 32503680000 (Unix seconds).",
        ),
        ("/v1/usage", {"end_time": unix(DAY1) - 1}, "end_time", "end_time must be after start_time."),
        ("/v1/usage/costs", {"end_time": unix(DAY1)}, "end_time", "end_time must be after start_time."),
        (
            "/v1/usage",
            {"end_time": unix(DAY1 + timedelta(days=93, seconds=1))},
            "end_time",
            "The range from start_time to end_time is longer than 93 days. Ask for at most 93 days at a time.",
        ),
        (
            "/v1/usage",
            {"group_by": "project_id,team"},
            "group_by",
            "Unknown group_by value 'team'. Group by any of: project_id, api_key_id, model, unit.",
        ),
        (
            "/v1/usage/costs",
            {"group_by": "model"},
            "group_by",
            "Unknown group_by value 'model'. Group by any of: project_id, line_item.",
        ),
        ("/v1/usage", {"bucket_width": "1m"}, "bucket_width", "bucket_width must be '1d' or '1h'."),
        ("/v1/usage/costs", {"bucket_width": "1h"}, "bucket_width", "bucket_width must be '1d'."),
        ("/v1/usage", {"limit": "94"}, "limit", "limit must be an integer between 1 and 93."),
        (
            "/v1/usage",
            {"page": "page_1"},
            "page",
            "page is not a cursor of this listing: pass the next_page of the previous response, "
            "with the same start_time, end_time and bucket_width.",
        ),
    ],
)
def test_bad_parameters_are_refused(
    api: Any, path: str, params: dict[str, Any], param: str, message: str
) -> None:
    response = get(api, path, **params)
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }


def test_a_range_of_93_days_is_allowed(api: Any, usage: dict[str, Any]) -> None:
    response = get(api, end_time=unix(DAY1 + timedelta(days=93)))
    assert response.status_code == 200
    assert len(response.json()["data"]) == 31  # the default page
    assert len(get(api, end_time=unix(DAY1 + timedelta(days=93)), limit=93).json()["data"]) == 93


def test_the_range_ends_now_by_default(api: Any, alice_project: Project) -> None:
    now = datetime.now(UTC)
    record(alice_project, now - timedelta(minutes=1), "input_tokens", 5, 3)
    response = api.get("/v1/usage", {"start_time": unix(now - timedelta(hours=2)), "bucket_width": "1h"})
    assert response.status_code == 200
    assert sum(r["cost"] for b in response.json()["data"] for r in b["results"]) == 3
    too_old = api.get("/v1/usage", {"start_time": unix(now - timedelta(days=94))})
    assert too_old.json()["error"]["param"] == "start_time"
    future = api.get("/v1/usage", {"start_time": unix(now + timedelta(hours=1))})
    assert future.json()["error"] == {
        "message": "start_time must be in the past when end_time is omitted (end_time defaults to now).",
        "type": "invalid_request_error",
        "param": "start_time",
        "code": None,
    }


def test_carol_sees_only_her_organization(
    carol_api: Any, usage: dict[str, Any], carol_project: Project
) -> None:
    everything = results(get(carol_api, group_by="project_id"))
    assert everything == [[result(999, 999_999, project_id=carol_project.public_id)], []]
    alice_projects = f"{usage['project'].public_id},{usage['research'].public_id}"
    assert results(get(carol_api, project_ids=alice_projects)) == [[], []]
    assert results(get(carol_api, api_key_ids=usage["key_a"].display_prefix)) == [[], []]
    costs = results(get(carol_api, "/v1/usage/costs", project_ids=alice_projects))
    assert costs == [[], []]


def test_it_needs_an_api_key(usage: dict[str, Any]) -> None:
    from rest_framework.test import APIClient

    response = get(APIClient())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_number_of_queries_does_not_grow_with_usage(
    api: Any, usage: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    for hour in range(24):
        for model in ("a", "b", "c"):
            record(
                usage["research"],
                DAY1 + timedelta(hours=hour),
                "input_tokens",
                1,
                1,
                model=model,
                api_key=usage["key_b"],
            )
    get(api)  # the key's last_used_at is written at most once a minute; take that write out of the count
    with django_assert_max_num_queries(3):
        response = get(api, bucket_width="1h", group_by="project_id,api_key_id,model,unit", limit=48)
    assert response.status_code == 200
    assert sum(len(b["results"]) for b in response.json()["data"]) == 24 * 3 + 3 + 1
    with django_assert_max_num_queries(3):
        assert get(api, "/v1/usage/costs", group_by="line_item,project_id").status_code == 200
