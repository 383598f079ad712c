from __future__ import annotations

from django.db import models

from apps.accounts.models import Organization


class Unit(models.TextChoices):
    INPUT_TOKENS = "input_tokens", "Input tokens"
    OUTPUT_TOKENS = "output_tokens", "Output tokens"
    TRAINED_TOKENS = "trained_tokens", "Trained tokens"
    CLASSIFIED_TEXTS = "classified_texts", "Classified texts"


class UsageRecord(models.Model):
    """One billable quantity of one job. Unique per (job, unit): a retried task cannot bill twice.

    Written in the same transaction that finishes the job. Money is integer micro-dollars.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="usage")
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="usage")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="usage")
    model_name = models.CharField(max_length=200)
    unit = models.CharField(max_length=20, choices=Unit.choices)
    quantity = models.BigIntegerField()
    cost = models.BigIntegerField()  # micro-dollars
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["job", "unit"], name="unique_usage_per_job_unit")]
        indexes = [models.Index(fields=["organization", "created_at"])]

    def __str__(self) -> str:
        return f"{self.job_id} {self.unit}={self.quantity}"
