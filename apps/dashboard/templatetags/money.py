"""`usd`: integer micro-dollars shown as dollars in templates, by the one formatter
(`apps.core.money.usd`); `exact_usd`: to the micro-dollar, for a hover where exactness matters.
Empty values render as ""."""

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


@register.filter
def exact_usd(micros: Any) -> str:
    if micros is None or micros == "":
        return ""
    try:
        return money.exact_usd(int(micros))
    except (TypeError, ValueError):
        return ""
