"""Secrets at rest (organizations' own provider keys), encrypted with Fernet."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    key = settings.FIELD_ENCRYPTION_KEY
    if not key:
        # Development fallback: derived from SECRET_KEY, so it is stable across restarts.
        key = base64.urlsafe_b64encode(
            hashlib.sha256(("fields:" + settings.SECRET_KEY).encode()).digest()
        ).decode()
    return Fernet(key.encode())


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str | None:
    """None when the token cannot be read (the key was rotated without re-encrypting)."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return None
