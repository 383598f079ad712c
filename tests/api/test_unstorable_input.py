"""No input gives a 500: text the database cannot store (NUL, lone surrogates) and values of the
wrong type or size are refused with a 400 that names the parameter, before anything is stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.api.models import IdempotencyRecord
from apps.jobs.models import Job, JobKind
from apps.projects.models import File
from tests.api.test_fine_tuning import make_file

NUL = "contains a NUL character (\\u0000); remove it."


def error_of(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def bad(message: str, param: str | None, code: str | None = "invalid_request") -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def post_json(client: Any, path: str, body: Any, **headers: Any) -> Any:
    """The body as the wire carries it: json.dumps writes a lone surrogate as a \\ud800 escape."""
    return client.post(path, json.dumps(body), content_type="application/json", **headers)


# --- Text the database cannot store --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/files?after=%00", "after"),
        ("/v1/fine_tuning/jobs?after=ftjob-a%00b", "after"),
        ("/v1/batches?limit=5&after=x%00", "after"),
        ("/v1/files?purpose=fine%00-tune", "purpose"),
        ("/v1/fine_tuning/jobs?metadata[te%00am]=a", "metadata[te\\u0000am]"),
        ("/v1/usage?start_time=0&project_ids=proj_%00", "project_ids"),
    ],
)
def test_a_nul_in_a_query_parameter_is_refused_by_name(api: Any, path: str, param: str) -> None:
    assert error_of(api.get(path)) == bad(f"{param} {NUL}", param)


def test_a_nul_in_a_path_parameter_is_refused_by_name(api: Any) -> None:
    assert error_of(api.get("/v1/files/file-%00")) == bad(f"file_id {NUL}", "file_id")
    assert error_of(api.post("/v1/fine_tuning/jobs/ftjob-%00/cancel")) == bad(f"job_id {NUL}", "job_id")
    assert error_of(api.get("/v1/models/tiny%00-gpt2")) == bad(f"model {NUL}", "model")


def test_a_lone_surrogate_in_a_nested_json_key_or_value_is_refused_with_its_path(
    api: Any, tiny_base: Any, alice_project: Any
) -> None:
    # given
    training_file = make_file(alice_project).public_id
    body = {"model": "tiny-bert", "training_file": training_file}
    # when
    in_key = post_json(api, "/v1/fine_tuning/jobs", {**body, "metadata": {"team\ud800": "support"}})
    in_value = post_json(api, "/v1/fine_tuning/jobs", {**body, "metadata": {"team": "sup\udfffport"}})
    in_list = post_json(
        api,
        "/v1/chat/completions",
        {
            "model": "tiny-gpt2",
            "messages": [{"role": "user", "content": "hello"}, {"role": "user", "content": "\udc00"}],
        },
    )
    # then
    assert error_of(in_key) == bad(
        "metadata.team\\ud800 contains a lone surrogate (\\ud800); remove it.", "metadata.team\\ud800"
    )
    assert error_of(in_value) == bad(
        "metadata.team contains a lone surrogate (\\udfff); remove it.", "metadata.team"
    )
    assert error_of(in_list) == bad(
        "messages[1].content contains a lone surrogate (\\udc00); remove it.", "messages[1].content"
    )
    assert not Job.objects.exists()


def test_a_nul_in_a_nested_json_key_is_named_with_it_escaped(api: Any) -> None:
    response = post_json(api, "/v1/batches", {"metadata": {"a\u0000b": "x"}})
    assert error_of(response) == bad(f"metadata.a\\u0000b {NUL}", "metadata.a\\u0000b")


def test_a_json_body_that_is_only_a_bad_string_is_refused(api: Any) -> None:
    response = post_json(api, "/v1/fine_tuning/jobs/estimate", "\u0000")
    assert error_of(response) == bad(f"The request body {NUL}", None)


def test_a_nul_in_the_idempotency_key_is_refused_before_the_key_is_claimed(api: Any) -> None:
    body = {"file": SimpleUploadedFile("a.csv", b"text,label\nhi,a\n"), "purpose": "fine-tune"}
    response = api.post("/v1/files", body, format="multipart", HTTP_IDEMPOTENCY_KEY="upload\x00-1")
    assert error_of(response) == bad(f"Idempotency-Key {NUL}", "Idempotency-Key")
    assert not IdempotencyRecord.objects.exists() and not File.objects.exists()


def test_a_nul_in_the_api_key_is_refused_before_it_is_looked_up(
    client: Any, alice_key: str, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(0):
        response = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {alice_key[:-1]}\x00")
    assert error_of(response) == bad(f"Authorization {NUL}", "Authorization")


def test_a_request_without_a_key_is_a_401_whatever_it_holds(client: Any) -> None:
    error = error_of(client.get("/v1/files?after=%00"), 401)
    assert error["code"] == "invalid_api_key"


def test_a_nul_in_a_form_field_is_refused_by_name(api: Any) -> None:
    body = {"file": SimpleUploadedFile("a.csv", b"text,label\nhi,a\n"), "purpose": "fine-tune\x00"}
    response = api.post("/v1/files", body, format="multipart")
    assert error_of(response) == bad(f"purpose {NUL}", "purpose")
    assert not File.objects.exists()


def test_json_escapes_inside_a_form_field_are_checked_once_decoded(api: Any) -> None:
    upload = SimpleUploadedFile("a.csv", b"review,label\nhi,a\n")
    body = {"file": upload, "purpose": "fine-tune", "column_mapping": '{"text": "rev\\u0000iew"}'}
    response = api.post("/v1/files", body, format="multipart")
    assert error_of(response) == bad(f"column_mapping.text {NUL}", "column_mapping.text")
    assert not File.objects.exists()


def test_a_bad_body_sent_with_a_method_the_url_does_not_take_is_still_a_405(api: Any) -> None:
    response = post_json(api, "/v1/models", {"model": "\u0000"})
    assert error_of(response, 405)["code"] == "method_not_allowed"


# --- Values of the wrong type or size ----------------------------------------------------------


@pytest.mark.parametrize(
    ("max_cost", "message"),
    [
        ([1_000_000], "max_cost must be a whole number of micro-dollars, 0 or more."),
        ({"usd": 5}, "max_cost must be a whole number of micro-dollars, 0 or more."),
        (2**70, "max_cost must be at most 9223372036854775807 micro-dollars."),
    ],
)
@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/estimate"])
def test_a_max_cost_of_the_wrong_type_or_past_the_column_is_refused(
    api: Any, tiny_base: Any, alice_project: Any, path: str, max_cost: Any, message: str
) -> None:
    body = {"model": "tiny-bert", "training_file": make_file(alice_project).public_id, "max_cost": max_cost}
    assert error_of(post_json(api, path, body)) == bad(message, "max_cost")
    assert not Job.objects.exists()


def test_the_largest_max_cost_the_column_holds_is_taken(api: Any, tiny_base: Any, alice_project: Any) -> None:
    body = {"model": "tiny-bert", "training_file": make_file(alice_project).public_id, "max_cost": 2**63 - 1}
    response = post_json(api, "/v1/fine_tuning/jobs", body)
    assert response.status_code == 200, response.content
    assert Job.objects.get().max_cost == 2**63 - 1


def test_batch_metadata_values_must_be_strings(api: Any, alice_project: Any) -> None:
    batch_file = make_file(alice_project, fmt="batch_jsonl", purpose="batch")
    body = {
        "input_file_id": batch_file.public_id,
        "endpoint": "/v1/completions",
        "completion_window": "24h",
        "metadata": {"run": ["a"]},
    }
    assert error_of(post_json(api, "/v1/batches", body)) == bad(
        "metadata keys must be strings of at most 64 characters, values strings of at most 512.", "metadata"
    )
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        ({"max_tokens": [16]}, "max_tokens must be an integer between 1 and 1000000.", "max_tokens"),
        (
            {"max_completion_tokens": "16"},
            "max_completion_tokens must be an integer between 1 and 1000000.",
            "max_completion_tokens",
        ),
        (
            {"stream": True, "stream_options": ["include_usage"]},
            "stream_options must be an object.",
            "stream_options",
        ),
    ],
)
def test_a_proxied_request_checks_the_fields_it_reads(
    api: Any, catalog: None, extra: dict[str, Any], message: str, param: str
) -> None:
    body = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}
    assert error_of(post_json(api, "/v1/chat/completions", body)) == bad(message, param)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "the body is nested too deeply."),
        ('{"model": "tiny-gpt2", "temperature": 1e400}', "the number 1e400 is too large"),
        (
            '{"model": "tiny-gpt2", "seed": ' + "9" * 5000 + "}",
            "the number 99999999999999999999… has too many digits",
        ),
    ],
)
def test_json_a_parser_would_fail_on_is_refused_as_unparsable(api: Any, body: str, message: str) -> None:
    response = api.post("/v1/chat/completions", body, content_type="application/json")
    assert error_of(response) == bad(
        f"We could not parse the JSON body of your request. JSON parse error - {message}",
        None,
        "invalid_json",
    )


def test_a_metadata_filter_matches_a_key_that_reads_like_a_lookup(api: Any, alice_project: Any) -> None:
    # given
    def job(metadata: dict[str, str]) -> str:
        created = Job.objects.create(
            organization=alice_project.organization,
            project=alice_project,
            kind=JobKind.FINE_TUNE,
            model_name="tiny-bert",
            metadata=metadata,
        )
        return created.public_id

    lookalike, plain = job({"isnull": "x"}), job({"team": "a"})
    # when
    by_lookalike = api.get("/v1/fine_tuning/jobs?metadata[isnull]=x")
    by_team = api.get("/v1/fine_tuning/jobs?metadata[team]=a")
    nested = api.get("/v1/fine_tuning/jobs?metadata[team__contains]=a")
    # then
    assert [j["id"] for j in by_lookalike.json()["data"]] == [lookalike]
    assert [j["id"] for j in by_team.json()["data"]] == [plain]
    assert nested.json()["data"] == []


@pytest.mark.parametrize(
    ("query", "message", "param"),
    [
        (
            "start_time=" + "9" * 5000,
            "start_time must be between 0 and 32503680000 (Unix seconds).",
            "start_time",
        ),
        (
            "start_time=0&end_time=86400&page=page_" + "9" * 5000,
            "page is not a cursor of this listing: pass the next_page of the previous response, with the same "
            "start_time, end_time and bucket_width.",
            "page",
        ),
    ],
)
def test_usage_parameters_with_thousands_of_digits_are_refused_by_name(
    api: Any, query: str, message: str, param: str
) -> None:
    assert error_of(api.get(f"/v1/usage?{query}")) == bad(message, param, None)


def test_a_timestamp_with_thousands_of_leading_zeros_is_read_as_its_value(api: Any) -> None:
    response = api.get("/v1/usage?start_time=0&end_time=" + "0" * 5000 + "86400")
    assert response.status_code == 200, response.content
    assert response.json()["data"][0]["end_time"] == 86400
