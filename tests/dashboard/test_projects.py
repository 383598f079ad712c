from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile

from apps.billing.models import UsageRecord
from apps.core.storage import upload_dir
from apps.jobs.models import Checkpoint, Job, JobKind, JobStatus
from apps.projects.models import File, FileStatus, Project
from apps.registry.models import Model
from tests.conftest import login


def test_create_rename_delete_a_project(alice_client: Any, alice_org: Any) -> None:
    response = alice_client.post("/projects/", {"name": "Spam filter"})
    project = Project.objects.get(name="Spam filter")
    assert response["Location"] == f"/projects/{project.public_id}/"
    assert project.organization == alice_org
    assert "Spam filter" in alice_client.get("/projects/").content.decode()

    alice_client.post(f"/projects/{project.public_id}/rename", {"name": "Ham filter"})
    project.refresh_from_db()
    assert project.name == "Ham filter"

    page = alice_client.get(f"/projects/{project.public_id}/delete")
    assert "Type <strong>Ham filter</strong> to confirm" in page.content.decode()
    alice_client.post(f"/projects/{project.public_id}/delete", {"confirm": "wrong"})
    assert Project.objects.filter(pk=project.pk).exists()
    alice_client.post(f"/projects/{project.public_id}/delete", {"confirm": "Ham filter"})
    assert not Project.objects.filter(pk=project.pk).exists()


def test_a_blank_name_is_refused_with_a_message(alice_client: Any) -> None:
    response = alice_client.post("/projects/", {"name": "   "}, follow=True)
    assert "Give the project a name." in response.content.decode()


def test_members_cannot_delete_projects(client: Any, bob: Any, alice_project: Any) -> None:
    login(client, bob)
    response = client.post(
        f"/projects/{alice_project.public_id}/delete", {"confirm": alice_project.name}, follow=True
    )
    assert "Only owners and admins can do that." in response.content.decode()
    assert Project.objects.filter(pk=alice_project.pk).exists()


def test_project_pages_are_404_for_outsiders(carol_client: Any, alice_project: Any) -> None:
    pid = alice_project.public_id
    for path in ("", "files/", "fine-tuning/", "models/", "playground/", "batches/", "api-keys/", "delete"):
        assert carol_client.get(f"/projects/{pid}/{path}").status_code == 404, path
    assert carol_client.post(f"/projects/{pid}/rename", {"name": "x"}).status_code == 404
    assert carol_client.post(f"/projects/{pid}/delete", {"confirm": alice_project.name}).status_code == 404
    alice_project.refresh_from_db()
    assert alice_project.name == "Default project"


def test_projects_list_shows_only_the_current_organization(alice_client: Any, carol_project: Any) -> None:
    page = alice_client.get("/projects/").content.decode()
    assert carol_project.public_id not in page


# --- Deleting a project deletes what it stored -------------------------------------------------------


def stored(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def stored_file(project: Any, purpose: str = "fine-tune") -> File:
    file = File(project=project, filename="data.csv", purpose=purpose, status=FileStatus.PROCESSED)
    file.content.save("data.csv", ContentFile(b"text,label\nhi,a\n"), save=False)
    file.save()
    return file


def finished_fine_tune(project: Any, tmp_path: Path) -> Job:
    """A succeeded fine-tune with what its worker stores: checkpoints, the model, teacher labels, a
    results file, and its usage."""
    from apps.core.storage import job_prefix  # where the worker stores them

    organization = project.organization
    training = stored_file(project)
    job = Job.objects.create(
        kind=JobKind.FINE_TUNE,
        status=JobStatus.SUCCEEDED,
        project=project,
        organization=organization,
        model_name="tiny-bert",
        training_file=training,
    )
    weights = tmp_path / f"weights-{job.public_id}"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"weights")
    checkpoint = upload_dir(
        weights, job_prefix("checkpoints", organization.public_id, job.public_id) + "/step-5"
    )
    Checkpoint.objects.create(job=job, step=5, artifact_key=checkpoint)
    upload_dir(weights, job_prefix("distill", organization.public_id, job.public_id))
    model = Model.objects.create(
        name=f"ft:tiny-bert:acme::{job.public_id}",
        organization=organization,
        project=project,
        task="classification",
        artifact_key=upload_dir(weights, job_prefix("models", organization.public_id, job.public_id)),
    )
    Job.objects.filter(pk=job.pk).update(
        fine_tuned_model=model, result_files=[stored_file(project, "fine-tune-results").public_id]
    )
    UsageRecord.objects.create(
        organization=organization,
        project=project,
        job=job,
        model_name="tiny-bert",
        unit="trained_tokens",
        quantity=1000,
        cost=2000,
    )
    return job


