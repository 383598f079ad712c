from __future__ import annotations

from django.contrib import admin

from apps.billing.models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["job", "organization", "model_name", "unit", "quantity", "cost", "created_at"]
    list_filter = ["unit"]
    search_fields = ["job__public_id", "organization__name", "model_name"]
    list_select_related = ["job", "organization"]
    date_hierarchy = "created_at"
