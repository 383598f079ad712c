"""The Usage page of the current organization: spend against credit and limit, a daily chart,
tables by project and API key, and a CSV export, for one calendar month (UTC).

Every number comes from `apps.billing.usage`, i.e. from SUMs over the usage records, so the
page, its chart's JSON and the CSV agree with the records to the micro-dollar.
"""

from __future__ import annotations

import csv
import re
from datetime import date
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from apps.accounts.middleware import OrganizationRequest
from apps.billing import usage as billing_usage
from apps.billing.models import Unit
from apps.billing.quotas import spend_cap, subscription_for
from apps.core.money import dollars
from apps.core.spreadsheet import safe_cell
from apps.dashboard.views.common import member_required

_MONTH = re.compile(r"(\d{4})-(\d{2})")
CSV_HEADER = [
    "date",
    "project_id",
    "project",
    "api_key_id",
    "api_key",
    "model",
    "unit",
    "quantity",
    "cost_micros",
    "cost_usd",
]


def _month(request: HttpRequest) -> date:
    """`?month=YYYY-MM`, or the current month (UTC). A malformed month is a 404."""
    raw = request.GET.get("month")
    if not raw:
        return timezone.now().date().replace(day=1)
    match = _MONTH.fullmatch(raw)
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
        raise Http404("No such month")
    return date(int(match.group(1)), int(match.group(2)), 1)


def _shift(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _spend(organization: Any, spent: int) -> dict[str, Any]:
    """This month's spend against the plan's included credit and the organization's spend limit."""
    subscription = subscription_for(organization)
    plan = subscription.plan
    cap = spend_cap(subscription)
    # The bar measures against the cap; on a paid plan without a limit, against the credit.
    scale = cap if cap is not None else plan.included_credit
    return {
        "plan": plan,
        "spent": spent,
        "included_credit": plan.included_credit,
        "credit_left": max(0, plan.included_credit - spent),
        "beyond_credit": max(0, spent - plan.included_credit) if plan.usage_beyond_credit else 0,
        "usage_beyond_credit": plan.usage_beyond_credit,
        "spend_limit": subscription.spend_limit,
        "cap": cap,
        "scale": scale,
        "percent": min(100, spent * 100 // scale) if scale else (100 if spent else 0),
        "is_capped": cap is not None and spent >= cap,
    }


@member_required
@require_GET
def usage(request: OrganizationRequest) -> HttpResponse:
    organization = request.organization
    month = _month(request)
    start, end = billing_usage.month_bounds(month)
    current = timezone.now().date().replace(day=1)
    tables = billing_usage.breakdown(organization, start, end)
    context = {
        "month": month,
        "month_param": month.strftime("%Y-%m"),
        "is_current_month": month == current,
        "previous_month": _shift(month, -1).strftime("%Y-%m"),
        "next_month": _shift(month, 1).strftime("%Y-%m") if month < current else None,
        "units": [label for _, label in Unit.choices],
        "tables": tables,
        "spend": _spend(organization, tables.total.cost) if month == current else None,
    }
    return render(request, "dashboard/usage.html", context)


@member_required
@require_GET
def usage_daily(request: OrganizationRequest) -> JsonResponse:
    """The chart's data: cost per day of the month, by model and by unit, in micro-dollars."""
    month = _month(request)
    daily = billing_usage.daily_costs(request.organization, *billing_usage.month_bounds(month))
    return JsonResponse(
        {
            "object": "usage.daily",
            "month": month.strftime("%Y-%m"),
            "currency": "usd_micros",
            "days": [day.isoformat() for day in daily.days],
            "by_model": [{"key": s.key, "label": s.label, "costs": s.costs} for s in daily.by_model],
            "by_unit": [{"key": s.key, "label": s.label, "costs": s.costs} for s in daily.by_unit],
            "total": daily.total,
        }
    )


@member_required
@require_GET
def usage_export(request: OrganizationRequest) -> HttpResponse:
    """The month's usage as CSV: one row per day × project × API key × model × unit."""
    organization = request.organization
    month = _month(request)
    rows = billing_usage.export_rows(organization, *billing_usage.month_bounds(month))
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    filename = f"usage-{organization.public_id}-{month:%Y-%m}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow(
            [
                safe_cell(value)
                for value in (
                    row.day.isoformat(),
                    row.project_id,
                    row.project_name,
                    row.api_key_id or "",
                    row.api_key_name,
                    row.model,
                    row.unit,
                    row.quantity,
                    row.cost,
                    dollars(row.cost),
                )
            ]
        )
    return response
