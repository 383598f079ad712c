from __future__ import annotations

from django.contrib import admin

from apps.billing.models import Invoice, MeterEvent, Plan, Price, StripeEvent, Subscription, UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["job", "organization", "model_name", "unit", "quantity", "cost", "created_at"]
    list_filter = ["unit"]
    search_fields = ["job__public_id", "organization__name", "model_name"]
    list_select_related = ["job", "organization"]
    date_hierarchy = "created_at"


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["model_name", "unit", "micro_dollars_per_million"]
    list_filter = ["unit"]
    search_fields = ["model_name"]


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "monthly_price",
        "included_credit",
        "usage_beyond_credit",
        "stripe_price_id",
    ]
    search_fields = ["name", "slug", "stripe_price_id"]
    ordering = ["position"]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "plan",
        "status",
        "grace_until",
        "current_period_end",
        "stripe_customer_id",
    ]
    list_filter = ["plan", "status"]
    search_fields = [
        "organization__name",
        "organization__public_id",
        "stripe_customer_id",
        "stripe_subscription_id",
    ]
    list_select_related = ["organization", "plan"]
    # Mirrored from Stripe by webhooks: editing them here would be overwritten by the next event.
    readonly_fields = [
        "stripe_customer_id",
        "stripe_subscription_id",
        "status",
        "current_period_end",
        "stripe_synced_at",
    ]


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ["stripe_invoice_id", "organization", "status", "amount_due", "currency", "created"]
    list_filter = ["status"]
    search_fields = ["stripe_invoice_id", "organization__name"]
    list_select_related = ["organization"]
    date_hierarchy = "created"


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ["event_id", "type", "received_at", "processed_at", "outcome"]
    list_filter = ["type", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id", "type", "outcome"]
    readonly_fields = ["event_id", "type", "created", "received_at", "processed_at", "outcome", "error"]
    date_hierarchy = "received_at"


@admin.register(MeterEvent)
class MeterEventAdmin(admin.ModelAdmin):
    list_display = [
        "identifier",
        "organization",
        "hour",
        "unit",
        "value",
        "sent_at",
        "attempts",
        "last_error",
    ]
    list_filter = ["unit", ("sent_at", admin.EmptyFieldListFilter)]
    search_fields = ["identifier", "organization__name", "organization__public_id"]
    list_select_related = ["organization"]
    readonly_fields = [
        "organization",
        "hour",
        "unit",
        "value",
        "identifier",
        "sent_at",
        "attempts",
        "last_error",
    ]
    date_hierarchy = "hour"
