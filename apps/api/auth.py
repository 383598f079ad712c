"""`Authorization: Bearer sk-…` authentication for /v1/ (docs/architecture.md, "The API edge")."""

from __future__ import annotations

import hmac
import ipaddress
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.http import HttpRequest
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.request import Request

from apps.accounts.models import ApiKey, Membership
from apps.api.errors import APIError
from apps.billing import ratelimit
from apps.core.hotcache import HotCache

MISSING = "You didn't provide an API key. Send it in the Authorization header as 'Bearer sk-…'."
INVALID = "Incorrect API key provided. You can find your API keys on the dashboard's API keys page."
REVOKED = "This API key has been revoked. Create a new key on the dashboard's API keys page."
EXPIRED = "This API key expired on {date} UTC. Create a new key on the dashboard's API keys page."
DEACTIVATED = (
    "The account that created this API key is deactivated, so the key no longer works. "
    "Ask an owner or admin of your organization for a key of an active account."
)
TOO_MANY_FAILURES = "Too many requests with an incorrect API key from your IP address. Retry after {wait} s."


@dataclass
class _KnownKey:
    """A key as authentication reads it, with whether its creator is still a member."""

    key: ApiKey
    member: bool


_KEYS: HotCache[_KnownKey] = HotCache("api keys")


def _load_key(prefix: str) -> _KnownKey | None:
    # One query: the key, its project, organization and creator, and the creator's membership.
    membership = Membership.objects.filter(
        organization_id=OuterRef("project__organization_id"), user_id=OuterRef("created_by_id")
    )
    key = (
        ApiKey.objects.select_related("project__organization", "created_by")
        .annotate(creator_is_member=Exists(membership))
        .filter(prefix=prefix)
        .first()
    )
    if key is None:
        return None
    return _KnownKey(key, bool(key.creator_is_member))


def _known_key(raw_key: str) -> _KnownKey | None:
    """The key for a raw secret, or None. Lookup by indexed prefix (a copy kept for the request
    path, apps.core.hotcache), constant-time compare."""
    prefix_len = len(ApiKey.PREFIX)
    if not raw_key.startswith(ApiKey.PREFIX) or len(raw_key) != prefix_len + 40:
        return None
    prefix = raw_key[prefix_len : prefix_len + 8]
    known = _KEYS.get(prefix, lambda: _load_key(prefix))
    if known is None or not hmac.compare_digest(known.key.hashed_key, ApiKey.hash_secret(raw_key)):
        return None
    return known


def client_address(request: HttpRequest) -> str:
    """The client's IP address: REMOTE_ADDR, or behind our TLS proxy the address it appended to
    X-Forwarded-For (entries left of it come from the client and are ignored). An IPv6 address
    stands for its /64, which one client usually holds whole."""
    candidates = [request.META.get("REMOTE_ADDR", "")]
    if settings.BEHIND_TLS_PROXY:
        candidates.insert(0, request.META.get("HTTP_X_FORWARDED_FOR", "").rsplit(",", 1)[-1].strip())
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if address.version == 6:
            return str(ipaddress.IPv6Network((address, 64), strict=False).network_address)
        return str(address)
    return "unknown"


def _failures(address: str, *, count: bool) -> ratelimit.Decision:
    step = ratelimit.take if count else ratelimit.peek
    return step(
        f"auth-failures:{address}",
        settings.API_KEY_FAILURE_LIMIT,
        window=settings.API_KEY_FAILURE_WINDOW_SECONDS,
    )


def _too_many_failures(decision: ratelimit.Decision) -> APIError:
    # The block lifts once the weighted count has room for one more failure: at the latest a
    # 1/limit part of the window after the current fixed window ends (see apps.billing.ratelimit).
    wait = max(
        1, math.ceil(decision.reset_seconds + settings.API_KEY_FAILURE_WINDOW_SECONDS / decision.limit)
    )
    return APIError(
        TOO_MANY_FAILURES.format(wait=wait),
        status=429,
        code="rate_limit_exceeded",
        headers={"retry-after": str(wait)},
    )


def refuse_if_failing(address: str) -> None:
    """429 while `address` has no failed authentication left, whatever key it sends now."""
    decision = _failures(address, count=False)
    if not decision.allowed:
        raise _too_many_failures(decision)


def count_failure(address: str) -> None:
    """Counts one failed authentication; one past the limit is answered 429 instead of 401.
    Checking and counting are one Redis step, so concurrent guesses cannot slip past the limit."""
    decision = _failures(address, count=True)
    if not decision.allowed:
        raise _too_many_failures(decision)


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header:
            # Nothing presented, nothing guessed: not counted as a failure.
            raise NotAuthenticated(MISSING)
        address = client_address(request._request)
        refuse_if_failing(address)
        try:
            return self._check(header)
        except AuthenticationFailed:
            count_failure(address)
            raise

    def _check(self, header: list[bytes]) -> tuple[Any, ApiKey]:
        if header[0].lower() != b"bearer" or len(header) != 2:
            raise AuthenticationFailed(MISSING)
        try:
            raw = header[1].decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed(INVALID) from None
        known = _known_key(raw)
        if known is None:
            raise AuthenticationFailed(INVALID)
        key = known.key
        if key.revoked_at is not None:
            raise AuthenticationFailed(REVOKED)
        if key.is_expired:
            assert key.expires_at is not None
            raise AuthenticationFailed(EXPIRED.format(date=f"{key.expires_at:%Y-%m-%d %H:%M}"))
        # A key acts as the person who made it, with their role as it is now: it stops working
        # when they leave the organization, and when their account is switched off (their
        # sessions end then too: Django's ModelBackend refuses inactive users).
        creator = key.created_by
        if creator is None or not known.member:
            raise AuthenticationFailed(REVOKED)
        if not creator.is_active:
            raise AuthenticationFailed(DEACTIVATED)
        self._touch(key)
        return creator, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'

    @staticmethod
    def _touch(key: ApiKey) -> None:
        # At most one write a minute per key: this runs on every request. The next request reads
        # the key again, so that the copy it uses knows of this write (apps.core.hotcache).
        now = timezone.now()
        resolution = timedelta(seconds=settings.API_KEY_LAST_USED_RESOLUTION_SECONDS)
        if key.last_used_at is None or now - key.last_used_at >= resolution:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
            _KEYS.forget(key.prefix)
