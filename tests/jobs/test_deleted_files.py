"""A fine-tune whose file is gone anyway (deleted by staff in the admin, past the API's refusal) fails
with a clear error instead of crashing its worker."""

from __future__ import annotations

from typing import Any

import pytest

from apps.jobs.models import Job, JobStatus
from apps.projects.models import File
from tests.conftest import make_user, sentiment_csv
from workers.tasks import run_fine_tune, validate_file


def uploaded(api: Any, name: str) -> str:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post(
        "/v1/files", {"file": SimpleUploadedFile(name, sentiment_csv(40)), "purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.content
    validate_file(response.json()["id"])
    return str(response.json()["id"])


def delete_in_the_admin(client: Any, file_id: str) -> None:
    staff = make_user("staff@example.com")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    file = File.objects.get(public_id=file_id)
    response = client.post(f"/admin/projects/file/{file.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content
    assert not File.objects.filter(pk=file.pk).exists()


@pytest.mark.parametrize("deleted", ["training_file", "validation_file"])
def test_a_resumed_fine_tune_whose_file_was_deleted_fails_with_file_deleted(
    api: Any, client: Any, tiny_base: Any, deleted: str, django_capture_on_commit_callbacks: Any
) -> None:
    # given a paused fine-tune whose file staff then deleted in the admin
    files = {"training_file": uploaded(api, "train.csv"), "validation_file": uploaded(api, "valid.csv")}
    with django_capture_on_commit_callbacks(execute=False):  # no worker: it stays queued
        response = api.post("/v1/fine_tuning/jobs", {"model": "tiny-bert", **files}, format="json")
    job_id = response.json()["id"]
    Job.objects.filter(public_id=job_id).update(status=JobStatus.PAUSED)
    delete_in_the_admin(client, files[deleted])

    # when it is resumed and a worker takes it
    with django_capture_on_commit_callbacks(execute=False):
        assert api.post(f"/v1/fine_tuning/jobs/{job_id}/resume").status_code == 200
    run_fine_tune(job_id)

    # then it failed, saying which file is gone
    job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "failed"
    noun = deleted.replace("_", " ")
    assert job["error"] == {
        "code": "file_deleted",
        "message": f"The {noun} of this job was deleted. Start a new job with a file that exists.",
        "param": deleted,
    }
