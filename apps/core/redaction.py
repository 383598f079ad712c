"""Secrets that travel in URLs never reach a log line.

An invitation link (`/invitations/<token>/`), a password-reset link
(`/accounts/password/reset/key/<uid>-<key>/`) and an email-confirmation link
(`/accounts/confirm-email/<key>/`) each grant what the token does to whoever reads it, and request
logs are read by more people, and kept longer, than the emails. The same paths also appear
percent-encoded in a `?next=` and in the Referer of the requests that follow. Django's log lines
pass through `RedactUrlSecrets` (saas/settings.py, LOGGING); gunicorn's access and error lines
through the same filter (saas/gunicorn_conf.py).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
# "/" as it appears in a path, in a `?next=` (percent-encoded) and in a next inside a next.
_SLASH = r"(?:/|%2F|%252F)"
_SECRET_IN_URL = re.compile(
    rf"(?P<prefix>(?:invitations|confirm-email|password{_SLASH}reset{_SLASH}key){_SLASH})"
    # The secret: up to the next slash, query, fragment, space or quote.
    rf"(?:(?!{_SLASH})[^/?&#\s\"'])+",
    re.IGNORECASE,
)


def redact_url_secrets(text: str) -> str:
    return _SECRET_IN_URL.sub(rf"\g<prefix>{REDACTED}", text)


class RedactUrlSecrets(logging.Filter):
    """Rewrites a record whose message carries a secret from a URL; keeps every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_url_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
