"""The price book: integer micro-dollars per model and unit. Money is never a float."""

from __future__ import annotations

from django.conf import settings


def unit_price(model_name: str, unit: str) -> int:
    """Micro-dollars per 1,000,000 units for this model (its base model's price for fine-tunes)."""
    book: dict[str, dict[str, int]] = settings.PRICE_BOOK
    for name in _lookup_names(model_name):
        if unit in book.get(name, {}):
            return book[name][unit]
    return book["default"].get(unit, 0)


def _lookup_names(model_name: str) -> list[str]:
    # ft:{base}:{org}:{suffix}:{job} is priced as its base model.
    if model_name.startswith("ft:"):
        return [model_name, model_name.split(":")[1]]
    return [model_name]


def cost_of(model_name: str, unit: str, quantity: int) -> int:
    """Rounded up to the next micro-dollar, so a tiny request is never free by rounding."""
    price = unit_price(model_name, unit)
    return -(-price * quantity // 1_000_000)
