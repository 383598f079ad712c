from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.accounts.models import Organization, User
from apps.core.ids import random_id


def new_project_id() -> str:
    return random_id("proj_")


def new_file_id() -> str:
    return random_id("file-")


class ProjectQuerySet(models.QuerySet["Project"]):
    def for_user(self, user: User) -> ProjectQuerySet:
        """Projects of every organization the user belongs to: the one scoping helper for pages."""
        if not getattr(user, "is_authenticated", False):
            return self.none()
        return self.filter(organization__memberships__user=user)


class Project(models.Model):
    """Groups files, jobs, models and API keys inside an organization."""

    public_id = models.CharField(max_length=40, unique=True, default=new_project_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The getting-started checklist on the project's page was closed (it also goes once done).
    checklist_dismissed_at = models.DateTimeField(null=True, blank=True)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def dismiss_checklist(self) -> None:
        if self.checklist_dismissed_at is None:
            self.checklist_dismissed_at = timezone.now()
            self.save(update_fields=["checklist_dismissed_at"])


class FilePurpose(models.TextChoices):
    FINE_TUNE = "fine-tune", "Fine-tune"
    BATCH = "batch", "Batch input"
    EVALS = "evals", "Eval data"
    FINE_TUNE_RESULTS = "fine-tune-results", "Fine-tune results"
    BATCH_OUTPUT = "batch_output", "Batch output"


UPLOAD_PURPOSES = (FilePurpose.FINE_TUNE, FilePurpose.BATCH, FilePurpose.EVALS)


class FileStatus(models.TextChoices):
    UPLOADED = "uploaded", "Uploaded"
    PROCESSED = "processed", "Processed"
    ERROR = "error", "Error"


def file_storage_key(instance: File, filename: str) -> str:
    # The stored name never contains the user's filename: no traversal, no collisions.
    return f"files/{instance.project.organization.public_id}/{instance.public_id}"


class File(models.Model):
    """An uploaded dataset or a result file, with its validation report."""

    public_id = models.CharField(max_length=40, unique=True, default=new_file_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="files")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=32, choices=FilePurpose.choices)
    bytes = models.BigIntegerField(default=0)
    content = models.FileField(upload_to=file_storage_key, max_length=255)
    status = models.CharField(max_length=16, choices=FileStatus.choices, default=FileStatus.UPLOADED)
    status_details = models.CharField(max_length=500, blank=True, default="")
    format = models.CharField(max_length=40, blank=True, default="")
    validation = models.JSONField(null=True, blank=True)
    column_mapping = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "purpose", "-id"])]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.filename})"

    @property
    def is_usable(self) -> bool:
        return self.status == FileStatus.PROCESSED
