"""Usage and costs, grouped and bucketed: what the usage API and the dashboard's Usage page show.

Every figure is a `SUM` over `UsageRecord` rows done by the database, in integer micro-dollars, so
the API, the page, its chart and its CSV agree with the records, and with each other, to the
micro-dollar. Buckets are aligned to UTC days or hours; a range that starts or ends inside one
clips it, so a bucket's `start`/`end` say exactly which records it counts.

Scope: an organization's usage, every project of it. Callers pass the organization they have
already authorised (the API key's, or the dashboard's current one); nothing here crosses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour

from apps.accounts.models import ApiKey, Organization
from apps.billing.models import Unit, UsageRecord

BUCKET_WIDTHS = {"1d": timedelta(days=1), "1h": timedelta(hours=1)}
_TRUNCATE = {"1d": TruncDay, "1h": TruncHour}

# A group_by name → the column it groups on. `api_key_id` groups on the key's visible prefix
# (`sk-mw-…`), never on its row id; `line_item` (the costs API's name) is the model.
GROUP_COLUMNS = {
    "project_id": "project__public_id",
    "api_key_id": "api_key__prefix",
    "model": "model_name",
    "unit": "unit",
    "line_item": "model_name",
}
UNITS = [unit.value for unit in Unit]


@dataclass(frozen=True)
class Result:
    """One group's totals in one bucket; `group` has one entry per requested group_by name."""

    group: dict[str, str | None]
    quantity: int
    cost: int  # micro-dollars


@dataclass(frozen=True)
class Bucket:
    start: datetime
    end: datetime
    results: list[Result]


def align(moment: datetime, width: str) -> datetime:
    """The start of the UTC day or hour that holds `moment`."""
    moment = moment.astimezone(UTC)
    if width == "1d":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def bucket_edges(start: datetime, end: datetime, width: str) -> list[tuple[datetime, datetime]]:
    """The buckets covering [start, end): aligned to UTC days or hours, the first and last clipped."""
    step = BUCKET_WIDTHS[width]
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    edges = []
    edge = align(start, width)
    while edge < end:
        edges.append((max(edge, start), min(edge + step, end)))
        edge += step
    return edges


def records(
    organization: Organization,
    start: datetime,
    end: datetime,
    *,
    project_ids: Sequence[str] = (),
    api_key_ids: Sequence[str] = (),
    models: Sequence[str] = (),
) -> QuerySet[UsageRecord]:
    """The organization's usage records created in [start, end), optionally narrowed (empty: all)."""
    queryset = UsageRecord.objects.filter(
        organization=organization, created_at__gte=start, created_at__lt=end
    )
    if project_ids:
        queryset = queryset.filter(project__public_id__in=project_ids)
    if api_key_ids:
        prefixes = [key.removeprefix(ApiKey.PREFIX) for key in api_key_ids]
        queryset = queryset.filter(api_key__prefix__in=prefixes)
    if models:
        queryset = queryset.filter(model_name__in=models)
    return queryset


def _totals(queryset: QuerySet[UsageRecord], columns: Iterable[str]) -> QuerySet[Any]:
    # `order_by()` drops the model's default ordering, which would otherwise join the GROUP BY.
    return queryset.values(*columns).annotate(quantity=Sum("quantity"), cost=Sum("cost")).order_by()


