"""Money as people read it. Amounts are integer micro-dollars everywhere (docs/architecture.md,
"Billing exactly once"); these turn them into text with exact decimal arithmetic, never a float."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_DOLLAR = 1_000_000
_MICROS = Decimal(MICROS_PER_DOLLAR)
_CENT = Decimal("0.01")
_DIME = Decimal("0.1")


def usd(micros: int) -> str:
    """1_234_567 → "$1.23". Under ten cents two significant digits are kept (14_400 → "$0.014",
    1_234 → "$0.0012"), so a small cost never reads as "$0.00"."""
    dollars = Decimal(micros) / _MICROS
    sign, amount = ("-" if dollars < 0 else ""), abs(dollars)
    if amount == 0 or amount >= _DIME:
        return f"{sign}${amount.quantize(_CENT, rounding=ROUND_HALF_UP):,}"
    # A micro-dollar (6 decimals) is the smallest unit there is.
    places = min(6, -amount.adjusted() + 1)
    small = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if small.adjusted() > amount.adjusted():  # rounded up a magnitude: 0.000999 → 0.0010
        places -= 1
        small = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    text = f"{small:f}".rstrip("0")
    return f"{sign}${text.ljust(len(text.split('.')[0]) + 3, '0')}"


def exact_usd(micros: int) -> str:
    """To the micro-dollar: 12_345_678 → "$12.345678"."""
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    return f"{sign}${micros // MICROS_PER_DOLLAR:,}.{micros % MICROS_PER_DOLLAR:06d}"


def dollars(micros: int) -> str:
    """A plain decimal number of dollars with every digit (a CSV column): 1_234_567 → "1.234567"."""
    return f"{Decimal(micros) / _MICROS:.6f}"


def dollars_field(micros: int | None) -> str:
    """The shortest exact value for a form field: 12_500_000 → "12.5"; None → ""."""
    if micros is None:
        return ""
    text = f"{Decimal(micros) / _MICROS:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def dollars_number(micros: int) -> float:
    """For wire formats that carry a JSON number of dollars (OpenAI's costs API) beside the exact
    integer micro-dollars: the nearest float to the exact decimal."""
    return float(Decimal(micros) / _MICROS)
