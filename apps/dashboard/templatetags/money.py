"""`usd`: integer micro-dollars (how money is stored: docs/architecture.md, "Billing exactly once"),
shown as dollars."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django import template

register = template.Library()

MICROS_PER_DOLLAR = Decimal(1_000_000)
CENT = Decimal("0.01")
DIME = Decimal("0.1")


@register.filter
def usd(micros: Any) -> str:
    """1_234_567 → "$1.23". Under ten cents two significant digits are kept (14_400 → "$0.014",
    1_234 → "$0.0012"), so a small cost never reads as "$0.00". Empty values render as ""."""
    if micros is None or micros == "":
        return ""
    try:
        dollars = Decimal(int(micros)) / MICROS_PER_DOLLAR
    except (TypeError, ValueError):
        return ""
    sign, amount = ("-" if dollars < 0 else ""), abs(dollars)
    if amount == 0 or amount >= DIME:
        return f"{sign}${amount.quantize(CENT, rounding=ROUND_HALF_UP):,}"
    # A micro-dollar (6 decimals) is the smallest unit there is.
    places = min(6, -amount.adjusted() + 1)
    small = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if small.adjusted() > amount.adjusted():  # rounded up a magnitude: 0.000999 → 0.0010
        places -= 1
        small = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    text = f"{small:f}".rstrip("0")
    return f"{sign}${text.ljust(len(text.split('.')[0]) + 3, '0')}"
