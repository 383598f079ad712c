"""The Evals API without a worker: evals made, read, listed, renamed and deleted; every refusal of a
bad eval or run with its exact message; runs admitted as batches are; outsiders get 404."""

from __future__ import annotations

from typing import Any

import pytest

from apps.evals.models import Eval, EvalRun
from apps.jobs.models import Job, JobKind, JobStatus

SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def eval_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": "Capitals",
        "data_source_config": {"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
        "testing_criteria": [CHECK],
        "metadata": {"team": "geo"},
    }
    body.update(overrides)
    return body


def create_eval(api: Any, **overrides: Any) -> dict[str, Any]:
    response = api.post("/v1/evals", eval_body(**overrides), format="json")
    assert response.status_code == 200, response.content
    return dict(response.json())


def error_of(response: Any) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["message"], error["param"]


def jsonl_run(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}}


ROW = {"item": {"question": "Capital of France?", "answer": "Paris"}, "sample": {"output_text": "Paris"}}


def test_an_eval_is_created_read_listed_renamed_and_deleted(api: Any) -> None:
    created = create_eval(api)
    assert created["object"] == "eval" and created["id"].startswith("eval_")
    assert created["name"] == "Capitals" and created["metadata"] == {"team": "geo"}
    # shown as OpenAI shows it: the schema of a whole row, item and sample
    schema = created["data_source_config"]["schema"]
    assert created["data_source_config"]["type"] == "custom"
    assert schema["properties"]["item"] == SCHEMA and schema["required"] == ["item", "sample"]
    [criterion] = created["testing_criteria"]
    assert {k: criterion[k] for k in CHECK} == CHECK and criterion["id"].startswith("exact-")

    assert api.get(f"/v1/evals/{created['id']}").json() == created
    second = create_eval(api, name="Second")
    listed = api.get("/v1/evals").json()
    assert [e["id"] for e in listed["data"]] == [created["id"], second["id"]]  # oldest first, as OpenAI
    assert listed["first_id"] == created["id"] and listed["last_id"] == second["id"]
    assert [e["id"] for e in api.get("/v1/evals?order=desc&limit=1").json()["data"]] == [second["id"]]

    renamed = api.post(f"/v1/evals/{created['id']}", {"name": "Capitals v2"}, format="json").json()
    assert renamed["name"] == "Capitals v2" and renamed["testing_criteria"] == created["testing_criteria"]

    deleted = api.delete(f"/v1/evals/{created['id']}").json()
    assert deleted == {"object": "eval.deleted", "deleted": True, "eval_id": created["id"]}
    assert api.get(f"/v1/evals/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    ("overrides", "message", "param"),
    [
        (
            {"data_source_config": None},
            "Missing required parameter: 'data_source_config'.",
            "data_source_config",
        ),
        (
            {"data_source_config": {"type": "logs"}},
            "data_source_config.type 'logs' is not supported: Modelworks does not store completions, so there "
            "are no logs to evaluate. Use 'custom' with an item_schema, and give the items to each run.",
            "data_source_config.type",
        ),
        (
            {"data_source_config": {"type": "custom", "item_schema": {"type": "nonsense"}}},
            "data_source_config.item_schema is not a valid JSON schema: 'nonsense' is not valid under any of "
            "the given schemas",
            "data_source_config.item_schema",
        ),
        (
            {"data_source_config": {"type": "custom", "item_schema": SCHEMA, "include_sample_schema": "yes"}},
            "data_source_config.include_sample_schema must be true or false.",
            "data_source_config.include_sample_schema",
        ),
        ({"testing_criteria": []}, "testing_criteria must be a list of 1 to 20 graders.", "testing_criteria"),
        (
            {"testing_criteria": [CHECK, CHECK]},
            "testing_criteria[1].name 'exact' is already used by another criterion; names must differ.",
            "testing_criteria[1].name",
        ),
        (
            {"testing_criteria": [{"type": "python", "name": "p", "source": "def grade(s, i): return 1"}]},
            "The python grader is not supported: running customers' code is out of scope. Use string_check, "
            "text_similarity, score_model, label_model or multi.",
            "testing_criteria[0].type",
        ),
        (
            {"testing_criteria": [{**CHECK, "reference": "{{answer}}"}]},
            "Invalid template variable {{answer}} in testing_criteria[0].reference: use {{item.<path>}} or "
            "{{sample.<path>}}.",
            "testing_criteria[0].reference",
        ),
        (
            {
                "testing_criteria": [
                    {
                        "type": "label_model",
                        "name": "judge",
                        "model": "no-such-model",
                        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
                        "labels": ["right", "wrong"],
                        "passing_labels": ["right"],
                    }
                ]
            },
            "The model 'no-such-model' does not exist or you do not have access to it.",
            "testing_criteria[0].model",
        ),
        ({"surprise": 1}, "Unrecognized request argument supplied: surprise", "surprise"),
    ],
)
def test_a_bad_eval_is_refused_saying_why(
    api: Any, overrides: dict[str, Any], message: str, param: str
) -> None:
    response = api.post("/v1/evals", eval_body(**overrides), format="json")
    assert error_of(response) == (response.status_code, message, param)
    assert response.status_code in (400, 404)
    assert not Eval.objects.exists()


