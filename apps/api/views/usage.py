"""`/v1/usage` and `/v1/usage/costs`: an extension in the shape of OpenAI's organization usage and
costs APIs (`object: page` of time buckets, `has_more`, `next_page`).

Scope: an API key sees the usage of its whole organization, every project in it, because usage
and money belong to the organization (docs/architecture.md, "Tenants"); `project_ids` narrows it. Another
organization's usage is never counted, and its project ids simply match nothing.

Money is integer micro-dollars; the float `amount.value` of the costs API exists only for
OpenAI compatibility, next to the exact `amount.value_micros`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.models import Organization
from apps.api.base import ProjectAPIView, parse_limit
from apps.api.errors import APIError
from apps.api.serializers.common import ERRORS
from apps.billing import usage
from apps.billing.usage import Bucket, Result
from apps.core.money import dollars_number

MAX_RANGE = timedelta(days=93)
# Beyond year 3000 a timestamp is a typo (milliseconds, most likely), and year 9999 overflows.
MAX_TIMESTAMP = 32_503_680_000
USAGE_GROUPS = ("project_id", "api_key_id", "model", "unit")
COST_GROUPS = ("project_id", "line_item")
# Buckets per page: (default, maximum). A day's default covers a month; its maximum, the
# longest range (93 days), so daily usage always fits one page.
PAGE_SIZES = {"1d": (31, 93), "1h": (24, 168)}
_INTEGER = re.compile(r"-?[0-9]+")
# Page cursors are bucket start times: at most 11 digits (int() refuses strings over 4,300 digits).
_PAGE = re.compile(r"page_([0-9]{1,11})")


# --- Query parameters ----------------------------------------------------------------------------


def _timestamp(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    text = raw.strip()
    if not _INTEGER.fullmatch(text):
        raise APIError(f"{name} must be an integer: a Unix time in seconds, e.g. 1735689600.", param=name)
    # int() refuses strings of over 4,300 digits (leading zeros too): read only the significant ones.
    digits = text.lstrip("-").lstrip("0") or "0"
    negative = text.startswith("-") and digits != "0"
    if negative or len(digits) > len(str(MAX_TIMESTAMP)) or int(digits) > MAX_TIMESTAMP:
        raise APIError(f"{name} must be between 0 and {MAX_TIMESTAMP} (Unix seconds).", param=name)
    return datetime.fromtimestamp(int(digits), UTC)


def _list(request: Request, name: str) -> list[str]:
    """A list parameter, repeated (`?x=a&x=b`), comma-separated (`?x=a,b`) or as the OpenAI SDK
    sends arrays (`?x[]=a&x[]=b`)."""
    values = request.query_params.getlist(name) + request.query_params.getlist(f"{name}[]")
    return list(dict.fromkeys(item.strip() for value in values for item in value.split(",") if item.strip()))


def _group_by(request: Request, allowed: Sequence[str]) -> list[str]:
    group_by = _list(request, "group_by")
    for name in group_by:
        if name not in allowed:
            raise APIError(
                f"Unknown group_by value '{name}'. Group by any of: {', '.join(allowed)}.", param="group_by"
            )
    return group_by


def _bucket_width(request: Request, allowed: Sequence[str]) -> str:
    width = request.query_params.get("bucket_width") or "1d"
    if width not in allowed:
        choices = " or ".join(f"'{w}'" for w in allowed)
        raise APIError(f"bucket_width must be {choices}.", param="bucket_width")
    return width


def _range(request: Request) -> tuple[datetime, datetime]:
    start = _timestamp(request, "start_time")
    if start is None:
        raise APIError("Missing required parameter: 'start_time'.", param="start_time")
    end = _timestamp(request, "end_time")
    if end is None:
        end = timezone.now()
        if end <= start:
            raise APIError(
                "start_time must be in the past when end_time is omitted (end_time defaults to now).",
                param="start_time",
            )
    elif end <= start:
        raise APIError("end_time must be after start_time.", param="end_time")
    if end - start > MAX_RANGE:
        raise APIError(
            "The range from start_time to end_time is longer than 93 days. Ask for at most 93 days at a time.",
            param="end_time" if request.query_params.get("end_time") else "start_time",
        )
    return start, end


def _page(request: Request, edges: list[tuple[datetime, datetime]], width: str) -> tuple[int, int]:
    """The slice of bucket edges this page covers, as (first, last + 1)."""
    default, maximum = PAGE_SIZES[width]
    limit = parse_limit(request, default, maximum)
    first = 0
    page = request.query_params.get("page")
    if page:
        match = _PAGE.fullmatch(page)
        starts = [int(start.timestamp()) for start, _ in edges]
        if match is None or int(match.group(1)) not in starts:
            raise APIError(
                "page is not a cursor of this listing: pass the next_page of the previous response, "
                "with the same start_time, end_time and bucket_width.",
                param="page",
            )
        first = starts.index(int(match.group(1)))
    return first, min(first + limit, len(edges))


def _buckets(
    request: Request,
    organization: Organization,
    groups: Sequence[str],
    widths: Sequence[str],
    filters: Sequence[str],
) -> tuple[list[Bucket], str | None]:
    start, end = _range(request)
    width = _bucket_width(request, widths)
    group_by = _group_by(request, groups)
    edges = usage.bucket_edges(start, end, width)
    first, last = _page(request, edges, width)
    narrowed = {name: _list(request, name) for name in filters}
    buckets = usage.usage_buckets(organization, edges[first:last], width, group_by, **narrowed)
    next_page = f"page_{int(edges[last][0].timestamp())}" if last < len(edges) else None
    return buckets, next_page


def _page_body(buckets: list[Bucket], next_page: str | None, result: Any) -> dict[str, Any]:
    return {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": int(bucket.start.timestamp()),
                "end_time": int(bucket.end.timestamp()),
                "results": [result(r) for r in bucket.results],
            }
            for bucket in buckets
        ],
        "has_more": next_page is not None,
        "next_page": next_page,
    }


def usage_result(result: Result) -> dict[str, Any]:
    return {
        "object": "usage.result",
        "quantity": result.quantity,
        "cost": result.cost,
        "currency": "usd_micros",
        **{name: result.group.get(name) for name in USAGE_GROUPS},
    }


def cost_result(result: Result) -> dict[str, Any]:
    return {
        "object": "organization.costs.result",
        "amount": {"value": dollars_number(result.cost), "value_micros": result.cost, "currency": "usd"},
        "line_item": result.group.get("line_item"),
        "project_id": result.group.get("project_id"),
    }


# --- Schema --------------------------------------------------------------------------------------


def _page_serializer(name: str, result: serializers.Serializer) -> serializers.Serializer:
    bucket = inline_serializer(
        f"{name}Bucket",
        {
            "object": serializers.CharField(default="bucket"),
            "start_time": serializers.IntegerField(help_text="Unix seconds, inclusive."),
            "end_time": serializers.IntegerField(help_text="Unix seconds, exclusive."),
            "results": type(result)(many=True),
        },
    )
    return inline_serializer(
        f"{name}Page",
        {
            "object": serializers.CharField(default="page"),
            "data": type(bucket)(many=True),
            "has_more": serializers.BooleanField(),
            "next_page": serializers.CharField(
                allow_null=True, help_text="Pass as `page` for the next buckets."
            ),
        },
    )


def _grouped(help_text: str) -> serializers.CharField:
    return serializers.CharField(allow_null=True, help_text=f"{help_text} Null unless grouped by it.")


UsageResultSerializer = inline_serializer(
    "UsageResult",
    {
        "object": serializers.CharField(default="usage.result"),
        "quantity": serializers.IntegerField(
            help_text="Units used. Without group_by=unit this adds different units together."
        ),
        "cost": serializers.IntegerField(help_text="Cost in micro-dollars (1 USD = 1,000,000)."),
        "currency": serializers.CharField(default="usd_micros"),
        "project_id": _grouped("The project's id (proj_…)."),
        "api_key_id": _grouped("The API key's visible prefix (sk-mw-…); null also for usage without a key."),
        "model": _grouped("The model name."),
        "unit": _grouped("input_tokens, output_tokens, trained_tokens or classified_texts."),
    },
)
CostAmountSerializer = inline_serializer(
    "CostAmount",
    {
        "value": serializers.FloatField(
            help_text="US dollars, for OpenAI compatibility; value_micros is exact."
        ),
        "value_micros": serializers.IntegerField(help_text="Micro-dollars: the exact amount."),
        "currency": serializers.CharField(default="usd"),
    },
)
CostResultSerializer = inline_serializer(
    "CostResult",
    {
        "object": serializers.CharField(default="organization.costs.result"),
        "amount": CostAmountSerializer,
        "line_item": _grouped("The model name."),
        "project_id": _grouped("The project's id (proj_…)."),
    },
)


def _list_parameter(name: str, description: str, enum: Sequence[str] | None = None) -> OpenApiParameter:
    return OpenApiParameter(name, str, many=True, explode=True, enum=enum, description=description)


TIMESTAMP = {"type": "integer", "minimum": 0, "maximum": MAX_TIMESTAMP}
RANGE_PARAMETERS = [
    OpenApiParameter(
        "start_time", TIMESTAMP, required=True, description="Start of the range, Unix seconds (inclusive)."
    ),
    OpenApiParameter(
        "end_time",
        TIMESTAMP,
        description="End of the range, Unix seconds (exclusive). Default: now. At most 93 days.",
    ),
]
PAGE_PARAMETERS = [
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": max(maximum for _, maximum in PAGE_SIZES.values())},
        description="Buckets per page. 1d: default 31, at most 93. 1h: 24, at most 168.",
    ),
    OpenApiParameter("page", OpenApiTypes.STR, description="The next_page cursor of the previous response."),
]


# --- Views ---------------------------------------------------------------------------------------


class UsageView(ProjectAPIView):
    @extend_schema(
        operation_id="listUsage",
        summary="Usage by time bucket",
        description=(
            "Extension: the quantities and costs of the API key's organization (all its projects), per UTC "
            "day or hour. Buckets without usage are included with no results. Grouping fields are null "
            "unless named in group_by. Lists (group_by, project_ids, api_key_ids, models) may be repeated or "
            "comma-separated."
        ),
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter("bucket_width", str, enum=["1d", "1h"], description="Bucket width. Default 1d."),
            _list_parameter("group_by", "Split results by these fields.", USAGE_GROUPS),
            _list_parameter("project_ids", "Only these projects (proj_…)."),
            _list_parameter("api_key_ids", "Only these API keys (their sk-mw-… prefixes)."),
            _list_parameter("models", "Only these models."),
            *PAGE_PARAMETERS,
        ],
        responses={200: _page_serializer("Usage", UsageResultSerializer), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        buckets, next_page = _buckets(
            request, self.organization, USAGE_GROUPS, ("1d", "1h"), ("project_ids", "api_key_ids", "models")
        )
        return Response(_page_body(buckets, next_page, usage_result))


class UsageCostsView(ProjectAPIView):
    @extend_schema(
        operation_id="listUsageCosts",
        summary="Costs by day",
        description=(
            "Extension in the shape of OpenAI's organization costs API: the cost of the API key's "
            "organization (all its projects) per UTC day. group_by=line_item splits by model."
        ),
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter("bucket_width", str, enum=["1d"], description="Only 1d."),
            _list_parameter("group_by", "Split results by these fields.", COST_GROUPS),
            _list_parameter("project_ids", "Only these projects (proj_…)."),
            *PAGE_PARAMETERS,
        ],
        responses={200: _page_serializer("Costs", CostResultSerializer), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        buckets, next_page = _buckets(request, self.organization, COST_GROUPS, ("1d",), ("project_ids",))
        return Response(_page_body(buckets, next_page, cost_result))
