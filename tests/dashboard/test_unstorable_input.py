"""Pages never answer a 500 to text the database cannot store, nor to a query parameter of the
wrong shape: a readable 400, or the bad value ignored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.jobs.models import Job
from apps.projects.models import File
from apps.registry.models import Model
from tests.api.test_fine_tuning import make_file
from tests.conftest import login

NUL = "contains a NUL character (\\u0000); remove it."


def refused(response: Any) -> str:
    assert response.status_code == 400, response.content[:500]
    page: str = response.content.decode()
    assert "<h1>Bad request</h1>" in page
    return page


@pytest.mark.parametrize("where", ["proj_%00/files/", "{project}/files/a%00/", "{project}/models/ft%00/"])
def test_a_nul_in_a_page_address_is_a_readable_400(alice_client: Any, alice_project: Any, where: str) -> None:
    path = "/projects/" + where.format(project=alice_project.public_id)
    assert f"The address {NUL}" in refused(alice_client.get(path))


def test_a_nul_in_a_query_parameter_is_a_readable_400(alice_client: Any, alice_project: Any) -> None:
    page = refused(alice_client.get(f"/projects/{alice_project.public_id}/batches/?model=tiny%00&file=x"))
    assert f"model {NUL}" in page


def test_an_anonymous_visitor_gets_the_same_readable_400(client: Any) -> None:
    assert f"next {NUL}" in refused(client.get("/accounts/login/?next=/%00"))


@pytest.mark.parametrize("multipart", [True, False])
def test_a_nul_in_a_form_field_is_a_readable_400_and_changes_nothing(
    alice_client: Any, alice_project: Any, multipart: bool
) -> None:
    path = f"/projects/{alice_project.public_id}/rename"
    if multipart:
        response = alice_client.post(path, {"name": "Shop\x00"})
    else:
        response = alice_client.post(path, "name=Shop%00", content_type="application/x-www-form-urlencoded")
    assert f"name {NUL}" in refused(response)
    alice_project.refresh_from_db()
    assert alice_project.name != "Shop\x00"


def test_a_fine_tuning_form_with_a_nul_is_refused_before_it_is_looked_up(
    alice_client: Any, alice_project: Any
) -> None:
    response = alice_client.post(
        f"/projects/{alice_project.public_id}/fine-tuning/new", {"model": "tiny\x00", "training_file": "x"}
    )
    assert f"model {NUL}" in refused(response)
    assert not Job.objects.exists()


def test_an_upload_reads_its_own_form_and_its_column_names_are_checked(
    alice_client: Any, alice_project: Any
) -> None:
    body = {
        "file": SimpleUploadedFile("a.csv", b"review,label\nhi,a\n"),
        "purpose": "fine-tune",
        "column_text": "rev\x00iew",
    }
    response = alice_client.post(
        f"/projects/{alice_project.public_id}/files/upload", body, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 400
    assert response.json() == {"error": f"column_mapping.text {NUL}"}
    assert not File.objects.exists()


@pytest.mark.parametrize("line", ["%C2%B2", "9" * 5000, "%EF%BC%93"])
def test_a_line_number_that_is_not_ascii_digits_is_ignored(
    alice_client: Any, alice_project: Any, line: str
) -> None:
    file = make_file(alice_project)
    response = alice_client.get(f"/projects/{alice_project.public_id}/files/{file.public_id}/?line={line}")
    assert response.status_code == 200
    assert response.context.get("line") is None  # the first rows, as for no line at all


def test_the_playground_refuses_a_lone_surrogate_by_its_path(alice_client: Any, alice_project: Any) -> None:
    Model.objects.create(name="tiny-gpt2", task="generation", limits={"servable": True})
    body = {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi \ud800"}]}
    response = alice_client.post(
        f"/projects/{alice_project.public_id}/playground/chat",
        json.dumps(body),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "messages[0].content contains a lone surrogate (\\ud800); remove it.",
        "type": "invalid_request_error",
        "param": "messages[0].content",
        "code": "invalid_request",
    }
    assert not Job.objects.exists()


def test_the_playground_answers_a_form_body_with_a_400_once_the_csrf_check_has_read_it(
    alice: Any, alice_project: Any
) -> None:
    # given: a browser session whose CSRF check passes, as in production
    client = login(Client(enforce_csrf_checks=True), alice)
    client.get(f"/projects/{alice_project.public_id}/playground/")
    token = client.cookies["csrftoken"].value
    # when: a form, not JSON (the CSRF check reads it as a form, and its raw bytes are gone)
    response = client.post(
        f"/projects/{alice_project.public_id}/playground/chat",
        {"csrfmiddlewaretoken": token, "model": "tiny-gpt2"},
    )
    # then
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The request body must be JSON."
