"""Plans and prices seeded from settings (a data migration and `prepare_models` call this)."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def seed_billing(plan_model: Any, price_model: Any) -> None:
    """Creates missing plans and prices; leaves rows staff have edited alone."""
    # A migration passes the model as it was then: only the settings it already had a field for.
    fields = {field.name for field in plan_model._meta.get_fields()}
    for plan in settings.PLANS:
        plan_model.objects.get_or_create(
            slug=plan["slug"], defaults={k: v for k, v in plan.items() if k != "slug" and k in fields}
        )
    for model_name, units in settings.PRICE_BOOK.items():
        for unit, price in units.items():
            price_model.objects.get_or_create(
                model_name=model_name, unit=unit, defaults={"micro_dollars_per_million": price}
            )