def test_a_jsonl_run_is_admitted_as_a_queued_job(api: Any, alice_project: Any) -> None:
    created = create_eval(api)
    response = api.post(
        f"/v1/evals/{created['id']}/runs", {**jsonl_run([ROW, ROW]), "name": "given"}, format="json"
    )
    assert response.status_code == 200, response.content
    run = response.json()
    assert run["object"] == "eval.run" and run["id"].startswith("evalrun_")
    assert run["eval_id"] == created["id"] and run["status"] == "queued" and run["name"] == "given"
    assert run["result_counts"] == {"total": 0, "errored": 0, "failed": 0, "passed": 0}
    assert run["data_source"]["source"]["content"] == [ROW, ROW]
    assert run["report_url"].endswith(f"/evals/{created['id']}/runs/{run['id']}/")
    job = Job.objects.get(public_id=run["id"])
    assert job.kind == JobKind.EVAL_RUN and job.status == JobStatus.QUEUED
    assert job.progress["total"] == 2 and job.request["local"] is False  # string checks only: no GPU
    listed = api.get(f"/v1/evals/{created['id']}/runs").json()
    assert [r["id"] for r in listed["data"]] == [run["id"]]
    assert api.get(f"/v1/evals/{created['id']}/runs?status=completed").json()["data"] == []
    assert api.get(f"/v1/evals/{created['id']}/runs/{run['id']}").json()["id"] == run["id"]

    cancelled = api.post(f"/v1/evals/{created['id']}/runs/{run['id']}").json()  # the SDK's cancel
    assert cancelled["status"] == "canceled"
    again = api.post(f"/v1/evals/{created['id']}/runs/{run['id']}/cancel")
    assert error_of(again) == (400, f"Run {run['id']} is already canceled.", "run_id")
    deleted = api.delete(f"/v1/evals/{created['id']}/runs/{run['id']}").json()
    assert deleted == {"object": "eval.run.deleted", "deleted": True, "run_id": run["id"]}
    assert not EvalRun.objects.exists()


BAD_ROW_MESSAGE = "data_source.source.content[1].item does not match the eval's item_schema: 'answer' is a required property"


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({}, "Missing required parameter: 'data_source'.", "data_source"),
        (
            {"data_source": {"type": "responses"}},
            "data_source.type 'responses' is not supported: the Responses API is not offered here. Use "
            "'completions' to sample a model, or 'jsonl' with the answers in each row's sample.",
            "data_source.type",
        ),
        (
            jsonl_run([ROW, {"item": {"question": "?"}}]),
            BAD_ROW_MESSAGE,
            "data_source.source.content[1].item",
        ),
        (
            jsonl_run([{"question": "?", "answer": "x"}]),
            'data_source.source.content[0] must be an object with an "item" object.',
            "data_source.source.content[0]",
        ),
        (
            jsonl_run([]),
            "data_source.source.content must be a list of 1 to 50,000 rows.",
            "data_source.source.content",
        ),
        (
            {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": "file-nope"}}},
            "Invalid file id 'file-nope': no such file in this project.",
            "data_source.source.id",
        ),
        (
            {
                "data_source": {
                    "type": "completions",
                    "model": "no-such-model",
                    "input_messages": {"type": "template", "template": [{"role": "user", "content": "hi"}]},
                    "source": {"type": "file_content", "content": [ROW]},
                }
            },
            "The model 'no-such-model' does not exist or you do not have access to it.",
            "model",
        ),
    ],
)
def test_a_bad_run_is_refused_saying_why(api: Any, body: dict[str, Any], message: str, param: str) -> None:
    created = create_eval(api)
    response = api.post(f"/v1/evals/{created['id']}/runs", body, format="json")
    assert error_of(response)[1:] == (message, param)
    assert response.status_code in (400, 404)
    assert not Job.objects.exists()


