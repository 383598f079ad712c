"""Evals, as OpenAI's Evals API: an eval (what every run is graded on), its runs and each run's
output items (docs/api.md, "Evals").

A run's work and money live on a `jobs.Job` of kind `eval_run`: the worker claims, fences, bills and
reports it as it does a batch. `EvalRun` ties that job to its eval; its output items are written by
the worker, each chunk in the transaction that bills it (`apps.evals.actions.record_items`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.core.ids import random_id


def new_eval_id() -> str:
    return random_id("eval_")


def new_output_item_id() -> str:
    return random_id("outputitem_")


class Eval(models.Model):
    public_id = models.CharField(max_length=48, unique=True, default=new_eval_id, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="evals")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=200, blank=True, default="")
    metadata = models.JSONField(null=True, blank=True)
    # As created: {"type": "custom", "item_schema": {...}, "include_sample_schema": bool}.
    data_source_config = models.JSONField()
    # The graders, validated and normalized (apps.jobs.graders.validate_grader).
    testing_criteria = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "-id"])]

    def __str__(self) -> str:
        return self.public_id


class EvalRun(models.Model):
    """One run of an eval; its id is the job's (`evalrun_…`)."""

    eval = models.ForeignKey(Eval, on_delete=models.CASCADE, related_name="runs")
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="eval_run")
    name = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.eval_id}:{self.job_id}"


class EvalOutputItem(models.Model):
    public_id = models.CharField(max_length=48, unique=True, default=new_output_item_id, editable=False)
    run = models.ForeignKey(EvalRun, on_delete=models.CASCADE, related_name="output_items")
    # The item's place in the data source, from 0: a resumed attempt skips the ones recorded.
    datasource_item_id = models.PositiveIntegerField()
    datasource_item = models.JSONField(default=dict)
    status = models.CharField(max_length=10)  # pass | fail | error
    results = models.JSONField(default=list)
    sample = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["datasource_item_id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "datasource_item_id"], name="one_output_per_item")
        ]

    def __str__(self) -> str:
        return self.public_id
