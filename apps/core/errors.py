from __future__ import annotations


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


class PermissionDenied(ActionError):
    def __init__(self, message: str = "Only owners and admins can do that.") -> None:
        super().__init__(message, code="permission_denied", status=403)
