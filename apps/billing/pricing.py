"""The price book: integer micro-dollars per model and unit. Money is never a float.

Prices live in the database (`billing.Price`, editable in admin, seeded from settings.PRICE_BOOK);
settings are the fallback for a price not in the table. Every cost anywhere — estimates, usage
records, the dashboard, meter events — comes from `cost_of`.
"""

from __future__ import annotations

import time

from django.conf import settings

_CACHE: dict[tuple[str, str], int] = {}
_LOADED_AT = 0.0
_TTL_SECONDS = 30


def _book() -> dict[tuple[str, str], int]:
    """The price table, re-read every 30 s so admin edits apply without a restart."""
    global _LOADED_AT
    if time.monotonic() - _LOADED_AT > _TTL_SECONDS:
        from apps.billing.models import Price

        fresh = {(p.model_name, p.unit): p.micro_dollars_per_million for p in Price.objects.all()}
        _CACHE.clear()
        _CACHE.update(fresh)
        _LOADED_AT = time.monotonic()
    return _CACHE


def _lookup_names(model_name: str) -> list[str]:
    # ft:{base}:{org}:{suffix}:{job} is priced as its base model.
    if model_name.startswith("ft:"):
        return [model_name, model_name.split(":")[1], "default"]
    return [model_name, "default"]


def unit_price(model_name: str, unit: str) -> int:
    """Micro-dollars per 1,000,000 units for this model."""
    book = _book()
    fallback: dict[str, dict[str, int]] = settings.PRICE_BOOK
    for name in _lookup_names(model_name):
        if (name, unit) in book:
            return book[(name, unit)]
        if unit in fallback.get(name, {}):
            return fallback[name][unit]
    return 0


def cost_of(model_name: str, unit: str, quantity: int) -> int:
    """Rounded up to the next micro-dollar, so a tiny request is never free by rounding."""
    price = unit_price(model_name, unit)
    return -(-price * quantity // 1_000_000)
