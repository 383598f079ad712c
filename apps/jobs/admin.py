from __future__ import annotations

from django.contrib import admin

from apps.jobs.models import Checkpoint, Job, JobEvent


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    fields = ["created_at", "level", "type", "message"]
    readonly_fields = ["created_at", "level", "type", "message"]
    can_delete = False
    show_change_link = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["public_id", "kind", "status", "model_name", "organization", "attempt", "created_at"]
    list_filter = ["kind", "status", "status_reason"]
    search_fields = ["public_id", "model_name", "organization__name", "project__name"]
    list_select_related = ["organization"]
    readonly_fields = ["public_id", "created_at", "queued_at", "started_at", "finished_at", "heartbeat_at"]
    inlines = [JobEventInline]


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ["public_id", "job", "level", "type", "created_at"]
    list_filter = ["level", "type"]
    search_fields = ["public_id", "job__public_id", "message"]


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["public_id", "job", "step", "epoch", "created_at"]
    search_fields = ["public_id", "job__public_id"]
