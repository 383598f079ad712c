"""`usd`: integer micro-dollars shown as dollars in templates, by the one formatter
(`apps.core.money.usd`). Empty values render as ""."""

from __future__ import annotations

from typing import Any

from django import template

from apps.core import money

register = template.Library()


@register.filter
def usd(micros: Any) -> str:
    if micros is None or micros == "":
        return ""
    try:
        return money.usd(int(micros))
    except (TypeError, ValueError):
        return ""
