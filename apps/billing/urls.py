"""Billing routes, included at /billing/ (the billing page itself is `dashboard:billing`)."""

from django.urls import path

from apps.billing import webhooks
from apps.dashboard.views import billing

app_name = "billing"

urlpatterns = [
    path("stripe/webhook", webhooks.stripe_webhook, name="webhook"),
    path("checkout", billing.checkout, name="checkout"),
    path("checkout/return", billing.checkout_return, name="return"),
    path("portal", billing.portal, name="portal"),
    path("limits", billing.limits, name="limits"),
    path("openai-key", billing.openai_key, name="openai_key"),
    path("openai-key/remove", billing.openai_key_remove, name="openai_key_remove"),
]
