from __future__ import annotations

from typing import Any

# The OpenAI error `type` of each status, as the SDK reads it.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: in a response, in a stream, in a batch's error file."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ActionError(Exception):
    """A rule refused an action. The message is for the person who asked; `param` names the field."""

    def __init__(
        self, message: str, *, code: str = "invalid_request", param: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.status = status
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, error_type(self.status), self.code, self.param)


class PermissionDenied(ActionError):
    def __init__(self, message: str = "Only owners and admins can do that.") -> None:
        super().__init__(message, code="permission_denied", status=403)
