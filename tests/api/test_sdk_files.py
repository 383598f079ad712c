"""Contract test: the official `openai` SDK, strict response validation on, against a live server
and a real Celery worker that validates the uploads."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

pytestmark = pytest.mark.integration

CSV = (
    b"text,label\nThe plot was gripping,positive\nGreat acting,positive\n"
    b"I walked out,negative\nDull and long,negative\n"
)


def sdk(live_server: Any, api_key: str) -> OpenAI:
    return OpenAI(
        base_url=live_server.url + "/v1",
        api_key=api_key,
        _strict_response_validation=True,
        max_retries=0,
        timeout=30,
    )


def test_the_files_lifecycle_through_the_sdk(live_server: Any, celery_worker: Any, alice_key: str) -> None:
    client = sdk(live_server, alice_key)

    # upload, then wait for the worker's validation
    created = client.files.create(file=("reviews.csv", CSV, "text/csv"), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert (created.object, created.bytes, created.filename, created.purpose) == (
        "file",
        len(CSV),
        "reviews.csv",
        "fine-tune",
    )
    assert created.status == "uploaded"
    processed = client.files.wait_for_processing(created.id, poll_interval=0.2, max_wait_seconds=60)
    assert processed.status == "processed"
    assert processed.status_details == "4 rows, classification CSV, 2 labels"
    assert (
        processed.model_extra is not None
        and processed.model_extra["validation"]["format"] == "classification_csv"
    )

    # a bad file ends in error, with the reason in status_details
    broken = client.files.create(
        file=("broken.csv", b"\x89PNG\r\n\x1a\n\x00\x00", "text/csv"), purpose="fine-tune"
    )
    failed = client.files.wait_for_processing(broken.id, poll_interval=0.2, max_wait_seconds=60)
    assert failed.status == "error"
    assert failed.status_details == "1 error (first: file looks binary (PNG image))"

    # auto-pagination across pages smaller than the list
    more = [client.files.create(file=(f"f{i}.csv", CSV), purpose="batch").id for i in range(3)]
    every = [file.id for file in client.files.list(limit=2)]
    assert every == [*more[::-1], broken.id, created.id]
    first_page = client.files.list(limit=2)
    assert first_page.has_more is True
    assert [file.id for file in client.files.list(purpose="batch", order="asc")] == more

    # retrieve and content
    assert client.files.retrieve(created.id).status == "processed"
    assert client.files.content(created.id).read() == CSV

    # delete
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_sdk_error_classes(live_server: Any, alice_key: str, carol_key: str) -> None:
    alice = sdk(live_server, alice_key)
    file_id = alice.files.create(file=("reviews.csv", CSV), purpose="fine-tune").id

    with pytest.raises(openai.AuthenticationError) as bad_key:
        sdk(live_server, "sk-mw-" + "0" * 40).files.list()
    assert bad_key.value.status_code == 401
    assert bad_key.value.code == "invalid_api_key"

    carol = sdk(live_server, carol_key)
    for call in (
        lambda: carol.files.retrieve(file_id),
        lambda: carol.files.content(file_id),
        lambda: carol.files.delete(file_id),
    ):
        with pytest.raises(openai.NotFoundError) as not_found:
            call()
        assert isinstance(not_found.value.body, dict)
        assert not_found.value.body["code"] == "not_found"
        assert not_found.value.body["message"] == f"No such file: '{file_id}'."
        assert not_found.value.request_id and not_found.value.request_id.startswith("req_")
    assert [file.id for file in carol.files.list()] == []

    with pytest.raises(openai.BadRequestError) as bad_purpose:
        alice.files.create(file=("reviews.csv", CSV), purpose="assistants")
    assert isinstance(bad_purpose.value.body, dict)
    assert bad_purpose.value.body["param"] == "purpose"
    assert (
        bad_purpose.value.body["message"]
        == "Invalid value for 'purpose': 'assistants'. Use one of 'fine-tune', 'batch', 'evals'."
    )
    assert bad_purpose.value.param == "purpose"
