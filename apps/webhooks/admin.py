from __future__ import annotations

from django.contrib import admin

from apps.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["public_id", "name", "url", "project", "enabled", "failing_since", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["public_id", "name", "url", "project__name"]
    list_select_related = ["project"]
    # The secrets are encrypted and never shown; staff see the hint.
    exclude = ["secret", "previous_secret"]
    readonly_fields = ["public_id", "secret_hint", "failing_since", "created_at", "updated_at"]


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    readonly_fields = [
        "number",
        "started_at",
        "status_code",
        "latency_ms",
        "error",
        "response_excerpt",
        "next_attempt_at",
    ]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["event", "endpoint", "status", "attempts", "next_attempt_at", "delivered_at"]
    list_filter = ["status"]
    search_fields = ["event__public_id", "endpoint__public_id"]
    list_select_related = ["event", "endpoint"]
    readonly_fields = ["event", "endpoint", "attempts", "delivered_at", "created_at"]
    inlines = [WebhookAttemptInline]
