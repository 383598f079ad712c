"""The getting-started checklist on a project's page: four steps, each ticked by what the project
really holds, never by a click on the checklist itself.

1. Upload data: a fine-tune upload has passed validation.
2. Fine-tune: a fine-tuning job of the project succeeded.
3. Try it: an inference request ran in the project (the playground's, or the API's).
4. Call it from code: a request came in with one of the project's API keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.accounts.models import ApiKey
from apps.jobs.models import FINISHED_STATUSES, Job, JobKind, JobStatus
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.projects.samples import SAMPLE_BASE_MODEL, SAMPLE_FILENAME, SAMPLE_LABELS
from apps.registry.models import Model

INFERENCE_KINDS = (JobKind.GENERATION, JobKind.CLASSIFICATION, JobKind.EMBEDDING)


@dataclass(frozen=True)
class Checklist:
    upload: File | None  # the latest fine-tune upload that passed validation
    validating: File | None  # the latest one still being validated
    fine_tune: Job | None  # the latest fine-tune that succeeded
    running: Job | None  # the latest one that has not finished
    model: Model | None  # the model `fine_tune` made
    has_tried: bool
    has_key: bool
    has_called_from_code: bool
    is_dismissed: bool
    sample_filename: str = SAMPLE_FILENAME
    sample_base_model: str = SAMPLE_BASE_MODEL
    sample_labels: tuple[str, ...] = SAMPLE_LABELS

    @property
    def steps_done(self) -> int:
        steps = (self.upload, self.fine_tune, self.has_tried, self.has_called_from_code)
        return sum(1 for step in steps if step)

    @property
    def is_done(self) -> bool:
        return self.steps_done == 4

    @property
    def is_shown(self) -> bool:
        return not (self.is_done or self.is_dismissed)


def checklist_for(project: Project) -> Checklist:
    uploads = File.objects.filter(project=project, purpose=FilePurpose.FINE_TUNE).order_by("-id")
    fine_tunes = Job.objects.filter(project=project, kind=JobKind.FINE_TUNE).order_by("-id")
    fine_tune = (
        fine_tunes.filter(status=JobStatus.SUCCEEDED, fine_tuned_model__isnull=False)
        .select_related("fine_tuned_model")
        .first()
    )
    keys = ApiKey.objects.filter(project=project)
    return Checklist(
        upload=uploads.filter(status=FileStatus.PROCESSED).first(),
        validating=uploads.filter(status=FileStatus.UPLOADED).first(),
        fine_tune=fine_tune,
        running=fine_tunes.exclude(status__in=FINISHED_STATUSES).first(),
        model=fine_tune.fine_tuned_model if fine_tune else None,
        has_tried=Job.objects.filter(project=project, kind__in=INFERENCE_KINDS).exists(),
        has_key=keys.filter(revoked_at__isnull=True).exists(),
        # A key's last use is written on its first request (then at most once a minute).
        has_called_from_code=keys.filter(last_used_at__isnull=False).exists()
        or Job.objects.filter(project=project, api_key__isnull=False).exists(),
        is_dismissed=project.checklist_dismissed_at is not None,
    )
