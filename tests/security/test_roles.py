"""Destructive actions need an owner or admin, or the member who created the object: deleting a
fine-tuned model, deleting a file, revoking an API key, cancelling or pausing a job (docs/api.md, "What each role and key may
do"). bob, a member, tries each on what alice made, on the dashboard and with his own API key;
erin, an admin, and the creators themselves succeed. Roles are read on every request."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from rest_framework.test import APIClient

from apps.accounts import actions as accounts
from apps.accounts.models import ApiKey, Membership, Role
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects import onboarding
from apps.projects.actions import create_api_key
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.registry.models import Model
from tests.conftest import login

pytestmark = pytest.mark.usefixtures("media")

MODEL_REFUSAL = (
    "Only owners and admins, and the member who created its fine-tuning job, can delete this model."
)
FILE_REFUSAL = "Only owners and admins, and the member who uploaded it, can delete this file."
KEY_REFUSAL = "Only owners and admins can revoke another member's API key."


def key_of(user: Any, project: Project) -> APIClient:
    _, raw = create_api_key(project, f"{user.email}'s key", user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def fine_tuned(project: Project, user: Any | None, suffix: str) -> Model:
    """A fine-tuned model as a succeeded job of `user` leaves it."""
    base = Model.objects.get(name="minilm-l6")
    job = Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=project.organization,
        project=project,
        model=base,
        model_name=base.name,
        status=JobStatus.SUCCEEDED,
        created_by=user,
    )
    model = Model.objects.create(
        name=f"ft:minilm-l6:acme:{suffix}:{job.public_id}",
        organization=project.organization,
        project=project,
        base=base,
        task="classification",
        limits={"servable": True},
        created_by=user,
        artifact_key=f"models/{project.organization.public_id}/{job.public_id}",
    )
    Job.objects.filter(pk=job.pk).update(fine_tuned_model=model)
    return model


def stored_file(project: Project, user: Any | None, name: str = "tickets.csv") -> File:
    file = File(
        project=project,
        filename=name,
        purpose=FilePurpose.FINE_TUNE,
        bytes=11,
        status=FileStatus.PROCESSED,
        created_by=user,
    )
    file.content.save(name, ContentFile(b"text,label\n"), save=False)
    file.save()
    return file


def model_url(project: Project, model: Model, action: str = "") -> str:
    return f"/projects/{project.public_id}/models/{model.name}/{action}"


def file_url(project: Project, file: File, action: str = "") -> str:
    return f"/projects/{project.public_id}/files/{file.public_id}/{action}"


def refused(response: Any, message: str) -> None:
    assert response.status_code == 403, response.content
    assert response.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "permission_denied",
    }


# --- Models --------------------------------------------------------------------------------------
def test_a_member_cannot_delete_a_model_someone_else_made(
    client: Any, alice: Any, bob: Any, alice_project: Project
) -> None:
    # given
    model = fine_tuned(alice_project, alice, "alices")
    login(client, bob)
    page = client.get(model_url(alice_project, model)).content.decode()
    assert "Delete model" not in page
    # when: bob posts the form anyway, and tries his API key
    response = client.post(model_url(alice_project, model, "delete"), follow=True)
    api_response = key_of(bob, alice_project).delete(f"/v1/models/{model.name}")
    # then
    assert MODEL_REFUSAL in html.unescape(response.content.decode())
    refused(api_response, MODEL_REFUSAL)
    assert Model.objects.filter(pk=model.pk).exists()


def test_a_member_deletes_a_model_of_his_own_job(client: Any, bob: Any, alice_project: Project) -> None:
    on_page, by_key = fine_tuned(alice_project, bob, "page"), fine_tuned(alice_project, bob, "key")
    login(client, bob)
    assert "Delete model" in client.get(model_url(alice_project, on_page)).content.decode()

    client.post(model_url(alice_project, on_page, "delete"))
    response = key_of(bob, alice_project).delete(f"/v1/models/{by_key.name}")

    assert response.status_code == 200 and response.json()["deleted"] is True
    assert not Model.objects.filter(pk__in=[on_page.pk, by_key.pk]).exists()


def test_an_admin_deletes_a_members_model(client: Any, bob: Any, erin: Any, alice_project: Project) -> None:
    on_page, by_key = fine_tuned(alice_project, bob, "page"), fine_tuned(alice_project, bob, "key")
    login(client, erin)
    assert "Delete model" in client.get(model_url(alice_project, on_page)).content.decode()

    client.post(model_url(alice_project, on_page, "delete"))
    response = key_of(erin, alice_project).delete(f"/v1/models/{by_key.name}")

    assert response.status_code == 200
    assert not Model.objects.filter(pk__in=[on_page.pk, by_key.pk]).exists()


def test_a_model_whose_job_is_gone_is_for_managers_only(
    client: Any, bob: Any, erin: Any, alice_project: Project
) -> None:
    model = fine_tuned(alice_project, None, "orphan")  # its creator's account was deleted

    login(client, bob)
    response = client.post(model_url(alice_project, model, "delete"), follow=True)
    assert MODEL_REFUSAL in html.unescape(response.content.decode())
    login(client, erin)
    client.post(model_url(alice_project, model, "delete"))

    assert not Model.objects.filter(pk=model.pk).exists()


# --- Files ---------------------------------------------------------------------------------------
def test_a_member_cannot_delete_a_file_someone_else_uploaded(
    client: Any, alice: Any, bob: Any, alice_project: Project, media: Path
) -> None:
    # given
    file = stored_file(alice_project, alice)
    login(client, bob)
    page = client.get(file_url(alice_project, file)).content.decode()
    assert "Delete file" not in page and "Download" in page
    # when
    response = client.post(file_url(alice_project, file, "delete"), follow=True)
    api_response = key_of(bob, alice_project).delete(f"/v1/files/{file.public_id}")
    # then
    assert response.redirect_chain == [(file_url(alice_project, file), 302)]
    assert FILE_REFUSAL in html.unescape(response.content.decode())
    refused(api_response, FILE_REFUSAL)
    assert File.objects.filter(pk=file.pk).exists()
    assert (media / file.content.name).exists()


def test_a_member_deletes_files_he_uploaded(client: Any, bob: Any, alice_project: Project) -> None:
    on_page, by_key = stored_file(alice_project, bob, "a.csv"), stored_file(alice_project, bob, "b.csv")
    login(client, bob)
    assert "Delete file" in client.get(file_url(alice_project, on_page)).content.decode()

    client.post(file_url(alice_project, on_page, "delete"))
    response = key_of(bob, alice_project).delete(f"/v1/files/{by_key.public_id}")

    assert response.status_code == 200 and response.json()["deleted"] is True
    assert not File.objects.exists()


def test_an_admin_deletes_a_members_file(client: Any, bob: Any, erin: Any, alice_project: Project) -> None:
    on_page, by_key = stored_file(alice_project, bob, "a.csv"), stored_file(alice_project, bob, "b.csv")
    login(client, erin)

    client.post(file_url(alice_project, on_page, "delete"))
    response = key_of(erin, alice_project).delete(f"/v1/files/{by_key.public_id}")

    assert response.status_code == 200
    assert not File.objects.exists()


def test_result_files_have_no_uploader_and_are_for_managers_only(
    bob: Any, erin: Any, alice_project: Project
) -> None:
    result = stored_file(alice_project, None, "ftjob-1_results.csv")
    File.objects.filter(pk=result.pk).update(purpose=FilePurpose.FINE_TUNE_RESULTS)

    refused(key_of(bob, alice_project).delete(f"/v1/files/{result.public_id}"), FILE_REFUSAL)
    assert key_of(erin, alice_project).delete(f"/v1/files/{result.public_id}").status_code == 200


# --- API keys ------------------------------------------------------------------------------------
def test_a_member_cannot_revoke_someone_elses_key(
    client: Any, alice: Any, bob: Any, alice_project: Project, alice_key: str
) -> None:
    # given
    key = ApiKey.objects.get(created_by=alice)
    keys_page = f"/projects/{alice_project.public_id}/api-keys/"
    login(client, bob)
    assert f"{keys_page}{key.prefix}/revoke" not in client.get(keys_page).content.decode()
    # when
    response = client.post(f"{keys_page}{key.prefix}/revoke", follow=True)
    # then
    assert KEY_REFUSAL in html.unescape(response.content.decode())
    key.refresh_from_db()
    assert key.revoked_at is None
    alices = APIClient()
    alices.credentials(HTTP_AUTHORIZATION=f"Bearer {alice_key}")
    assert alices.get("/v1/files").status_code == 200


def test_a_member_revokes_his_own_key_and_an_admin_anyones(
    client: Any, bob: Any, erin: Any, alice_project: Project, alice_key: str
) -> None:
    create_api_key(alice_project, "bob's", bob)
    keys_page = f"/projects/{alice_project.public_id}/api-keys/"
    bobs, alices = ApiKey.objects.get(name="bob's"), ApiKey.objects.get(name="test")

    login(client, bob)
    assert f"{keys_page}{bobs.prefix}/revoke" in client.get(keys_page).content.decode()
    client.post(f"{keys_page}{bobs.prefix}/revoke")
    login(client, erin)
    client.post(f"{keys_page}{alices.prefix}/revoke")

    assert not ApiKey.objects.filter(revoked_at__isnull=True).exists()


# --- Roles are read on every request -------------------------------------------------------------
def test_a_demoted_admin_loses_manager_rights_at_once(
    client: Any, alice: Any, bob: Any, erin: Any, alice_project: Project
) -> None:
    # given: erin, an admin, is logged in and has a key
    erins_key = key_of(erin, alice_project)
    bobs_file, bobs_model = stored_file(alice_project, bob), fine_tuned(alice_project, bob, "bobs")
    login(client, erin)
    assert "Delete file" in client.get(file_url(alice_project, bobs_file)).content.decode()
    # when alice makes her a member
    accounts.change_role(alice, Membership.objects.get(user=erin), Role.MEMBER)
    # then her open session and her key can no longer touch bob's work
    assert "Delete file" not in client.get(file_url(alice_project, bobs_file)).content.decode()
    response = client.post(file_url(alice_project, bobs_file, "delete"), follow=True)
    assert FILE_REFUSAL in html.unescape(response.content.decode())
    refused(erins_key.delete(f"/v1/models/{bobs_model.name}"), MODEL_REFUSAL)
    response = client.post("/team/", {"email": "x@example.com", "role": "member"}, follow=True)
    assert "Only owners and admins can do that." in html.unescape(response.content.decode())
    assert File.objects.filter(pk=bobs_file.pk).exists() and Model.objects.filter(pk=bobs_model.pk).exists()


def test_a_removed_members_open_session_reaches_nothing_of_the_organization(
    client: Any, alice: Any, bob: Any, alice_project: Project
) -> None:
    # given: bob, who has his own organization too, is logged in and working in alice's
    onboarding.create_personal_organization(bob)
    bobs_file = stored_file(alice_project, bob)
    login(client, bob)
    client.post("/organizations/switch", {"organization": alice_project.organization.public_id})
    pages = [
        f"/projects/{alice_project.public_id}/",
        file_url(alice_project, bobs_file),
        f"/projects/{alice_project.public_id}/api-keys/",
        f"/projects/{alice_project.public_id}/models/",
    ]
    assert all(client.get(page).status_code == 200 for page in pages)
    assert "alice@example.com" in client.get("/team/").content.decode()
    # when alice removes him
    accounts.remove_member(alice, Membership.objects.get(user=bob, organization=alice_project.organization))
    # then the same session gets 404 for the organization's objects, and the organization it had
    # chosen is no longer current: the team page is his own organization's
    assert [client.get(page).status_code for page in pages] == [404] * len(pages)
    assert client.post(file_url(alice_project, bobs_file, "delete")).status_code == 404
    team = client.get("/team/").content.decode()
    assert "bob&#x27;s organization" in team and "alice@example.com" not in team
    assert File.objects.filter(pk=bobs_file.pk).exists()


# --- Stopping someone else's work ------------------------------------------------------------------
def job_of(
    project: Project, user: Any, kind: str = JobKind.FINE_TUNE, status: str = JobStatus.RUNNING
) -> Job:
    return Job.objects.create(
        kind=kind,
        organization=project.organization,
        project=project,
        model_name="minilm-l6",
        status=status,
        created_by=user,
        request={"endpoint": "/v1/chat/completions"},
    )


STOP_REFUSAL = "Only owners and admins, and the member who started it, can {verb} this {noun}."


def test_a_member_cannot_cancel_or_pause_a_job_someone_else_started(
    client: Any, alice: Any, bob: Any, alice_project: Project
) -> None:
    job = job_of(alice_project, alice)
    batch = job_of(alice_project, alice, kind=JobKind.BATCH)
    bobs_key = key_of(bob, alice_project)
    # through the API, with his own key
    refused(
        bobs_key.post(f"/v1/fine_tuning/jobs/{job.public_id}/cancel"),
        STOP_REFUSAL.format(verb="cancel", noun="job"),
    )
    refused(
        bobs_key.post(f"/v1/fine_tuning/jobs/{job.public_id}/pause"),
        STOP_REFUSAL.format(verb="pause", noun="job"),
    )
    refused(
        bobs_key.post(f"/v1/batches/{batch.public_id}/cancel"),
        STOP_REFUSAL.format(verb="cancel", noun="batch"),
    )
    # on the dashboard, where the button is not offered either
    login(client, bob)
    page = client.get(f"/projects/{alice_project.public_id}/fine-tuning/{job.public_id}/").content.decode()
    assert "/cancel" not in page
    response = client.post(
        f"/projects/{alice_project.public_id}/fine-tuning/{job.public_id}/cancel", follow=True
    )
    assert html.escape(STOP_REFUSAL.format(verb="cancel", noun="job")) in response.content.decode()
    response = client.post(
        f"/projects/{alice_project.public_id}/batches/{batch.public_id}/cancel", follow=True
    )
    assert html.escape(STOP_REFUSAL.format(verb="cancel", noun="batch")) in response.content.decode()
    for row in (job, batch):
        row.refresh_from_db()
        assert row.status == JobStatus.RUNNING and row.stop_requested == ""


def test_the_member_who_started_a_job_and_an_admin_may_stop_it(
    client: Any, alice: Any, bob: Any, erin: Any, alice_project: Project
) -> None:
    bobs_job, bobs_batch = job_of(alice_project, bob), job_of(alice_project, bob, kind=JobKind.BATCH)
    assert (
        key_of(bob, alice_project).post(f"/v1/fine_tuning/jobs/{bobs_job.public_id}/pause").status_code == 200
    )
    assert key_of(bob, alice_project).post(f"/v1/batches/{bobs_batch.public_id}/cancel").status_code == 200
    queued = job_of(alice_project, bob, status=JobStatus.QUEUED)
    login(client, erin)
    client.post(f"/projects/{alice_project.public_id}/fine-tuning/{queued.public_id}/cancel")
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
    bobs_job.refresh_from_db()
    bobs_batch.refresh_from_db()
    assert bobs_job.stop_requested == "pause" and bobs_batch.stop_requested == "cancel"
