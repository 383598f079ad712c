"""The one base for /v1/ views: every query is scoped to the API key's project."""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterable
from typing import Any

from django.db.models import QuerySet
from django.utils.datastructures import MultiValueDict
from rest_framework.exceptions import ParseError
from rest_framework.negotiation import BaseContentNegotiation, DefaultContentNegotiation
from rest_framework.parsers import BaseParser, JSONParser, get_encoding  # type: ignore[attr-defined]  # not in the stubs yet
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.json import strict_constant
from rest_framework.views import APIView

from apps.accounts.models import ApiKey, Organization
from apps.api.errors import APIError
from apps.core.text import refuse_unstorable, refuse_unstorable_fields
from apps.projects.models import Project


class IgnoreAcceptNegotiation(BaseContentNegotiation):
    """Answers JSON whatever the Accept header asks for, as OpenAI does: the SDK sends
    `Accept: application/binary` for file content, and a 406 there would break it. Raw bytes
    and event streams are Django responses that bypass the renderers anyway."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return DefaultContentNegotiation().select_parser(request, parsers)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class JSONBodyParser(JSONParser):
    """DRF's JSON parser, refusing as unparsable what it lets through as 500s or worded for Python
    programmers: a body nested past Python's recursion limit, a number too large for a float
    (`1e400` would read as infinity, which no JSON column stores) and an integer too long for int()."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        reader = codecs.getreader(get_encoding(parser_context or {}))(stream)
        try:
            return json.load(
                reader, parse_constant=strict_constant, parse_float=_finite_float, parse_int=_integer
            )
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # over 4,300 digits
        raise ValueError(f"the number {text[:20]}… has too many digits") from None


def refuse_unstorable_request(request: Request, path_parameters: dict[str, Any], *, with_body: bool) -> None:
    """400 for NUL or a lone surrogate anywhere the client wrote text: path parameters, query
    parameters (names too), the Idempotency-Key header and the body (JSON at any depth, keys too,
    or form fields). The Authorization header is checked before authentication instead."""
    for name, value in path_parameters.items():
        refuse_unstorable(value, name)
    refuse_unstorable_fields(request.query_params)
    refuse_unstorable(request.headers.get("Idempotency-Key", ""), "Idempotency-Key")
    if not with_body:
        return
    data = request.data
    if isinstance(data, MultiValueDict):
        refuse_unstorable_fields(data)
    else:
        refuse_unstorable(data)


class ProjectAPIView(APIView):
    # Base for every authenticated /v1/ view. `self.project` is the API key's project.
    # Objects are looked up with `get_scoped` only, so another tenant's id is a 404 that looks
    # exactly like an id that does not exist.
    # (A comment, not a docstring: drf-spectacular would print a docstring as the description
    # of every endpoint that inherits it, in the public API reference.)

    content_negotiation_class = IgnoreAcceptNegotiation
    # JSON bodies, as OpenAI's; the file upload takes multipart forms instead.
    parser_classes: list[type[BaseParser]] = [JSONBodyParser]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # The key is looked up in the database during authentication: check it first.
        refuse_unstorable(request.headers.get("Authorization", ""), "Authorization")
        super().initial(request, *args, **kwargs)
        # After authentication, so that a request without a valid key gets its 401 whatever it holds.
        # The body only where a handler will read it: an unknown method stays a plain 405.
        handler = getattr(self, (request.method or "").lower(), None)
        refuse_unstorable_request(request, kwargs, with_body=handler is not None)

    @property
    def api_key(self) -> ApiKey:
        assert isinstance(self.request.auth, ApiKey)
        return self.request.auth

    @property
    def project(self) -> Project:
        return self.api_key.project

    @property
    def organization(self) -> Organization:
        return self.api_key.project.organization

    def get_scoped(
        self, queryset: QuerySet[Any], public_id: str, *, noun: str, field: str = "public_id"
    ) -> Any:
        obj = queryset.filter(**{field: public_id}).first()
        if obj is None:
            raise APIError(f"No such {noun}: '{public_id}'.", status=404, code="not_found", param="id")
        return obj


def parse_limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise APIError(f"limit must be an integer between 1 and {maximum}.", param="limit") from None
    if not 1 <= limit <= maximum:
        raise APIError(f"limit must be an integer between 1 and {maximum}.", param="limit")
    return limit


def cursor_page(
    request: Request,
    queryset: QuerySet[Any],
    to_dict: Any,
    *,
    default_limit: int = 20,
    max_limit: int = 100,
    ascending: bool = False,
    first_last: bool = False,
    id_field: str = "public_id",
) -> Response:
    """OpenAI cursor pagination: `after=<id>&limit=N` → `{object: list, data, has_more}`.

    Rows are ordered by their internal key, which only ever grows, so a page boundary stays put
    while new rows arrive.
    """
    limit = parse_limit(request, default_limit, max_limit)
    queryset = queryset.order_by("id" if ascending else "-id")
    after = request.query_params.get("after")
    if after:
        # values_list, not only("id"): a queryset with select_related cannot defer its relations.
        anchor = queryset.filter(**{id_field: after}).values_list("id", flat=True).first()
        if anchor is None:
            raise APIError(
                f"No such object for 'after': '{after}'.", param="after", code="not_found", status=404
            )
        queryset = queryset.filter(id__gt=anchor) if ascending else queryset.filter(id__lt=anchor)
    rows = list(queryset[: limit + 1])
    data = [to_dict(row) for row in rows[:limit]]
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": len(rows) > limit}
    if first_last:
        body["first_id"] = data[0]["id"] if data else None
        body["last_id"] = data[-1]["id"] if data else None
    return Response(body)
