from __future__ import annotations

from django.contrib import admin

from apps.projects.models import File, Project


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "public_id", "organization", "created_at"]
    search_fields = ["name", "public_id", "organization__name"]
    list_select_related = ["organization"]
    readonly_fields = ["public_id", "created_at"]


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = ["public_id", "filename", "project", "purpose", "status", "format", "bytes", "created_at"]
    list_filter = ["purpose", "status", "format"]
    search_fields = ["public_id", "filename", "project__name"]
    list_select_related = ["project"]
    readonly_fields = ["public_id", "created_at", "validation"]
