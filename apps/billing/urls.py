"""Billing's own route, included at /billing/: the Stripe webhook. The billing pages are the
dashboard's (`apps/dashboard/urls.py`)."""

from django.urls import path

from apps.billing import webhooks

app_name = "billing"

urlpatterns = [
    path("stripe/webhook", webhooks.stripe_webhook, name="webhook"),
]
