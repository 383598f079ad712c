"""A fine-tuned model records who created it (the creator of the job that made it), which decides
who besides owners and admins may delete it; and the checkpoint a job resumes from is kept."""

from __future__ import annotations

import html
from importlib import import_module
from typing import Any

from django.apps import apps as django_apps
from rest_framework.test import APIClient

from apps.jobs.models import Checkpoint, Job, JobKind, JobStatus
from apps.projects import actions as projects
from apps.projects.models import Project
from apps.registry.actions import create_fine_tuned_model, register_checkpoint_model
from apps.registry.models import Model
from tests.conftest import login


def fine_tune(project: Project, user: Any, status: str = JobStatus.RUNNING, **fields: Any) -> Job:
    base = Model.objects.get(name="minilm-l6")
    return Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=project.organization,
        project=project,
        model=base,
        model_name=base.name,
        status=status,
        created_by=user,
        request={"suffix": "tickets"},
        **fields,
    )


def checkpoint_model(job: Job, step: int = 10) -> Model:
    checkpoint = Checkpoint.objects.create(
        job=job,
        step=step,
        epoch=1,
        metrics={"valid_loss": 0.5},
        artifact_key=f"checkpoints/{job.organization.public_id}/{job.public_id}/step-{step}",
        fine_tuned_model_checkpoint=f"ft:minilm-l6:acme:tickets:{job.public_id}:ckpt-step-{step}",
    )
    model = register_checkpoint_model(job, checkpoint)
    assert model is not None
    return model


def test_a_fine_tuned_model_and_its_checkpoints_record_the_jobs_creator(
    bob: Any, alice_project: Project
) -> None:
    job = fine_tune(alice_project, bob)

    checkpoint = checkpoint_model(job)
    final = create_fine_tuned_model(job, artifact_key="models/x", labels=["a", "b"], metrics={})

    assert (checkpoint.created_by, final.created_by) == (bob, bob)


def test_the_checkpoint_a_job_resumes_from_cannot_be_deleted(
    client: Any, alice: Any, alice_project: Project
) -> None:
    # given: a paused fine-tune whose resume point is a checkpoint model
    job = fine_tune(alice_project, alice, JobStatus.PAUSED)
    model = checkpoint_model(job)
    Job.objects.filter(pk=job.pk).update(checkpoint_ref=model.artifact_key)
    _, raw = projects.create_api_key(alice_project, "ci", alice)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    message = (
        f"'{model.name}' is the checkpoint {job.public_id} resumes from. Cancel the job or wait until it "
        "finishes, then delete the model."
    )
    # when the owner deletes it, with her key and on the dashboard
    response = api.delete(f"/v1/models/{model.name}")
    login(client, alice)
    page = client.post(f"/projects/{alice_project.public_id}/models/{model.name}/delete", follow=True)
    # then
    assert response.status_code == 409
    assert response.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_in_use",
    }
    assert message in html.unescape(page.content.decode())
    assert Model.objects.filter(pk=model.pk).exists()
    # once the job is over, the checkpoint model is an ordinary model
    Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELLED)
    assert api.delete(f"/v1/models/{model.name}").status_code == 200


def test_existing_models_get_their_creator_from_their_job(bob: Any, alice_project: Project) -> None:
    # given: models made before the creator was recorded
    job = fine_tune(alice_project, bob, JobStatus.SUCCEEDED)
    checkpoint = checkpoint_model(job)
    final = create_fine_tuned_model(job, artifact_key="models/x", labels=[], metrics={})
    Job.objects.filter(pk=job.pk).update(fine_tuned_model=final)
    Model.objects.filter(pk__in=[checkpoint.pk, final.pk]).update(created_by=None)
    # when the migration's backfill runs
    import_module("apps.registry.migrations.0003_model_created_by").creators_from_jobs(django_apps, None)
    # then
    assert set(Model.objects.filter(created_by=bob).values_list("pk", flat=True)) == {checkpoint.pk, final.pk}
    assert not Model.objects.catalog().filter(created_by__isnull=False).exists()
