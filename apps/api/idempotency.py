"""`Idempotency-Key` on creating POSTs (docs/architecture.md, "The API edge").

The first request with a key claims it by inserting a row (the unique constraint decides who
wins a race); its response is stored and replayed to every repeat from the same project for
24 hours. A repeat with a different body gets 400 `idempotency_key_reused`. A repeat that
arrives while the first is still running waits for it briefly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.errors import APIError
from apps.api.models import IdempotencyRecord
from apps.projects.models import Project

WAIT_FOR_FIRST_SECONDS = 15
# A claim whose request died without storing a response is released after this long.
ABANDONED_AFTER = timedelta(minutes=5)

Handler = Callable[..., Response]


def idempotent(fingerprint: Callable[[Any, Request], str]) -> Callable[[Handler], Handler]:
    def decorator(handler: Handler) -> Handler:
        @wraps(handler)
        def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
            key = request.headers.get("Idempotency-Key")
            if not key:
                return handler(view, request, *args, **kwargs)
            if len(key) > 255:
                raise APIError("Idempotency-Key must be at most 255 characters.", param="Idempotency-Key")
            project = view.project
            digest = fingerprint(view, request)
            record = _claim(project, key, digest)
            if record is not None:
                return _replay(record, digest)
            try:
                response = handler(view, request, *args, **kwargs)
            except Exception:
                IdempotencyRecord.objects.filter(project=project, key=key, status_code__isnull=True).delete()
                raise
            if response.status_code < 500:
                IdempotencyRecord.objects.filter(project=project, key=key).update(
                    status_code=response.status_code, response_body=response.data
                )
            else:
                IdempotencyRecord.objects.filter(project=project, key=key).delete()
            return response

        return wrapper

    return decorator


def _claim(project: Project, key: str, digest: str) -> IdempotencyRecord | None:
    """None if this request owns the key now; otherwise the existing record to replay."""
    now = timezone.now()
    expired = now - timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    IdempotencyRecord.objects.filter(project=project, key=key, created_at__lt=expired).delete()
    IdempotencyRecord.objects.filter(
        project=project, key=key, status_code__isnull=True, created_at__lt=now - ABANDONED_AFTER
    ).delete()
    try:
        with transaction.atomic():
            IdempotencyRecord.objects.create(project=project, key=key, fingerprint=digest)
        return None
    except IntegrityError:
        existing = IdempotencyRecord.objects.get(project=project, key=key)
        return existing


def _replay(record: IdempotencyRecord, digest: str) -> Response:
    if record.fingerprint != digest:
        raise APIError(
            "This Idempotency-Key was already used with a different request body. "
            "Use a new key for a different request.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    deadline = time.monotonic() + WAIT_FOR_FIRST_SECONDS
    while record.status_code is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            record.refresh_from_db()
        except IdempotencyRecord.DoesNotExist:
            break  # the first request failed and released the key
    if record.status_code is None:
        raise APIError(
            "A request with this Idempotency-Key is still being processed. Retry shortly.",
            status=409,
            code="idempotency_key_in_use",
            param="Idempotency-Key",
        )
    response = Response(record.response_body, status=record.status_code)
    response["Idempotent-Replayed"] = "true"
    return response


def json_fingerprint(view: Any, request: Request) -> str:
    import hashlib
    import json

    payload = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{payload}".encode()).hexdigest()