def test_a_run_reads_only_a_processed_evals_file(api: Any, alice_project: Any) -> None:
    from tests.api.test_fine_tuning import make_file

    created = create_eval(api)
    tune = make_file(alice_project)
    body = {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": tune.public_id}}}
    response = api.post(f"/v1/evals/{created['id']}/runs", body, format="json")
    assert error_of(response) == (
        400,
        f"File {tune.public_id} has purpose 'fine-tune'; eval runs read files with purpose 'evals'.",
        "data_source.source.id",
    )


def test_eval_runs_share_the_plans_places_for_batches(api: Any, alice_project: Any) -> None:
    created = create_eval(api)
    limit = alice_project.organization.subscription.plan.concurrent_batches
    for _ in range(limit):
        assert api.post(f"/v1/evals/{created['id']}/runs", jsonl_run([ROW]), format="json").status_code == 200
    refused = api.post(f"/v1/evals/{created['id']}/runs", jsonl_run([ROW]), format="json")
    assert refused.status_code == 429
    assert refused.json()["error"]["message"].startswith(f"You have {limit} batch(es) running or queued")


def test_an_outsider_gets_404_everywhere(api: Any, carol_api: Any) -> None:
    created = create_eval(api)
    run = api.post(f"/v1/evals/{created['id']}/runs", jsonl_run([ROW]), format="json").json()
    eval_url, run_url = f"/v1/evals/{created['id']}", f"/v1/evals/{created['id']}/runs/{run['id']}"
    for method, url in [
        ("get", eval_url),
        ("post", eval_url),
        ("delete", eval_url),
        ("get", f"{eval_url}/runs"),
        ("post", f"{eval_url}/runs"),
        ("get", run_url),
        ("post", run_url),
        ("delete", run_url),
        ("post", f"{run_url}/cancel"),
        ("get", f"{run_url}/output_items"),
        ("get", f"{run_url}/output_items/outputitem_x"),
    ]:
        response = getattr(carol_api, method)(url, {"name": "x"} if method == "post" else None, format="json")
        assert response.status_code == 404, (method, url, response.content)
        assert response.json()["error"]["message"] == f"No such eval: '{created['id']}'."
    assert carol_api.get("/v1/evals").json()["data"] == []
    assert Job.objects.get(public_id=run["id"]).status == JobStatus.QUEUED


def test_a_member_cannot_delete_an_eval_they_did_not_create(api: Any, alice_project: Any, bob: Any) -> None:
    from rest_framework.test import APIClient

    from apps.projects.actions import create_api_key

    created = create_eval(api)
    _, raw = create_api_key(alice_project, "bob's key", bob)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.delete(f"/v1/evals/{created['id']}")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == (
        "Only owners and admins, and the member who created it, can delete this eval."
    )
    assert Eval.objects.filter(public_id=created["id"]).exists()


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"$ref": "http://127.0.0.1:9/internal"},
            "data_source_config.item_schema: $ref 'http://127.0.0.1:9/internal' points outside the schema; only "
            "references within it (#/...) are followed",
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "file:///etc/passwd"}}},
            "data_source_config.item_schema: $ref 'file:///etc/passwd' points outside the schema; only references "
            "within it (#/...) are followed",
        ),
        (
            {"$ref": "#"},
            "data_source_config.item_schema refers to itself without end; a $ref must lead to a schema.",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}},
            "data_source_config.item_schema: regular expressions ('pattern') are not supported: they could run "
            "for hours on a crafted item",
        ),
    ],
)
def test_an_item_schema_that_would_fetch_loop_or_backtrack_is_refused(
    api: Any, schema: dict[str, Any], message: str
) -> None:
    config = {"type": "custom", "item_schema": schema}
    response = api.post("/v1/evals", eval_body(data_source_config=config), format="json")
    assert error_of(response) == (400, message, "data_source_config.item_schema")