def delete(client: Any, project: Any) -> str:
    response = client.post(f"/projects/{project.public_id}/delete", {"confirm": project.name}, follow=True)
    assert response.status_code == 200
    return str(response.content.decode())


def test_deleting_a_project_deletes_its_files_checkpoints_and_weights_and_keeps_its_usage(
    alice_client: Any,
    alice_project: Any,
    carol_project: Any,
    media: Path,
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # given two projects of alice and one of carol, each with a fine-tune and what it stored
    other = Project.objects.create(organization=alice_project.organization, name="Other")
    kept = [finished_fine_tune(other, tmp_path), finished_fine_tune(carol_project, tmp_path)]
    before = stored(media)
    job = finished_fine_tune(alice_project, tmp_path)
    doomed = stored(media) - before
    assert {key.split("/")[0] for key in doomed} == {"files", "checkpoints", "models", "distill"}

    # when alice deletes her default project
    with django_capture_on_commit_callbacks(execute=True):
        html = delete(alice_client, alice_project)

    # then its rows and everything it stored are gone; the other projects keep theirs
    assert f"Project “{alice_project.name}” and everything in it were deleted." in html
    assert not Project.objects.filter(pk=alice_project.pk).exists()
    assert not Job.objects.filter(pk=job.pk).exists()
    assert not Model.objects.filter(name=f"ft:tiny-bert:acme::{job.public_id}").exists()
    assert stored(media) == before
    assert Job.objects.filter(pk__in=[k.pk for k in kept]).count() == 2
    assert Model.objects.filter(project__in=[other, carol_project]).count() == 2
    # and the usage stays, billing history without its project and job
    usage = UsageRecord.objects.get(organization=alice_project.organization, project=None)
    assert (usage.job_id, usage.quantity, usage.cost) == (None, 1000, 2000)


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (JobKind.FINE_TUNE, JobStatus.QUEUED),
        (JobKind.FINE_TUNE, JobStatus.RUNNING),
        (JobKind.FINE_TUNE, JobStatus.PAUSED),
        (JobKind.FINE_TUNE, JobStatus.VALIDATING_FILES),
        (JobKind.BATCH, JobStatus.RUNNING),
    ],
)
def test_a_project_with_an_unfinished_fine_tune_or_batch_is_not_deleted(
    alice_client: Any,
    alice_project: Any,
    media: Path,
    kind: str,
    status: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    file = stored_file(alice_project)
    job = Job.objects.create(
        kind=kind,
        status=status,
        project=alice_project,
        organization=alice_project.organization,
        model_name="tiny-bert",
        training_file=file,
    )

    with django_capture_on_commit_callbacks(execute=True):
        html = delete(alice_client, alice_project)

    assert (
        f"The project has unfinished fine-tuning jobs or batches ({job.public_id}). Cancel them or wait for "
        "them to finish, then delete the project."
    ) in html
    assert Project.objects.filter(pk=alice_project.pk).exists()
    assert stored(media) == {file.content.name}


def test_requests_waiting_for_a_worker_do_not_hold_a_deletion_back(
    alice_client: Any, alice_project: Any, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    for kind in (JobKind.GENERATION, JobKind.CLASSIFICATION):
        Job.objects.create(
            kind=kind,
            status=JobStatus.QUEUED,
            project=alice_project,
            organization=alice_project.organization,
            model_name="tiny-bert",
        )

    with django_capture_on_commit_callbacks(execute=True):
        delete(alice_client, alice_project)

    assert not Project.objects.filter(pk=alice_project.pk).exists()


def test_a_request_being_answered_holds_the_deletion_back_for_a_moment(
    alice_client: Any, alice_project: Any
) -> None:
    # (its answer would reach the client with its job, and so its usage record, deleted)
    Job.objects.create(
        kind=JobKind.GENERATION,
        status=JobStatus.RUNNING,
        project=alice_project,
        organization=alice_project.organization,
        model_name="tiny-gpt2",
    )

    page = delete(alice_client, alice_project)

    assert Project.objects.filter(pk=alice_project.pk).exists()
    assert (
        html.escape(
            "The project's models are answering 1 request(s) right now. Retry in a few seconds, once they are done."
        )
        in page
    )
