"""The sample dataset a new project can start from in one click: support tickets labelled
`billing`, `bug` or `feature_request`, a classification CSV that `minilm-l6` learns in a few
epochs. It is uploaded like any other file, so it is validated by the same worker task."""

from __future__ import annotations

from pathlib import Path

from django.core.files.uploadedfile import SimpleUploadedFile

from apps.accounts.models import User
from apps.projects.actions import upload_file
from apps.projects.models import File, FilePurpose, Project

SAMPLE_FILENAME = "support_tickets.csv"
SAMPLE_PATH = Path(__file__).resolve().parent / SAMPLE_FILENAME
# What the sample is for: the base model it suits, and what the pages say about it.
SAMPLE_BASE_MODEL = "minilm-l6"
SAMPLE_LABELS = ("billing", "bug", "feature_request")


def upload_sample(project: Project, user: User | None) -> File:
    """The sample as a new fine-tune upload of `project` (validated after the commit)."""
    upload = SimpleUploadedFile(SAMPLE_FILENAME, SAMPLE_PATH.read_bytes(), content_type="text/csv")
    return upload_file(project, upload, FilePurpose.FINE_TUNE, user=user)
