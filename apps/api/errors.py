"""The OpenAI error shape, `{"error": {"message", "type", "param", "code"}}`, for every 4xx/5xx."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db.utils import InterfaceError as DatabaseInterfaceError
from django.db.utils import OperationalError as DatabaseOperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from rest_framework import exceptions
from rest_framework.response import Response

from apps.core.errors import ERROR_TYPES, ActionError, error_body

logger = logging.getLogger(__name__)

DatabaseUnavailable = (DatabaseOperationalError, DatabaseInterfaceError)


DEFAULT_MESSAGES = {
    400: "The request could not be understood.",
    401: "You didn't provide an API key. Send it as 'Authorization: Bearer sk-…'.",
    403: "You are not allowed to do that.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "The request is too large.",
    415: "Unsupported media type.",
    429: "Too many requests.",
    500: (
        "The server had an error while processing your request. "
        "Retry, and contact us with the request id if it persists."
    ),
    503: "The service is temporarily unavailable. Retry shortly.",
    504: "The request timed out.",
}


class APIError(exceptions.APIException):
    """Raise from any /v1/ view to answer with a specific status, code and param."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}


def error_response(
    status: int, message: str, *, code: str | None = None, param: str | None = None, type: str | None = None
) -> JsonResponse:
    body = error_body(message, type or ERROR_TYPES.get(status, "invalid_request_error"), code, param)
    return JsonResponse(body, status=status)


def error_response_for_status(status: int, request: HttpRequest | None = None) -> JsonResponse:
    message = DEFAULT_MESSAGES.get(status, "Request failed.")
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)
    if status == 404 and request is not None:
        message = f"Unknown request URL: {request.method} {request.path}."
        code = "unknown_url"
    if status == 403:
        code = "forbidden"
    return error_response(status, message, code=code)


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str]:
    if isinstance(detail, dict):
        for key, value in detail.items():
            sub = key if key != "non_field_errors" else ""
            return _first_validation_error(value, f"{path}.{sub}".strip(".") if sub else path)
    if isinstance(detail, list) and detail:
        if all(not isinstance(item, dict | list) for item in detail):
            return path or None, str(detail[0])
        for index, item in enumerate(detail):
            if item:
                return _first_validation_error(item, f"{path}[{index}]")
    return path or None, str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, APIError):
        status, message, code, param, type_ = exc.status_code, exc.message, exc.code, exc.param, exc.type
        headers = exc.headers
    elif isinstance(exc, ActionError):
        status, message, code, param = exc.status, exc.message, exc.code, exc.param
        type_ = ERROR_TYPES.get(exc.status, "invalid_request_error")
        if exc.code == "insufficient_quota":
            type_ = "insufficient_quota"
        headers = exc.headers
    elif isinstance(exc, exceptions.ValidationError):
        param, first = _first_validation_error(exc.detail)
        message = f"{param}: {first}" if param else first
        status, code, type_ = 400, "invalid_value", ERROR_TYPES[400]
    elif isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        status, param, type_ = 401, None, ERROR_TYPES[401]
        message = str(exc.detail)
        code = "invalid_api_key"
    elif isinstance(exc, Http404 | exceptions.NotFound):
        status, message, code, param, type_ = (
            404,
            str(exc) or "Not found.",
            "not_found",
            None,
            ERROR_TYPES[404],
        )
    elif isinstance(exc, exceptions.MethodNotAllowed):
        status, code, param, type_ = 405, "method_not_allowed", None, ERROR_TYPES[405]
        message = f"Method {context['request'].method} is not allowed on this URL."
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        status, code, param, type_ = 415, "unsupported_media_type", None, ERROR_TYPES[415]
        message = f"{exc.detail} Send JSON (application/json) or, for uploads, multipart/form-data."
    elif isinstance(exc, RequestDataTooBig):
        status, code, param, type_ = 413, "request_too_large", None, ERROR_TYPES[413]
        message = "The request body is too large."
    elif isinstance(exc, exceptions.Throttled):
        status, code, param, type_ = 429, "rate_limit_exceeded", None, "requests"
        message = "Rate limit reached. Slow down and retry after the time in the retry-after header."
        wait = getattr(exc, "wait", None)
        if wait is not None:
            headers["retry-after"] = str(max(1, int(wait + 0.999)))
    elif isinstance(exc, exceptions.ParseError):
        status, code, param, type_ = 400, "invalid_json", None, ERROR_TYPES[400]
        message = f"We could not parse the JSON body of your request. {exc.detail}"
    elif isinstance(exc, exceptions.PermissionDenied | DjangoPermissionDenied):
        status, code, param, type_ = 403, "forbidden", None, ERROR_TYPES[403]
        message = str(getattr(exc, "detail", "")) or DEFAULT_MESSAGES[403]
    elif isinstance(exc, exceptions.APIException):
        status, code, param, type_ = exc.status_code, None, None, ERROR_TYPES.get(exc.status_code, "error")
        message = str(exc.detail)
    elif isinstance(exc, DatabaseUnavailable):
        # PostgreSQL restarting or unreachable: a short outage, worth retrying (the SDK does).
        logger.warning("database unavailable in %s: %s", context.get("view"), exc)
        status, code, param, type_ = 503, "service_unavailable", None, ERROR_TYPES[503]
        message = DEFAULT_MESSAGES[503]
        headers["retry-after"] = "1"
    else:
        logger.exception("unhandled error in %s", context.get("view"))
        status, code, param, type_ = 500, "server_error", None, ERROR_TYPES[500]
        message = DEFAULT_MESSAGES[500]
    response = Response(error_body(message, type_, code, param), status=status, headers=headers)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return error_response_for_status(404, request)
    return TemplateResponse(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return error_response_for_status(500, request)
    from django.template import loader

    return HttpResponse(loader.get_template("500.html").render(), status=500)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/v1/"):
        if isinstance(exception, RequestDataTooBig):
            return error_response(413, "The request body is too large.", code="request_too_large")
        return error_response_for_status(400, request)
    return HttpResponse("<h1>Bad request</h1>", status=400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return error_response_for_status(403, request)
    return TemplateResponse(request, "403.html", {"message": str(exception or "")}, status=403)
