from __future__ import annotations

from django.contrib import admin

from apps.registry.models import Model


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "task",
        "provider",
        "organization",
        "created_by",
        "is_fine_tunable",
        "shutdown_date",
        "created_at",
    ]
    list_filter = ["task", "provider", "is_fine_tunable"]
    search_fields = ["name", "organization__name"]
    list_select_related = ["organization", "created_by"]
    autocomplete_fields = ["created_by"]
