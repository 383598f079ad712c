"""Checks that a job's references stay inside the job's organization.

The API and the dashboard only ever put an organization's own files and models on its jobs (through
the scoped lookups). A worker trusts nothing but the row, though, and the row is all a forged or
replayed message points at: before a worker opens a job's inputs it asks `foreign_references`.
"""

from __future__ import annotations

from typing import Any

# Messages carry job ids only (docs/architecture.md, "Jobs"), so the job row names every input.
_FILE_FIELDS = ("training_file", "validation_file")
_MODEL_FIELDS = ("model", "fine_tuned_model")

TENANT_MISMATCH_MESSAGE = "The job refers to a file or model that does not belong to its organization."


def foreign_references(job: Any) -> list[str]:
    """The job's fields that point at another organization's rows, in field order ([] when none).

    Catalog base models belong to no organization and are everyone's."""
    organization_id = job.organization_id
    foreign = []
    if job.project.organization_id != organization_id:
        foreign.append("project")
    for field in _FILE_FIELDS:
        file = getattr(job, field)
        if file is not None and file.project.organization_id != organization_id:
            foreign.append(field)
    for field in _MODEL_FIELDS:
        model = getattr(job, field)
        if model is not None and model.organization_id not in (None, organization_id):
            foreign.append(field)
    if job.api_key_id is not None and job.api_key.project.organization_id != organization_id:
        foreign.append("api_key")
    return foreign
