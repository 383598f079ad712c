"""The Files API (`/v1/files`): uploads, validation reports, listing, content, deletion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.models import File, FileStatus
from workers.tasks import validate_file

pytestmark = pytest.mark.usefixtures("media")

HINT_UTF8 = 'save the file as UTF-8 (in Excel: Save As → "CSV UTF-8"); it may be in Latin-1 or Windows-1252'
GOOD_CSV = (
    b"text,label\n"
    b"The plot was gripping from start to finish,positive\n"
    b'"Great acting, great score",positive\n'
    b"I walked out after twenty minutes,negative\n"
    b"Dull and far too long,negative\n"
)


def stored_blobs(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload(client: Any, name: str, data: bytes, purpose: str | None = "fine-tune", **fields: Any) -> Any:
    body: dict[str, Any] = {"file": SimpleUploadedFile(name, data), **fields}
    if purpose is not None:
        body["purpose"] = purpose
    return client.post("/v1/files", body, format="multipart")


def upload_and_validate(
    client: Any, name: str, data: bytes, purpose: str = "fine-tune", **fields: Any
) -> Any:
    """Upload, run the validation task the commit would have queued, and return the FileObject."""
    response = upload(client, name, data, purpose, **fields)
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "uploaded"
    validate_file(response.json()["id"])
    return client.get(f"/v1/files/{response.json()['id']}").json()


def errors(file_object: dict[str, Any]) -> list[tuple[int | None, str]]:
    return [(issue["line"], issue["message"]) for issue in file_object["validation"]["errors"]]


# ---------------------------------------------------------------------------------------------
# Upload and validation, per format
# ---------------------------------------------------------------------------------------------


def test_a_good_csv_is_uploaded_then_processed(
    api: Any, alice_project: Any, alice: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # when
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = upload(api, "reviews.csv", GOOD_CSV)

    # then: the upload answers at once, validation is queued after the commit
    assert response.status_code == 200
    created = response.json()
    assert set(created) == {
        "id",
        "object",
        "bytes",
        "created_at",
        "filename",
        "purpose",
        "status",
        "validation",
    }  # `expires_at` and `status_details` are left out until set, as OpenAI's are
    assert created["id"].startswith("file-")
    assert created["object"] == "file"
    assert created["bytes"] == len(GOOD_CSV)
    assert created["filename"] == "reviews.csv"
    assert created["purpose"] == "fine-tune"
    assert created["status"] == "uploaded"
    assert created["validation"] is None
    assert isinstance(created["created_at"], int)
    assert len(callbacks) == 1
    file = File.objects.get(public_id=created["id"])
    assert file.project == alice_project
    assert file.created_by == alice

    # when the worker runs
    validate_file(created["id"])

    # then
    body = api.get(f"/v1/files/{created['id']}").json()
    assert body["status"] == "processed"
    assert body["status_details"] == "4 rows, classification CSV, 2 labels"
    report = body["validation"]
    assert report["valid"] is True
    assert report["format"] == "classification_csv"
    assert report["rows"] == 4
    assert report["errors"] == [] and report["warnings"] == []
    assert report["stats"]["labels"] == {"negative": 2, "positive": 2}
    assert set(report["stats"]["tokens"]) == {"min", "mean", "p95", "max", "total"}
    file.refresh_from_db()
    assert file.format == "classification_csv"
    assert file.is_usable


def test_classification_jsonl_is_detected(api: Any) -> None:
    data = jsonl(
        {"text": "Good film", "label": "pos"},
        {"text": "Lovely film", "label": "pos"},
        {"text": "Bad film", "label": "neg"},
        {"text": "Awful film", "label": "neg"},
    )

    body = upload_and_validate(api, "reviews.jsonl", data)

    assert body["status"] == "processed"
    assert body["validation"]["format"] == "classification_jsonl"
    assert body["validation"]["rows"] == 4
    assert body["validation"]["stats"]["labels"] == {"neg": 2, "pos": 2}
    assert body["status_details"] == "4 rows, classification JSONL, 2 labels"


def test_chat_jsonl_is_detected(api: Any) -> None:
    data = jsonl(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
    )

    body = upload_and_validate(api, "chat.jsonl", data)

    assert body["status"] == "processed"
    assert body["validation"]["format"] == "chat_jsonl"
    assert body["validation"]["rows"] == 2
    assert body["validation"]["stats"]["messages"] == {"min": 2, "mean": 2.5, "max": 3}


def test_prompt_completion_jsonl_is_detected(api: Any) -> None:
    data = jsonl(
        {"prompt": "Capital of France?", "completion": "Paris"},
        {"prompt": "Capital of Spain?", "completion": "Madrid"},
    )

    body = upload_and_validate(api, "pc.jsonl", data)

    assert body["status"] == "processed"
    assert body["validation"]["format"] == "prompt_completion_jsonl"
    assert body["status_details"] == "2 rows, prompt/completion JSONL"


def test_batch_input_is_detected(api: Any) -> None:
    request = {"method": "POST", "url": "/v1/chat/completions"}
    data = jsonl(
        {
            "custom_id": "r1",
            **request,
            "body": {"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
        },
        {
            "custom_id": "r2",
            **request,
            "body": {"model": "m", "messages": [{"role": "user", "content": "Yo"}]},
        },
    )

    body = upload_and_validate(api, "batch.jsonl", data, purpose="batch")

    assert body["purpose"] == "batch"
    assert body["status"] == "processed"
    assert body["validation"]["format"] == "batch_jsonl"
    assert body["validation"]["stats"]["endpoints"] == {"/v1/chat/completions": 2}


def test_a_utf8_bom_is_accepted(api: Any) -> None:
    body = upload_and_validate(api, "bom.csv", b"\xef\xbb\xbf" + GOOD_CSV)

    assert body["status"] == "processed"
    assert body["validation"]["rows"] == 4
    assert body["validation"]["errors"] == []


def test_crlf_line_endings_keep_line_numbers(api: Any) -> None:
    data = GOOD_CSV.replace(b"\n", b"\r\n") + b",negative\r\n"

    body = upload_and_validate(api, "crlf.csv", data)

    assert body["status"] == "error"
    assert errors(body) == [(6, "text is empty")]
    assert body["validation"]["rows"] == 5
    assert body["status_details"] == "1 error (first: line 6: text is empty)"


def test_quoted_newlines_keep_physical_line_numbers(api: Any) -> None:
    data = (
        b"text,label\n"
        b'"A review that\nspans two lines",positive\n'
        b"A plain one-line review,negative\n"
        b'"Three lines:\nthe middle one\nand the last",positive\n'
        b'"This row has no label",\n'
        b"Another plain review,negative\n"
    )

    body = upload_and_validate(api, "quoted.csv", data)

    issue = body["validation"]["errors"][0]
    assert errors(body) == [(8, "label is empty")]
    assert issue["field"] == "label"
    assert issue["hint"] == "give every row a label, or remove the row"


def test_empty_lines_are_skipped_but_counted(api: Any) -> None:
    data = (
        b"\ntext,label\n\nLoved it,positive\nGreat fun,positive\n\n\n"
        b"Hated it,negative\n,negative\nDull,negative\n"
    )

    body = upload_and_validate(api, "gaps.csv", data)

    assert errors(body) == [(9, "text is empty")]
    assert body["validation"]["rows"] == 5


def test_numeric_labels_become_strings(api: Any) -> None:
    data = b"text,label\nSlow service,1\nCold food,1\nGreat pizza,5\nBest in town,5\n"

    body = upload_and_validate(api, "stars.csv", data)

    assert body["status"] == "processed"
    assert body["validation"]["stats"]["labels"] == {"1": 2, "5": 2}


def test_a_truncated_last_line_is_reported(api: Any) -> None:
    data = jsonl({"text": "Good film", "label": "pos"}, {"text": "Bad film", "label": "neg"})
    data += b'{"text": "Cut sh'

    body = upload_and_validate(api, "cut.jsonl", data)

    assert errors(body) == [
        (3, "invalid JSON: Unterminated string starting at (column 10); the file may be truncated")
    ]
    assert (
        body["validation"]["errors"][0]["hint"]
        == "the last line stops mid-object: upload the complete file again"
    )


def test_a_png_renamed_csv_is_refused_as_binary(api: Any) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256))

    body = upload_and_validate(api, "data.csv", data)

    assert body["status"] == "error"
    assert body["validation"]["format"] is None
    assert errors(body) == [(None, "file looks binary (PNG image)")]
    assert body["status_details"] == "1 error (first: file looks binary (PNG image))"


def test_latin1_is_reported_with_byte_and_hint(api: Any) -> None:
    data = "text,label\nCafé crème,pos\nGood film,pos\nBad film,neg\nAwful film,neg\n".encode("latin-1")

    body = upload_and_validate(api, "latin1.csv", data)

    assert errors(body) == [(2, "not valid UTF-8: byte 0xE9 at byte offset 14 (column 4)")]
    assert body["validation"]["errors"][0]["hint"] == HINT_UTF8


def test_an_empty_file_is_an_error(api: Any) -> None:
    body = upload_and_validate(api, "empty.csv", b"")

    assert body["bytes"] == 0
    assert body["status"] == "error"
    assert errors(body) == [(None, "the file is empty")]


def test_invalid_json_lines_are_reported_each_with_its_column(api: Any) -> None:
    data = (
        b'{"text": "Good film", "label": "pos"}\n'
        b'{"text": "Bad film" "label": "neg"}\n'
        b"not json\n"
        b'{"text": "Fine film", "label": "pos"}\n'
        b'{"text": "Poor film", "label": "neg"}\n'
    )

    body = upload_and_validate(api, "broken.jsonl", data)

    assert errors(body) == [
        (2, "invalid JSON: Expecting ',' delimiter (column 21)"),
        (3, "invalid JSON: Expecting value (column 1)"),
    ]
    assert body["validation"]["error_count"] == 2
    assert body["validation"]["rows"] == 5


def test_column_mapping_is_sent_as_json(api: Any) -> None:
    data = b"review,sentiment\nCrisp dialogue,pos\nA classic,pos\nPredictable,neg\nI fell asleep,neg\n"

    body = upload_and_validate(
        api, "mapped.csv", data, column_mapping=json.dumps({"text": "review", "label": "sentiment"})
    )

    assert body["status"] == "processed"
    assert body["validation"]["stats"]["labels"] == {"neg": 2, "pos": 2}


def test_a_file_in_error_is_not_usable(api: Any) -> None:
    body = upload_and_validate(api, "empty.csv", b"")

    file = File.objects.get(public_id=body["id"])
    assert file.status == FileStatus.ERROR
    assert file.is_usable is False


def test_a_second_validation_of_the_same_file_changes_nothing(api: Any) -> None:
    body = upload_and_validate(api, "reviews.csv", GOOD_CSV)
    File.objects.filter(public_id=body["id"]).update(status_details="kept")

    validate_file(body["id"])  # a redelivered task

    assert File.objects.get(public_id=body["id"]).status_details == "kept"


# ---------------------------------------------------------------------------------------------
# Refused uploads
# ---------------------------------------------------------------------------------------------


def test_an_oversize_upload_is_413_and_leaves_nothing(api: Any, settings: Any, media: Path) -> None:
    settings.MAX_UPLOAD_BYTES = 1000

    response = upload(api, "big.csv", b"text,label\n" + b"x" * 5000 + b",pos\n")

    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "message": "The file is larger than the 1,000 bytes limit.",
            "type": "invalid_request_error",
            "param": "file",
            "code": "file_too_large",
        }
    }
    assert not File.objects.exists()
    assert stored_blobs(media) == []


def test_an_upload_declared_far_over_the_limit_is_refused_before_reading(api: Any, settings: Any) -> None:
    settings.MAX_UPLOAD_BYTES = 1000

    response = upload(api, "big.csv", b"x" * 200_000)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert not File.objects.exists()


def test_an_upload_at_the_limit_is_accepted(api: Any, settings: Any) -> None:
    settings.MAX_UPLOAD_BYTES = 1000

    response = upload(api, "ok.csv", b"text,label\n" + b"x" * (1000 - 11))

    assert response.status_code == 200
    assert response.json()["bytes"] == 1000


@pytest.mark.parametrize(
    ("purpose", "message"),
    [
        (
            "assistants",
            "Invalid value for 'purpose': 'assistants'. Use one of 'fine-tune', 'batch', 'evals'.",
        ),
        (
            "fine-tune-results",
            "Invalid value for 'purpose': 'fine-tune-results'. Use one of 'fine-tune', 'batch', 'evals'.",
        ),
        (None, "Missing required parameter: 'purpose'."),
        ("", "Missing required parameter: 'purpose'."),
    ],
)
def test_a_bad_purpose_is_400_naming_the_param(
    api: Any, media: Path, purpose: str | None, message: str
) -> None:
    response = upload(api, "reviews.csv", GOOD_CSV, purpose)

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "purpose",
            "code": "invalid_request",
        }
    }
    assert not File.objects.exists()
    assert stored_blobs(media) == []


def test_a_missing_file_is_400_naming_the_param(api: Any) -> None:
    response = api.post("/v1/files", {"purpose": "fine-tune"}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Missing required parameter: 'file'.",
        "type": "invalid_request_error",
        "param": "file",
        "code": "invalid_request",
    }


def test_no_body_at_all_is_400_naming_the_first_param(api: Any) -> None:
    # No content type: the request's data is an empty dict, not a form's parts.
    response = api.generic("POST", "/v1/files")

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Missing required parameter: 'purpose'."
    assert not File.objects.exists()


def test_a_bad_column_mapping_is_400(api: Any) -> None:
    response = upload(api, "reviews.csv", GOOD_CSV, column_mapping="{not json")

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "column_mapping"
    assert not File.objects.exists()


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("column_mapping", ['{"text": "review"}', "{}"]),
        ("purpose", ["fine-tune", "batch"]),
    ],
)
def test_a_form_field_given_twice_is_400(api: Any, field: str, values: list[str]) -> None:
    # The last part would win silently: a mapping the customer did not mean, or the other purpose.
    fields: dict[str, Any] = {"purpose": "fine-tune", field: values}
    response = api.post(
        "/v1/files", {"file": SimpleUploadedFile("r.csv", GOOD_CSV), **fields}, format="multipart"
    )

    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f"{field} was given more than once; give it once.",
        "type": "invalid_request_error",
        "param": field,
        "code": None,
    }
    assert not File.objects.exists()


@pytest.mark.parametrize(
    ("purpose", "row"),
    [
        ("fine-tune", '{"text": "hello", "label": "a\\u0000b"}'),
        (
            "batch",
            '{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m\\ud800"}}',
        ),
    ],
)
def test_a_file_whose_json_decodes_to_unstorable_text_fails_validation_instead_of_staying_uploaded(
    api: Any, purpose: str, row: str
) -> None:
    # given a JSONL file whose label or model name holds a \u0000 or lone \ud800 escape
    data = ('{"text": "fine", "label": "ok"}\n' * 3 if purpose == "fine-tune" else "") + row + "\n"

    # when it is validated, then its report says so and the file is in error (the report's write
    # failed before, leaving the file `uploaded`, validated again and again, and its jobs waiting)
    file_object = upload_and_validate(api, "data.jsonl", data.encode(), purpose)

    assert file_object["status"] == "error"
    line = 4 if purpose == "fine-tune" else 1
    assert errors(file_object)[0][0] == line and "contains a" in errors(file_object)[0][1]


@pytest.mark.parametrize(
    "mapping", ['{"text": 1' + "0" * 5000 + "}", "[" * 100_000], ids=["integer-too-long", "nested-too-deep"]
)
def test_a_column_mapping_the_json_parser_cannot_read_is_400_not_500(api: Any, mapping: str) -> None:
    response = upload(api, "reviews.csv", GOOD_CSV, column_mapping=mapping)

    assert response.status_code == 400, response.content
    assert response.json()["error"] == {
        "message": 'column_mapping must be a JSON object such as {"text": "review", "label": "sentiment"}.',
        "type": "invalid_request_error",
        "param": "column_mapping",
        "code": "invalid_request",
    }
    assert not File.objects.exists()


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------


def upload_many(client: Any, count: int, purpose: str = "fine-tune") -> list[str]:
    return [upload(client, f"f{index}.csv", GOOD_CSV, purpose).json()["id"] for index in range(count)]


def test_the_list_is_newest_first_with_first_and_last_ids(api: Any) -> None:
    ids = upload_many(api, 3)

    body = api.get("/v1/files").json()

    assert body["object"] == "list"
    assert [item["id"] for item in body["data"]] == ids[::-1]
    assert body["first_id"] == ids[-1]
    assert body["last_id"] == ids[0]
    assert body["has_more"] is False
    assert body["data"][0]["object"] == "file"


def test_the_list_filters_by_purpose(api: Any) -> None:
    tuning = upload_many(api, 2)
    batch = upload_many(api, 1, purpose="batch")

    assert [item["id"] for item in api.get("/v1/files?purpose=batch").json()["data"]] == batch
    assert [item["id"] for item in api.get("/v1/files?purpose=fine-tune").json()["data"]] == tuning[::-1]
    assert api.get("/v1/files?purpose=assistants").json()["data"] == []


def test_the_list_orders_ascending_on_request(api: Any) -> None:
    ids = upload_many(api, 3)

    assert [item["id"] for item in api.get("/v1/files?order=asc").json()["data"]] == ids
    bad = api.get("/v1/files?order=sideways")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "order"


def test_the_list_pages_with_after_and_limit(api: Any) -> None:
    ids = upload_many(api, 5)[::-1]  # newest first

    first = api.get("/v1/files?limit=2").json()
    second = api.get(f"/v1/files?limit=2&after={first['last_id']}").json()
    third = api.get(f"/v1/files?limit=2&after={second['last_id']}").json()

    assert [item["id"] for item in first["data"]] == ids[0:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[0], ids[1], True)
    assert [item["id"] for item in second["data"]] == ids[2:4]
    assert second["has_more"] is True
    assert [item["id"] for item in third["data"]] == ids[4:]
    assert third["has_more"] is False
    ascending = api.get(f"/v1/files?order=asc&limit=2&after={ids[4]}").json()
    assert [item["id"] for item in ascending["data"]] == [ids[3], ids[2]]


def test_an_empty_list_has_null_first_and_last_ids(api: Any) -> None:
    assert api.get("/v1/files").json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_a_bad_limit_or_cursor_is_refused(api: Any) -> None:
    for limit in ("0", "10001", "ten"):
        response = api.get(f"/v1/files?limit={limit}")
        assert response.status_code == 400, limit
        assert response.json()["error"]["param"] == "limit"
    response = api.get("/v1/files?after=file-nope")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "after"


def test_the_list_costs_the_same_queries_for_many_files(api: Any, django_assert_max_num_queries: Any) -> None:
    upload_many(api, 12)
    api.get("/v1/files")  # last_used_at is written at most once a minute: not in the count

    # key + membership lookups, then one query for the page
    with django_assert_max_num_queries(3):
        response = api.get("/v1/files")
    assert len(response.json()["data"]) == 12


# ---------------------------------------------------------------------------------------------
# Retrieve, content, delete
# ---------------------------------------------------------------------------------------------


def test_content_returns_the_exact_bytes(api: Any) -> None:
    data = b"\xef\xbb\xbftext,label\r\nCaf\xe9,pos\r\n\x00\xff"
    file_id = upload(api, "odd name.csv", data).json()["id"]

    response = api.get(f"/v1/files/{file_id}/content")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    assert response["Content-Type"] == "application/octet-stream"
    assert 'filename="odd name.csv"' in response["Content-Disposition"]


def test_content_ignores_the_accept_header(api: Any) -> None:
    # The SDK asks for file content with `Accept: application/binary`.
    file_id = upload(api, "reviews.csv", GOOD_CSV).json()["id"]

    response = api.get(f"/v1/files/{file_id}/content", HTTP_ACCEPT="application/binary")
    missing = api.get("/v1/files/file-nope/content", HTTP_ACCEPT="application/binary")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == GOOD_CSV
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/json"
    assert missing.json() == not_found("file-nope")


def test_the_stored_name_never_contains_the_users_filename(api: Any, media: Path) -> None:
    file_id = upload(api, "../../etc/passwd.csv", GOOD_CSV).json()["id"]

    file = File.objects.get(public_id=file_id)
    assert file.filename == "passwd.csv"
    assert str(file.content.name).endswith(file_id)
    assert [path.name for path in stored_blobs(media)] == [file_id]


def test_delete_removes_the_row_and_the_blob(
    api: Any, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    file_id = upload(api, "reviews.csv", GOOD_CSV).json()["id"]
    assert len(stored_blobs(media)) == 1

    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/v1/files/{file_id}")

    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert not File.objects.filter(public_id=file_id).exists()
    assert stored_blobs(media) == []
    assert api.get(f"/v1/files/{file_id}").status_code == 404
    validate_file(file_id)  # a validation queued before the delete finds nothing to do


def test_a_file_a_queued_fine_tune_reads_is_not_deleted_until_the_job_ends(
    api: Any, tiny_base: Any, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    file_id = upload_and_validate(api, "reviews.csv", GOOD_CSV)["id"]
    with django_capture_on_commit_callbacks(execute=False):  # no worker: the job stays queued
        job = api.post(
            "/v1/fine_tuning/jobs", {"model": "tiny-bert", "training_file": file_id}, format="json"
        )
    job_id = job.json()["id"]

    response = api.delete(f"/v1/files/{file_id}")

    assert response.status_code == 409, response.content
    assert response.json() == {
        "error": {
            "message": f"File {file_id} is used by fine-tuning job {job_id}, which is queued. Cancel the job "
            "or wait for it to finish, then delete the file.",
            "type": "invalid_request_error",
            "param": None,
            "code": "file_in_use",
        }
    }
    assert len(stored_blobs(media)) == 1
    # once the job is cancelled the file may go
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/v1/files/{file_id}").status_code == 200
    assert stored_blobs(media) == []


@pytest.mark.parametrize(
    ("kind", "status", "noun", "said"),
    [
        (JobKind.FINE_TUNE, JobStatus.VALIDATING_FILES, "fine-tuning job", "validating files"),
        (JobKind.FINE_TUNE, JobStatus.RUNNING, "fine-tuning job", "running"),
        (JobKind.FINE_TUNE, JobStatus.PAUSED, "fine-tuning job", "paused"),
        (JobKind.BATCH, JobStatus.QUEUED, "batch", "queued"),
        (JobKind.BATCH, JobStatus.RUNNING, "batch", "running"),
    ],
)
def test_no_unfinished_job_loses_its_file(
    api: Any, alice_project: Any, kind: str, status: str, noun: str, said: str
) -> None:
    file_id = upload_and_validate(api, "reviews.csv", GOOD_CSV)["id"]
    file = File.objects.get(public_id=file_id)
    job = Job.objects.create(
        kind=kind,
        status=status,
        project=alice_project,
        organization=alice_project.organization,
        model_name="tiny-bert",
        validation_file=file,
    )

    response = api.delete(f"/v1/files/{file_id}")

    assert response.status_code == 409
    assert response.json()["error"]["message"].startswith(
        f"File {file_id} is used by {noun} {job.public_id}, which is {said}."
    )
    assert File.objects.filter(pk=file.pk).exists()


def test_a_finished_jobs_file_can_be_deleted(api: Any, alice_project: Any) -> None:
    file_id = upload_and_validate(api, "reviews.csv", GOOD_CSV)["id"]
    file = File.objects.get(public_id=file_id)
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        Job.objects.create(
            kind=JobKind.FINE_TUNE,
            status=status,
            project=alice_project,
            organization=alice_project.organization,
            model_name="tiny-bert",
            training_file=file,
        )

    assert api.delete(f"/v1/files/{file_id}").status_code == 200
    assert Job.objects.filter(training_file=None).count() == 3  # the jobs and their history stay


# ---------------------------------------------------------------------------------------------
# Tenancy
# ---------------------------------------------------------------------------------------------


def not_found(file_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"No such file: '{file_id}'.",
            "type": "invalid_request_error",
            "param": "id",
            "code": "not_found",
        }
    }


def test_another_tenants_file_is_404_like_a_missing_one(api: Any, carol_api: Any, media: Path) -> None:
    file_id = upload(api, "reviews.csv", GOOD_CSV).json()["id"]
    missing = "file-" + "0" * 24

    for suffix in ("", "/content"):
        for target in (file_id, missing):
            response = carol_api.get(f"/v1/files/{target}{suffix}")
            assert response.status_code == 404, (target, suffix)
            assert response.json() == not_found(target)
    response = carol_api.delete(f"/v1/files/{file_id}")
    assert response.status_code == 404
    assert response.json() == not_found(file_id)
    assert carol_api.delete(f"/v1/files/{missing}").json() == not_found(missing)

    assert File.objects.filter(public_id=file_id).exists()
    assert len(stored_blobs(media)) == 1
    assert carol_api.get("/v1/files").json()["data"] == []
    assert carol_api.get(f"/v1/files?after={file_id}").status_code == 404


def test_teammates_keys_see_the_projects_files(api: Any, bob: Any, alice_project: Any) -> None:
    from rest_framework.test import APIClient

    from apps.projects import actions

    file_id = upload(api, "reviews.csv", GOOD_CSV).json()["id"]
    _, raw = actions.create_api_key(alice_project, "bob's", bob)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert client.get(f"/v1/files/{file_id}").status_code == 200
