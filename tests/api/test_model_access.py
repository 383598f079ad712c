"""What an API key reaches among its organization's models: every key lists, retrieves (and calls)
the catalog and all the organization's fine-tuned models, but downloads and deletes only the
models of its own project (docs/api.md, "What each role and key may do")."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from apps.projects import actions as projects
from apps.projects.models import Project
from apps.registry.models import Model

pytestmark = pytest.mark.usefixtures("media")


@pytest.fixture
def other_project(alice: Any, alice_org: Any) -> Project:
    return projects.create_project(alice_org, alice, "Other project")


def key_client(user: Any, project: Project) -> APIClient:
    _, raw = projects.create_api_key(project, "key", user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def fine_tuned(project: Project | None, organization: Any, creator: Any, suffix: str = "tickets") -> Model:
    """A fine-tuned classifier with (tiny stand-in) weights in storage."""
    model = Model.objects.create(
        name=f"ft:minilm-l6:acme:{suffix}:ftjob-{suffix}",
        organization=organization,
        project=project,
        base=Model.objects.get(name="minilm-l6"),
        task="classification",
        limits={"servable": True},
        artifact_key=f"models/{organization.public_id}/{suffix}",
        created_by=creator,
    )
    default_storage.save(f"{model.artifact_key}/config.json", ContentFile(b'{"architectures": []}'))
    return model


def other_project_error(name: str) -> dict[str, Any]:
    return {
        "message": f"The model '{name}' belongs to another project. An API key can download or delete only the "
        "models of its own project: use a key of the project whose job made it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "permission_denied",
    }


def test_a_key_cannot_download_or_delete_another_projects_model(
    alice: Any, alice_org: Any, alice_project: Project, other_project: Project
) -> None:
    # given: a model of alice's default project, and an owner's key of her other project
    model = fine_tuned(alice_project, alice_org, alice)
    other = key_client(alice, other_project)
    # when
    download = other.get(f"/v1/models/{model.name}/content")
    delete = other.delete(f"/v1/models/{model.name}")
    # then
    assert (download.status_code, download.json()["error"]) == (403, other_project_error(model.name))
    assert (delete.status_code, delete.json()["error"]) == (403, other_project_error(model.name))
    assert Model.objects.filter(pk=model.pk).exists()
    assert default_storage.exists(f"{model.artifact_key}/config.json")


def test_a_key_still_lists_and_retrieves_the_organizations_models_and_the_catalog(
    alice: Any, alice_org: Any, alice_project: Project, other_project: Project
) -> None:
    model = fine_tuned(alice_project, alice_org, alice)
    other = key_client(alice, other_project)

    listed = {m["id"] for m in other.get("/v1/models").json()["data"]}
    retrieved = other.get(f"/v1/models/{model.name}")

    assert {model.name, "minilm-l6", "smollm2-135m-instruct"} <= listed
    assert retrieved.status_code == 200 and retrieved.json()["id"] == model.name
    assert other.get("/v1/models/minilm-l6").status_code == 200


def test_a_key_downloads_and_deletes_its_own_projects_model(
    alice: Any, alice_org: Any, alice_project: Project
) -> None:
    model = fine_tuned(alice_project, alice_org, alice)
    own = key_client(alice, alice_project)

    download = own.get(f"/v1/models/{model.name}/content")
    with tarfile.open(fileobj=io.BytesIO(b"".join(download.streaming_content)), mode="r:gz") as archive:
        names = archive.getnames()
    deleted = own.delete(f"/v1/models/{model.name}")

    assert download.status_code == 200
    assert names == [f"{model.name.replace(':', '-')}/config.json"]
    assert deleted.json() == {"id": model.name, "object": "model", "deleted": True}


def test_a_model_whose_project_was_deleted_is_out_of_every_keys_reach(
    client: Any, alice: Any, alice_org: Any, alice_project: Project, other_project: Project
) -> None:
    # given: the project that made the model is gone and the model stayed, with no project (deleting
    # a project from the dashboard deletes its models too; a row deleted by staff in admin does not)
    model = fine_tuned(other_project, alice_org, alice)
    other_project.delete()
    own = key_client(alice, alice_project)
    # then no key may download or delete it; an owner still deletes it on the dashboard
    message = (
        f"The model '{model.name}' no longer belongs to a project (its project was deleted), so no API key "
        "can download or delete it. An owner or admin can delete it on the dashboard."
    )
    for response in (own.get(f"/v1/models/{model.name}/content"), own.delete(f"/v1/models/{model.name}")):
        assert response.status_code == 403
        assert response.json()["error"] == {**other_project_error(model.name), "message": message}
    client.force_login(alice)
    client.post(f"/projects/{alice_project.public_id}/models/{model.name}/delete")
    assert not Model.objects.filter(pk=model.pk).exists()


def test_an_outsiders_key_gets_404_for_download_and_delete(
    alice: Any, alice_org: Any, alice_project: Project, carol_api: Any
) -> None:
    model = fine_tuned(alice_project, alice_org, alice)

    for response in (
        carol_api.get(f"/v1/models/{model.name}/content"),
        carol_api.delete(f"/v1/models/{model.name}"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"
    assert Model.objects.filter(pk=model.pk).exists()
