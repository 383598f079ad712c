"""`{% pending_verification_email as email %}`: the address this browser's sign-up (or login) is
waiting to see confirmed; "" when none is waiting."""

from __future__ import annotations

from typing import Any

from django import template

from apps.accounts.verification import pending_verification

register = template.Library()


@register.simple_tag(takes_context=True)
def pending_verification_email(context: dict[str, Any]) -> str:
    request = context.get("request")
    pending = pending_verification(request) if request is not None else None
    return pending.email if pending is not None else ""