def test_a_schema_with_local_references_is_followed(api: Any) -> None:
    schema = {
        "$defs": {"text": {"type": "string"}},
        "type": "object",
        "properties": {"question": {"$ref": "#/$defs/text"}, "answer": {"$ref": "#/$defs/text"}},
        "required": ["question", "answer"],
    }
    created = create_eval(api, data_source_config={"type": "custom", "item_schema": schema})
    bad = api.post(
        f"/v1/evals/{created['id']}/runs",
        jsonl_run([{"item": {"question": 1, "answer": "a"}}]),
        format="json",
    )
    assert error_of(bad)[1] == (
        "data_source.source.content[0].item does not match the eval's item_schema: 1 is not of type 'string' "
        "(at item['question'])"
    )


def test_a_run_is_deleted_only_once_it_has_stopped(api: Any, alice_project: Any, alice: Any) -> None:
    created = create_eval(api)
    run = api.post(f"/v1/evals/{created['id']}/runs", jsonl_run([ROW]), format="json").json()
    Job.objects.filter(public_id=run["id"]).update(status=JobStatus.RUNNING)  # as a worker claimed it
    response = api.delete(f"/v1/evals/{created['id']}/runs/{run['id']}")
    assert error_of(response) == (
        400,
        f"Run {run['id']} is still in_progress; cancel it, and delete it once it has stopped.",
        "run_id",
    )
    response = api.delete(f"/v1/evals/{created['id']}")
    assert error_of(response) == (
        400,
        f"Eval {created['id']} has runs still going ({run['id']}); cancel them, and delete the eval once they "
        "have stopped.",
        None,
    )
    assert EvalRun.objects.filter(job__public_id=run["id"]).exists()


def test_a_member_cannot_delete_others_runs_by_deleting_their_own_eval(
    api: Any, alice_project: Any, bob: Any
) -> None:
    from rest_framework.test import APIClient

    from apps.projects.actions import create_api_key

    _, raw = create_api_key(alice_project, "bob's key", bob)
    bobs = APIClient()
    bobs.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    created = create_eval(bobs)
    run = api.post(f"/v1/evals/{created['id']}/runs", jsonl_run([ROW]), format="json").json()  # alice's run
    api.post(f"/v1/evals/{created['id']}/runs/{run['id']}/cancel")
    response = bobs.delete(f"/v1/evals/{created['id']}")
    assert error_of(response) == (
        403,
        "Only owners and admins, and the member who created it, can delete this eval: it has others' runs.",
        None,
    )
    assert EvalRun.objects.filter(job__public_id=run["id"]).exists()


def test_numbers_past_a_floats_range_are_refused_not_a_500(api: Any) -> None:
    similar = {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": 10**400,
    }
    response = api.post("/v1/evals", eval_body(testing_criteria=[similar]), format="json")
    assert error_of(response) == (
        400,
        "testing_criteria[0].pass_threshold must be a number.",
        "testing_criteria[0].pass_threshold",
    )


def test_a_name_given_must_be_a_string(api: Any) -> None:
    created = create_eval(api)
    for body in ({"name": None}, {"name": 5}, {"name": "x" * 201}):
        response = api.post(f"/v1/evals/{created['id']}", body, format="json")
        assert error_of(response) == (400, "name must be a string of at most 200 characters.", "name")
    assert error_of(api.post("/v1/evals", eval_body(name=None), format="json"))[1] == (
        "name must be a string of at most 200 characters."
    )
    assert api.post(f"/v1/evals/{created['id']}", {"name": ""}, format="json").json()["name"] == ""


def test_a_running_runs_counts_add_up_to_their_total(api: Any) -> None:
    created = create_eval(api)
    run = api.post(f"/v1/evals/{created['id']}/runs", jsonl_run([ROW, ROW, ROW]), format="json").json()
    # as its worker leaves progress after a chunk: the graded items' counts, no total yet
    Job.objects.filter(public_id=run["id"]).update(
        status=JobStatus.RUNNING,
        progress={"total": 3, "completed": 2, "result_counts": {"passed": 1, "failed": 0, "errored": 1}},
    )
    shown = api.get(f"/v1/evals/{created['id']}/runs/{run['id']}").json()
    assert shown["status"] == "in_progress"
    assert shown["result_counts"] == {"total": 2, "passed": 1, "failed": 0, "errored": 1}
