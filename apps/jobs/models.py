from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from apps.accounts.models import Organization
from apps.core.ids import random_id
from apps.projects.models import Project


class JobKind(models.TextChoices):
    FINE_TUNE = "fine_tune", "Fine-tune"
    GENERATION = "generation", "Generation"
    CLASSIFICATION = "classification", "Classification"
    EMBEDDING = "embedding", "Embedding"
    BATCH = "batch", "Batch"
    EVAL_RUN = "eval_run", "Eval run"


class JobStatus(models.TextChoices):
    VALIDATING_FILES = "validating_files", "Validating files"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class StopReason(models.TextChoices):
    """Why a job ended before its work was done, when money stopped it: a fine-tune's
    `status_reason` (it succeeded with the model of what ran) or a job's `error.code`."""

    BUDGET_REACHED = "budget_reached", "The job's max_cost was reached"
    SPEND_LIMIT_REACHED = "spend_limit_reached", "The organization's spend limit was reached"


# What a customer may ask of a running job: its worker reads the request at its next step.
STOP_CANCEL = "cancel"
STOP_PAUSE = "pause"
# A running fine-tune asked to pause, until its worker has saved the checkpoint and ended the
# attempt `paused`. Shown by the API and the dashboard, never stored: the row stays `running`, so
# claims, heartbeats, fencing, the reaper and billing treat it as any running job.
PAUSING = "pausing"

ACTIVE_STATUSES = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

ID_PREFIXES = {
    JobKind.FINE_TUNE: "ftjob-",
    JobKind.GENERATION: "gen-",
    JobKind.CLASSIFICATION: "clf-",
    JobKind.EMBEDDING: "emb-",
    JobKind.BATCH: "batch_",
    JobKind.EVAL_RUN: "evalrun_",
}


def new_event_id() -> str:
    return random_id("ft-event-")


def new_checkpoint_id() -> str:
    return random_id("ftckpt_")


class JobQuerySet(models.QuerySet["Job"]):
    def for_project(self, project: Project) -> JobQuerySet:
        return self.filter(project=project)

    def active(self) -> JobQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)


class Job(models.Model):
    """One unit of work on the workers. This row is the truth about it (docs/architecture.md, "Jobs").

    Every status change goes through `apps.jobs.actions` as a conditional UPDATE; every write
    from a worker is fenced on `attempt`, so a zombie's late write changes nothing.
    """

    public_id = models.CharField(max_length=48, unique=True, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="jobs")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=20, choices=JobKind.choices)
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED)
    status_reason = models.CharField(max_length=40, blank=True, default="")
    model = models.ForeignKey(
        "registry.Model", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    model_name = models.CharField(max_length=200)
    request = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    error = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    # Fine-tunes
    training_file = models.ForeignKey(
        "projects.File", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    validation_file = models.ForeignKey(
        "projects.File", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    hyperparameters = models.JSONField(default=dict, blank=True)
    seed = models.IntegerField(null=True, blank=True)
    fine_tuned_model = models.ForeignKey(
        "registry.Model", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    result_files = models.JSONField(default=list, blank=True)
    trained_tokens = models.BigIntegerField(null=True, blank=True)
    estimated_cost = models.BigIntegerField(null=True, blank=True)  # micro-dollars
    max_cost = models.BigIntegerField(null=True, blank=True)  # micro-dollars
    # Billing as the work is done (apps.jobs.billing): the running count of each unit billed so far
    # and its cost, and the part of the organization's spend cap this job holds and has not spent
    # yet. Only jobs still waiting or running hold their reservation.
    billed_usage = models.JSONField(default=dict, blank=True)
    billed_cost = models.BigIntegerField(default=0)  # micro-dollars
    reserved_cost = models.BigIntegerField(default=0)  # micro-dollars
    # Liveness and fencing
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the current attempt was claimed, and when its worker's hard time limit kills it (None: no
    # limit). A running job past that moment whose heartbeat stopped is failed with `time_limit`.
    attempt_started_at = models.DateTimeField(null=True, blank=True)
    time_limit_at = models.DateTimeField(null=True, blank=True)
    stop_requested = models.CharField(max_length=16, blank=True, default="")  # "" | cancel | pause
    checkpoint_ref = models.CharField(max_length=300, blank=True, default="")
    # Timestamps
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["project", "kind", "-id"]),
            models.Index(fields=["status", "heartbeat_at"]),
            models.Index(fields=["status", "queued_at"]),
            models.Index(fields=["status", "published_at"]),
            models.Index(
                fields=["organization", "status"],
                condition=models.Q(reserved_cost__gt=0),
                name="job_reservations",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.public_id:
            self.public_id = random_id(ID_PREFIXES[JobKind(self.kind)])
        super().save(*args, **kwargs)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def is_pausing(self) -> bool:
        return self.status == JobStatus.RUNNING and self.stop_requested == STOP_PAUSE

    @property
    def shown_status(self) -> str:
        """The status the API and the dashboard show: `pausing` between a pause request and the
        checkpoint its worker saves, the stored status otherwise."""
        return PAUSING if self.is_pausing else str(self.status)

    @property
    def shown_status_label(self) -> str:
        return "Pausing" if self.is_pausing else self.get_status_display()


class JobEvent(models.Model):
    """A job's log and metric stream (the loss curve is drawn from `type="metrics"` events)."""

    public_id = models.CharField(max_length=48, unique=True, default=new_event_id, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    level = models.CharField(max_length=8, default="info")
    type = models.CharField(max_length=10, default="message")
    message = models.TextField()
    data = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.job_id}: {self.message[:60]}"


class Checkpoint(models.Model):
    public_id = models.CharField(max_length=48, unique=True, default=new_checkpoint_id, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    epoch = models.PositiveIntegerField(default=0)
    # The job's trained tokens up to this step: billed when the checkpoint was saved.
    trained_tokens = models.BigIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    artifact_key = models.CharField(max_length=300)
    fine_tuned_model_checkpoint = models.CharField(max_length=250, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step", "-id"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="unique_checkpoint_step")]

    def __str__(self) -> str:
        return f"{self.job_id}@{self.step}"
