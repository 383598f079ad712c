"""Eval runs on a real worker: an uploaded evals file (validated with line numbers), an item that does
not fit the eval's schema errors alone, the run's webhook event, `max_cost`, the plan's judges, and the
fine-tuning graders' `run` and `validate`."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from apps.billing.models import UsageRecord
from apps.evals.models import EvalOutputItem
from apps.jobs.models import Job, JobStatus
from apps.webhooks.models import WebhookEvent
from tests.api.test_evals import CHECK, create_eval, error_of, jsonl_run
from tests.conftest import use_plan, wait_for

QUESTION = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}


def upload(api: Any, rows: list[Any]) -> dict[str, Any]:
    handle = io.BytesIO("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode())
    handle.name = "eval.jsonl"
    response = api.post("/v1/files", {"file": handle, "purpose": "evals"}, format="multipart")
    assert response.status_code == 200, response.content
    file_id = response.json()["id"]
    return dict(wait_for(lambda: (f := api.get(f"/v1/files/{file_id}").json())["status"] != "uploaded" and f))


def run_until_done(api: Any, eval_id: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    created = api.post(f"/v1/evals/{eval_id}/runs", body, format="json")
    assert created.status_code == 200, created.content
    run_id = created.json()["id"]
    return dict(
        wait_for(
            lambda: (
                (r := api.get(f"/v1/evals/{eval_id}/runs/{run_id}").json())["status"]
                in ("completed", "failed", "canceled")
                and r
            ),
            timeout=timeout,
        )
    )


@pytest.mark.integration
def test_an_evals_file_is_validated_line_by_line(api: Any, celery_worker: Any) -> None:
    report = upload(api, [{"item": {"question": "a"}}, {"question": "b"}, {"item": {}, "sample": "x"}, "[1]"])
    assert report["status"] == "error"
    detail = api.get(f"/v1/files/{report['id']}").json()["status_details"]
    assert "line 2: item must be an object, it is missing" in detail


@pytest.mark.integration
def test_a_run_on_a_file_grades_each_row_and_an_unfit_item_errors_alone(
    api: Any, celery_worker: Any, alice: Any, alice_project: Any
) -> None:
    from apps.webhooks.actions import create_endpoint

    create_endpoint(
        alice_project,
        alice,
        name="hooks",
        url="https://hooks.example.com/x",
        event_types=["eval.run.succeeded"],
    )
    schema = {**QUESTION, "properties": {**QUESTION["properties"], "answer": {"type": "string"}}}
    schema["required"] = ["question", "answer"]
    created = create_eval(
        api, data_source_config={"type": "custom", "item_schema": schema, "include_sample_schema": True}
    )
    file = upload(
        api,
        [
            {"item": {"question": "2+2", "answer": "4"}, "sample": {"output_text": "4"}},
            {"item": {"question": "3+3"}, "sample": {"output_text": "6"}},
            {"item": {"question": "1+1", "answer": "2"}, "sample": {"output_text": "11"}},
        ],
    )
    assert file["status"] == "processed", file
    done = run_until_done(
        api,
        created["id"],
        {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": file["id"]}}},
    )
    assert done["status"] == "completed"
    assert done["result_counts"] == {"total": 3, "passed": 1, "failed": 1, "errored": 1}
    items = api.get(f"/v1/evals/{created['id']}/runs/{done['id']}/output_items").json()["data"]
    assert [i["status"] for i in items] == ["pass", "error", "fail"]
    assert items[1]["sample"]["error"] == {
        "code": "invalid_item",
        "message": "The item does not match the eval's item_schema: 'answer' is a required property",
    }
    assert items[1]["results"] == []  # nothing graded for an item that is not what the eval expects
    one = api.get(f"/v1/evals/{created['id']}/runs/{done['id']}/output_items/{items[2]['id']}").json()
    assert one == items[2] and one["results"][0]["score"] == 0.0
    errors = api.get(f"/v1/evals/{created['id']}/runs/{done['id']}/output_items?status=error").json()["data"]
    assert [i["id"] for i in errors] == [items[1]["id"]]
    [event] = WebhookEvent.objects.filter(type="eval.run.succeeded")
    assert json.loads(event.payload)["data"] == {"id": done["id"]}
    # a run that calls no model bills nothing
    assert not UsageRecord.objects.filter(job__public_id=done["id"]).exists()


@pytest.mark.integration
def test_max_cost_stops_a_run_before_it_is_passed(
    api: Any, celery_worker: Any, tiny_chat: Any, alice_project: Any
) -> None:
    from apps.jobs.inference import largest_cost, parse_chat

    created = create_eval(
        api,
        data_source_config={"type": "custom", "item_schema": QUESTION, "include_sample_schema": True},
        testing_criteria=[{**CHECK, "reference": "never"}],
    )
    body = {
        "model": "tiny-gpt2",
        "messages": [{"role": "user", "content": "hello"}],
        "max_completion_tokens": 8,
    }
    model, request = parse_chat(alice_project, body)
    worst = largest_cost(model, request)
    source = {
        "type": "completions",
        "model": "tiny-gpt2",
        "input_messages": {
            "type": "template",
            "template": [{"role": "user", "content": "{{item.question}}"}],
        },
        "sampling_params": {"max_completion_tokens": 8},
        "source": {"type": "file_content", "content": [{"item": {"question": "hello"}}] * 4},
    }
    # room for one call at its most: the next would pass the budget if it used all its tokens
    done = run_until_done(api, created["id"], {"data_source": source, "max_cost": worst})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "budget_reached"
    assert done["error"]["message"] == (
        "The run's max_cost was reached: the run stopped after 1 of 4 items (0 passed, 1 failed, 0 errored), "
        "billed for those."
    )
    assert done["result_counts"]["total"] == 1
    job = Job.objects.get(public_id=done["id"])
    assert 0 < job.billed_cost <= job.max_cost
    assert job.billed_cost == sum(r.cost for r in UsageRecord.objects.filter(job=job))

    nothing = run_until_done(api, created["id"], {"data_source": source, "max_cost": 0})
    assert nothing["status"] == "failed" and nothing["result_counts"]["total"] == 0
    assert not EvalOutputItem.objects.filter(run__job__public_id=nothing["id"]).exists()
    assert Job.objects.get(public_id=nothing["id"]).billed_cost == 0


def test_a_judge_the_plan_excludes_is_refused_when_the_run_is_made(
    api: Any, alice_org: Any, catalog: None
) -> None:
    use_plan(alice_org, "free")
    judge = {
        "type": "score_model",
        "name": "quality",
        "model": "openai:gpt-4o-mini",
        "input": [{"role": "user", "content": "Rate: {{sample.output_text}}"}],
    }
    created = create_eval(api, testing_criteria=[judge])
    response = api.post(
        f"/v1/evals/{created['id']}/runs",
        jsonl_run([{"item": {"question": "q", "answer": "a"}, "sample": {"output_text": "a"}}]),
        format="json",
    )
    assert error_of(response) == (
        403,
        "The Free plan does not include 'openai:gpt-4o-mini'. Upgrade under Billing.",
        "data_source.model",
    )
    assert not Job.objects.exists()


# --- /v1/fine_tuning/alpha/graders ------------------------------------------------------------------
def test_graders_are_validated_as_openai_validates_them(api: Any) -> None:
    ok = api.post("/v1/fine_tuning/alpha/graders/validate", {"grader": CHECK}, format="json")
    assert ok.status_code == 200 and ok.json() == {"grader": CHECK}
    python = api.post(
        "/v1/fine_tuning/alpha/graders/validate",
        {"grader": {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0"}},
        format="json",
    )
    assert error_of(python) == (
        400,
        "The python grader is not supported: running customers' code is out of scope. Use string_check, "
        "text_similarity, score_model, label_model or multi.",
        "grader.type",
    )
    formula = api.post(
        "/v1/fine_tuning/alpha/graders/validate",
        {
            "grader": {
                "type": "multi",
                "name": "m",
                "graders": {"a": CHECK},
                "calculate_output": "__import__('os')",
            }
        },
        format="json",
    )
    assert formula.status_code == 400
    assert formula.json()["error"]["param"] == "grader.calculate_output"
    missing = api.post("/v1/fine_tuning/alpha/graders/validate", {}, format="json")
    assert error_of(missing) == (400, "Missing required parameter: 'grader'.", "grader")


def test_a_grader_runs_on_one_sample(api: Any) -> None:
    multi = {
        "type": "multi",
        "name": "blend",
        "graders": {
            "exact": {**CHECK, "name": "exact"},
            "fuzzy": {
                "type": "text_similarity",
                "name": "fuzzy",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
        "calculate_output": "0.5 * exact + 0.5 * fuzzy",
    }
    response = api.post(
        "/v1/fine_tuning/alpha/graders/run",
        {"grader": multi, "item": {"answer": "Paris"}, "model_sample": "Paris"},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["reward"] == 1.0 and body["sub_rewards"] == {"exact": 1.0, "fuzzy": 1.0}
    assert body["metadata"]["name"] == "blend" and body["metadata"]["type"] == "multi"
    assert body["metadata"]["errors"]["invalid_variable_error"] is False
    assert body["model_grader_token_usage_per_model"] == {}

    missing = api.post(
        "/v1/fine_tuning/alpha/graders/run",
        {"grader": CHECK, "item": {}, "model_sample": "Paris"},
        format="json",
    ).json()
    assert missing["reward"] == 0.0 and missing["metadata"]["errors"]["invalid_variable_error"] is True
    bad = api.post("/v1/fine_tuning/alpha/graders/run", {"grader": CHECK, "model_sample": 3}, format="json")
    assert error_of(bad) == (
        400,
        "model_sample must be a string: the model's output to grade.",
        "model_sample",
    )


@pytest.mark.integration
def test_a_model_grader_runs_through_the_inference_path(api: Any, celery_worker: Any, tiny_chat: Any) -> None:
    grader = {
        "type": "score_model",
        "name": "judge",
        "model": "tiny-gpt2",
        "input": [{"role": "user", "content": "Score {{sample.output_text}}"}],
        "range": [0, 10],
    }
    response = api.post(
        "/v1/fine_tuning/alpha/graders/run", {"grader": grader, "model_sample": "Paris"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    usage = body["model_grader_token_usage_per_model"]["tiny-gpt2"]
    assert (
        usage["prompt_tokens"] > 0
        and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    assert 0 <= body["reward"] <= 10 and body["metadata"]["sampled_model_name"] == "tiny-gpt2"
    # billed as the chat request it was, to this key
    [job] = Job.objects.filter(model_name="tiny-gpt2", status=JobStatus.SUCCEEDED)
    assert (
        sum(r.quantity for r in UsageRecord.objects.filter(job=job, unit="input_tokens"))
        == usage["prompt_tokens"]
    )
