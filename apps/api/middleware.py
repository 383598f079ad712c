"""Request ids on every response (and in every log line), OpenAI-shaped errors under /v1/, and
pages' requests refused when they hold text the database cannot store."""

from __future__ import annotations

import contextvars
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from apps.core import hotcache
from apps.core.errors import ActionError
from apps.core.text import refuse_unstorable, refuse_unstorable_fields

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
logger = logging.getLogger("modelworks.requests")


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestIdMiddleware:
    """Gives each request an id (`req_…`), logs it with the request, returns it as `x-request-id`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = "req_" + secrets.token_hex(16)
        request.request_id = request_id  # type: ignore[attr-defined]
        token = request_id_var.set(request_id)
        started = time.monotonic()
        try:
            response = self.get_response(request)
            response["x-request-id"] = request_id
            elapsed_ms = int((time.monotonic() - started) * 1000)
            if request.path.startswith("/v1/"):
                response.setdefault("openai-processing-ms", str(elapsed_ms))
            logger.info("%s %s %s %dms", request.method, request.path, response.status_code, elapsed_ms)
            return response
        finally:
            request_id_var.reset(token)


class HotCacheMiddleware:
    """Lets a /v1/ request use the per-process copies of keys, plans and models
    (`apps.core.hotcache`): reads their generation token once, at the start."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/v1/"):
            return self.get_response(request)
        with hotcache.request_scope():
            return self.get_response(request)


class ApiErrorMiddleware:
    """Turns any non-JSON error Django produces under /v1/ (404, 405, 413, CSRF...) into the
    OpenAI error shape. DRF views already answer in that shape through `errors.exception_handler`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.path.startswith("/v1/")
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            from apps.api.errors import error_response_for_status

            replacement = error_response_for_status(response.status_code, request)
            for header in ("x-request-id", "Allow", "retry-after"):
                if header in response:
                    replacement[header] = response[header]
            return replacement
        return response


class RefuseUnstorableTextMiddleware:
    """A readable 400 page for a page request with NUL in its path, a query parameter or a form
    field: pages look such values up or store them, and PostgreSQL refuses NUL (a 500). /v1/
    checks its requests itself, after authentication (apps.api.base)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> HttpResponse | None:
        if request.path.startswith("/v1/"):
            return None
        try:
            refuse_unstorable(request.path, "The address")
            refuse_unstorable_fields(request.GET)
            # The CSRF check has read the form (a multipart one too) before this runs. A view exempt
            # from it reads its own body, as an upload must, to choose how: it is left alone.
            if request.method == "POST" and not getattr(view, "csrf_exempt", False):
                refuse_unstorable_fields(request.POST)
        except ActionError as exc:
            return TemplateResponse(request, "400.html", {"message": exc.message}, status=400).render()
        return None