def _group_value(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name == "api_key_id":
        return f"{ApiKey.PREFIX}{value}"
    return str(value)


def _sort_key(result: Result) -> tuple[tuple[bool, str], ...]:
    # Groups with no value (usage from the dashboard has no API key) sort last.
    return tuple((value is None, value or "") for value in result.group.values())


def usage_buckets(
    organization: Organization,
    edges: Sequence[tuple[datetime, datetime]],
    width: str,
    group_by: Sequence[str] = (),
    **filters: Sequence[str],
) -> list[Bucket]:
    """Totals per bucket and group over the given (contiguous) bucket edges, in one query.

    Every bucket is returned, an empty one with no results. Without `unit` in `group_by`, a
    result's quantity adds the units together (tokens and texts alike); its cost is always exact.
    """
    if not edges:
        return []
    columns = {name: GROUP_COLUMNS[name] for name in group_by}
    queryset = records(organization, edges[0][0], edges[-1][1], **filters).annotate(
        bucket=_TRUNCATE[width]("created_at", tzinfo=UTC)
    )
    by_bucket: dict[datetime, list[Result]] = {}
    for row in _totals(queryset, ["bucket", *dict.fromkeys(columns.values())]):
        group = {name: _group_value(name, row[column]) for name, column in columns.items()}
        result = Result(group=group, quantity=int(row["quantity"]), cost=int(row["cost"]))
        by_bucket.setdefault(row["bucket"], []).append(result)
    return [
        Bucket(start, end, sorted(by_bucket.get(align(start, width), []), key=_sort_key))
        for start, end in edges
    ]


# --- The dashboard's month ----------------------------------------------------------------------


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """[first instant of the month, first instant of the next), in UTC like `quotas.month_start`."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    following = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
    return start, following


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    costs: list[int]  # micro-dollars, one per day


@dataclass(frozen=True)
class DailyCosts:
    days: list[date]
    by_model: list[Series]
    by_unit: list[Series]
    total: int


def daily_costs(organization: Organization, start: datetime, end: datetime) -> DailyCosts:
    """Cost per UTC day in [start, end), split by model and, separately, by unit (one query)."""
    days = [edge.date() for edge, _ in bucket_edges(start, end, "1d")]
    index = {day: i for i, day in enumerate(days)}
    by_model: dict[str, list[int]] = {}
    by_unit: dict[str, list[int]] = {}
    queryset = records(organization, start, end).annotate(day=TruncDay("created_at", tzinfo=UTC))
    for row in _totals(queryset, ["day", "model_name", "unit"]):
        i = index[row["day"].date()]
        by_model.setdefault(row["model_name"], [0] * len(days))[i] += row["cost"]
        by_unit.setdefault(row["unit"], [0] * len(days))[i] += row["cost"]
    labels = dict(Unit.choices)
    return DailyCosts(
        days=days,
        by_model=[Series(name, name, by_model[name]) for name in sorted(by_model)],
        by_unit=[Series(unit, labels[unit], by_unit[unit]) for unit in UNITS if unit in by_unit],
        total=sum(sum(costs) for costs in by_model.values()),
    )


@dataclass
class Row:
    """One line of the Usage page's tables: a project, or an API key of a project."""

    project_id: str
    project_name: str
    api_key_id: str | None = None  # the visible prefix; None for usage without a key
    api_key_name: str = ""
    quantities: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNITS, 0))  # unit → quantity
    cost: int = 0  # micro-dollars

    def add(self, unit: str, quantity: int, cost: int) -> None:
        self.quantities[unit] = self.quantities.get(unit, 0) + quantity
        self.cost += cost

    @property
    def quantity_list(self) -> list[int]:
        """Quantities in `UNITS` order, for a table's columns."""
        return [self.quantities.get(unit, 0) for unit in UNITS]


@dataclass(frozen=True)
class Breakdown:
    by_project: list[Row]
    by_api_key: list[Row]
    total: Row


def breakdown(organization: Organization, start: datetime, end: datetime) -> Breakdown:
    """Quantities per unit and cost per project and per API key in [start, end) (one query)."""
    projects: dict[str, Row] = {}
    keys: dict[tuple[str, str | None], Row] = {}
    total = Row(project_id="", project_name="Total")
    columns = ["project__public_id", "project__name", "api_key__prefix", "api_key__name", "unit"]
    for row in _totals(records(organization, start, end), columns):
        project_id, project_name = row["project__public_id"], row["project__name"]
        key_id = _group_value("api_key_id", row["api_key__prefix"])
        project = projects.setdefault(project_id, Row(project_id, project_name))
        key = keys.setdefault(
            (project_id, key_id), Row(project_id, project_name, key_id, row["api_key__name"] or "")
        )
        for line in (project, key, total):
            line.add(row["unit"], row["quantity"], row["cost"])
    return Breakdown(
        by_project=sorted(projects.values(), key=lambda r: (-r.cost, r.project_name, r.project_id)),
        by_api_key=sorted(
            keys.values(), key=lambda r: (-r.cost, r.project_name, r.api_key_id is None, r.api_key_id or "")
        ),
        total=total,
    )


@dataclass(frozen=True)
class ExportRow:
    day: date
    project_id: str
    project_name: str
    api_key_id: str | None
    api_key_name: str
    model: str
    unit: str
    quantity: int
    cost: int  # micro-dollars


def export_rows(organization: Organization, start: datetime, end: datetime) -> list[ExportRow]:
    """One row per day × project × API key × model × unit in [start, end), in that order."""
    columns = [
        "day",
        "project__public_id",
        "project__name",
        "api_key__prefix",
        "api_key__name",
        "model_name",
        "unit",
    ]
    queryset = records(organization, start, end).annotate(day=TruncDay("created_at", tzinfo=UTC))
    rows = [
        ExportRow(
            day=row["day"].date(),
            project_id=row["project__public_id"],
            project_name=row["project__name"],
            api_key_id=_group_value("api_key_id", row["api_key__prefix"]),
            api_key_name=row["api_key__name"] or "",
            model=row["model_name"],
            unit=row["unit"],
            quantity=int(row["quantity"]),
            cost=int(row["cost"]),
        )
        for row in _totals(queryset, columns)
    ]
    rows.sort(key=lambda r: (r.day, r.project_name, r.project_id, r.api_key_id or "~", r.model, r.unit))
    return rows
