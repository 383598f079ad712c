"""`Authorization: Bearer sk-…` authentication for /v1/ (DESIGN.md §7)."""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.request import Request

from apps.accounts.models import ApiKey, Membership

MISSING = "You didn't provide an API key. Send it in the Authorization header as 'Bearer sk-…'."
INVALID = "Incorrect API key provided. You can find your API keys on the dashboard's API keys page."
REVOKED = "This API key has been revoked. Create a new key on the dashboard's API keys page."


def find_api_key(raw_key: str) -> ApiKey | None:
    """The active key for a raw secret, or None. Lookup by indexed prefix, constant-time compare."""
    prefix_len = len(ApiKey.PREFIX)
    if not raw_key.startswith(ApiKey.PREFIX) or len(raw_key) != prefix_len + 40:
        return None
    prefix = raw_key[prefix_len : prefix_len + 8]
    key = ApiKey.objects.select_related("project__organization", "created_by").filter(prefix=prefix).first()
    if key is None or not hmac.compare_digest(key.hashed_key, ApiKey.hash_secret(raw_key)):
        return None
    return key


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header:
            raise NotAuthenticated(MISSING)
        if header[0].lower() != b"bearer" or len(header) != 2:
            raise AuthenticationFailed(MISSING)
        try:
            raw = header[1].decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed(INVALID) from None
        key = find_api_key(raw)
        if key is None:
            raise AuthenticationFailed(INVALID)
        if key.revoked_at is not None:
            raise AuthenticationFailed(REVOKED)
        # A key stops working when the person who made it leaves the organization.
        if (
            key.created_by_id is None
            or not Membership.objects.filter(
                organization_id=key.project.organization_id, user_id=key.created_by_id
            ).exists()
        ):
            raise AuthenticationFailed(REVOKED)
        self._touch(key)
        return key.created_by, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'

    @staticmethod
    def _touch(key: ApiKey) -> None:
        # At most one write a minute per key: this runs on every request.
        now = timezone.now()
        resolution = timedelta(seconds=settings.API_KEY_LAST_USED_RESOLUTION_SECONDS)
        if key.last_used_at is None or now - key.last_used_at >= resolution:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
