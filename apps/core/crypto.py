"""Secrets at rest (organizations' own provider keys), encrypted with Fernet under FIELD_ENCRYPTION_KEY."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


class UnreadableSecret(Exception):
    """A stored secret that cannot be decrypted: it was encrypted under another FIELD_ENCRYPTION_KEY
    (the key was changed without re-encrypting), or the stored value is damaged."""


def _fernet() -> Fernet:
    return Fernet(settings.FIELD_ENCRYPTION_KEY.encode())


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    """Raises UnreadableSecret rather than answering "no secret": a caller that took an unreadable
    secret for a missing one would quietly fall back to something the owner did not choose."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except (InvalidToken, UnicodeError):
        raise UnreadableSecret from None
