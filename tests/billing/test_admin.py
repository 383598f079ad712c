"""Staff see every billing model in admin, failed webhook events with their error included."""

from __future__ import annotations

from typing import Any

from apps.accounts.models import User
from apps.billing.models import StripeEvent
from tests.conftest import login


def test_billing_models_are_in_admin(client: Any, db: None) -> None:
    StripeEvent.objects.create(
        event_id="evt_failed",
        type="invoice.paid",
        created=1,
        outcome="failed: boom",
        error="Traceback (most recent call last): boom",
    )
    login(client, User.objects.create_superuser("staff@example.com", "pw"))

    for model in ("plan", "price", "subscription", "invoice", "stripeevent", "meterevent", "usagerecord"):
        assert client.get(f"/admin/billing/{model}/").status_code == 200, model
    listing = client.get("/admin/billing/stripeevent/?processed_at__isempty=1").content.decode()
    assert "evt_failed" in listing and "failed: boom" in listing
    detail = client.get(f"/admin/billing/stripeevent/{StripeEvent.objects.get().pk}/change/").content.decode()
    assert "Traceback (most recent call last): boom" in detail
