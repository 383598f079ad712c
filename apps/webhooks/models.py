"""Outbound webhooks, as OpenAI sends them (Standard Webhooks): a project's endpoints, the events
its jobs and files raise, and each event's delivery to each endpoint with every attempt's outcome.

An event row is written in the transaction that makes the change it announces (an outbox): an
event is never lost, and never sent for a change that rolled back. docs/api.md, "Webhooks".
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.core.ids import random_id
from apps.projects.models import Project

# Events we send. OpenAI's names and payloads (`data: {"id": ...}`) for what OpenAI has; ours after.
FINE_TUNE_SUCCEEDED = "fine_tuning.job.succeeded"
FINE_TUNE_FAILED = "fine_tuning.job.failed"
FINE_TUNE_CANCELLED = "fine_tuning.job.cancelled"
FINE_TUNE_PAUSED = "fine_tuning.job.paused"
FINE_TUNE_BUDGET_REACHED = "fine_tuning.job.budget_reached"
BATCH_COMPLETED = "batch.completed"
BATCH_FAILED = "batch.failed"
BATCH_EXPIRED = "batch.expired"
BATCH_CANCELLED = "batch.cancelled"
FILE_PROCESSED = "file.processed"
FILE_FAILED = "file.failed"
EVAL_RUN_SUCCEEDED = "eval.run.succeeded"
EVAL_RUN_FAILED = "eval.run.failed"
EVAL_RUN_CANCELED = "eval.run.canceled"
EVENT_TYPES = (
    FINE_TUNE_SUCCEEDED,
    FINE_TUNE_FAILED,
    FINE_TUNE_CANCELLED,
    FINE_TUNE_PAUSED,
    FINE_TUNE_BUDGET_REACHED,
    BATCH_COMPLETED,
    BATCH_FAILED,
    BATCH_EXPIRED,
    BATCH_CANCELLED,
    FILE_PROCESSED,
    FILE_FAILED,
    EVAL_RUN_SUCCEEDED,
    EVAL_RUN_FAILED,
    EVAL_RUN_CANCELED,
)


def new_endpoint_id() -> str:
    return random_id("we_")


def new_event_id() -> str:
    return random_id("evt_")


class WebhookEndpoint(models.Model):
    """A URL of the project's that receives the event types it names, signed with its secret.

    The secret is stored encrypted (it has to be read to sign) and shown once, when it is made."""

    public_id = models.CharField(max_length=40, unique=True, default=new_endpoint_id)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhook_endpoints")
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=2048)
    event_types = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True, default="")
    secret = models.TextField()  # encrypted (apps.core.crypto)
    secret_hint = models.CharField(max_length=40)
    # After a rotation that keeps the old secret for a while, deliveries carry both signatures.
    previous_secret = models.TextField(blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    # Set by the first failed attempt after a success; an endpoint failing for too long is disabled.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"

    def wants(self, event_type: str) -> bool:
        return self.enabled and event_type in self.event_types


class WebhookEvent(models.Model):
    """What happened, with the exact body every delivery of it sends (its `id` is the
    `webhook-id` header: the same on every retry, so a receiver can drop repeats)."""

    public_id = models.CharField(max_length=40, unique=True, default=new_event_id)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhook_events")
    type = models.CharField(max_length=64)
    payload = models.TextField()
    # A test event is sent once, at once, to one endpoint, and is never retried.
    is_test = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.public_id} {self.type}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event to one endpoint: pending until an attempt gets a 2xx, retried with backoff until
    the retry window closes (then failed)."""

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # When a task for it was last queued (a lost message is queued again after a while), and
    # until when an attempt holds it (two tasks never send it at once).
    published_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="one_delivery_per_endpoint")
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_delivery_due",
                condition=models.Q(status="pending"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_id} to {self.endpoint_id}: {self.status}"


class WebhookAttempt(models.Model):
    """One POST of a delivery: the log shown per endpoint."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    # Why it failed, in words (a timeout, a refused connection, a redirect), and what came back.
    error = models.CharField(max_length=500, blank=True, default="")
    response_excerpt = models.CharField(max_length=1000, blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}: {self.status_code or self.error}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
