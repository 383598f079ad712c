from __future__ import annotations

from typing import Any

from apps.projects.models import Project
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
