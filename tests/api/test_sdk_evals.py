"""Evals through the official openai SDK with only `base_url` changed, against a live server and a
real worker: an eval with a string_check grader, a `completions` run sampling a local fine-tune, and
its counts, per-criterion results, output items and bill; a jsonl run graded by a local judge."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import openai
import pytest

from apps.billing.models import UsageRecord
from apps.jobs.models import Job
from tests.api.test_sdk_adapters import chat_jsonl, tiny_llama_base  # noqa: F401  (a fixture)
from tests.api.test_sdk_fine_tuning import sdk
from tests.conftest import Worker, purge_queues, wait_for, worker_env

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}


def evals_client(live_server: Any, key: str) -> openai.OpenAI:
    """The client as OpenAI's docs make it. Not strict: OpenAI's own eval runs say `"error": null`
    (its spec's example) and a jsonl run has no model, where the SDK's types want an object and a
    string, so strict validation would refuse OpenAI's answers as it would ours."""
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def finished(client: Any, eval_id: str, run_id: str, timeout: float = 120) -> Any:
    return wait_for(
        lambda: (
            (r := client.evals.runs.retrieve(run_id, eval_id=eval_id)).status
            in ("completed", "failed", "canceled")
            and r
        ),
        timeout=timeout,
    )


def fine_tune(client: Any, answer: str) -> str:
    """A supervised fine-tune of the tiny Llama that learns to give `answer`; its model's name."""
    file = client.files.create(file=("chat.jsonl", io.BytesIO(chat_jsonl(answer))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama-base",
        training_file=file.id,
        seed=1,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 50}
            },
        },
    )
    tuned = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        timeout=120,
    )
    assert tuned.status == "succeeded", tuned.error
    return str(tuned.fine_tuned_model)


def test_a_completions_run_on_a_local_fine_tune_grades_every_item(
    live_server: Any,
    alice_key: str,
    media: Path,
    tiny_llama_base: Any,  # noqa: F811
) -> None:
    purge_queues()
    worker = Worker(env=worker_env())
    try:
        model = fine_tune(sdk(live_server, alice_key), "red green blue")
        client = evals_client(live_server, alice_key)
        questions = ["hello", "what colour is the sky?", "name three colours"]
        # What the fine-tune answers each question, greedy: one item expects it, the others do not.
        said = [
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": q}], max_completion_tokens=6, temperature=0
            )
            .choices[0]
            .message.content
            for q in questions
        ]
        answers = [said[0], said[1] + " (not this)", "something else entirely"]

        created = client.evals.create(
            name="colours",
            data_source_config={"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
            testing_criteria=[
                {
                    "type": "string_check",
                    "name": "matches the answer",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "operation": "eq",
                },
                {
                    "type": "string_check",
                    "name": "not empty",
                    "input": "{{sample.output_text}}",
                    "reference": "",
                    "operation": "ne",
                },
            ],
        )
        run = client.evals.runs.create(
            eval_id=created.id,
            name="fine-tune vs answers",
            data_source={
                "type": "completions",
                "model": model,
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "{{item.question}}"}],
                },
                "sampling_params": {"temperature": 0, "max_completion_tokens": 6},
                "source": {
                    "type": "file_content",
                    "content": [
                        {"item": {"question": q, "answer": a}}
                        for q, a in zip(questions, answers, strict=True)
                    ],
                },
            },
        )
        assert run.status == "queued" and run.model == model
        done = finished(client, created.id, run.id)
        items = list(client.evals.runs.output_items.list(run.id, eval_id=created.id))
        failures = list(client.evals.runs.output_items.list(run.id, eval_id=created.id, status="fail"))
    finally:
        worker.stop()

    assert done.status == "completed", done.error
    assert done.result_counts.total == 3 == len(items)
    assert (done.result_counts.passed, done.result_counts.failed, done.result_counts.errored) == (1, 2, 0)
    per = {r.testing_criteria.split("-")[0]: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert per == {"matches the answer": (1, 2), "not empty": (3, 0)}
    assert [i.datasource_item_id for i in items] == [0, 1, 2]
    for item, text in zip(items, said, strict=True):
        assert item.sample.output[0].content == text  # the run's sample is what the model says
        assert item.sample.input[0].content == item.datasource_item["question"]
        assert item.sample.model == model and item.sample.usage.completion_tokens >= 1
    assert [i.status for i in items] == ["pass", "fail", "fail"]
    assert [i.id for i in failures] == [items[1].id, items[2].id]
    # billed once, at the fine-tune's price, as the tokens the samples used
    job_row = Job.objects.get(public_id=run.id)
    records = UsageRecord.objects.filter(job=job_row)
    assert {r.model_name for r in records} == {model}
    prompt = sum(i.sample.usage.prompt_tokens for i in items)
    completion = sum(i.sample.usage.completion_tokens for i in items)
    assert sum(r.quantity for r in records if r.unit == "input_tokens") == prompt
    assert sum(r.quantity for r in records if r.unit == "output_tokens") == completion
    [usage] = done.per_model_usage
    assert (usage.model_name, usage.invocation_count, usage.prompt_tokens) == (model, 3, prompt)


def test_a_jsonl_run_graded_by_a_local_judge_bills_the_judge(
    live_server: Any, alice_key: str, media: Path, tiny_chat: Any
) -> None:
    purge_queues()
    worker = Worker(env=worker_env())
    try:
        client = evals_client(live_server, alice_key)
        created = client.evals.create(
            name="judged",
            data_source_config={"type": "custom", "item_schema": SCHEMA},
            testing_criteria=[
                {
                    "type": "label_model",
                    "name": "judge",
                    "model": "tiny-gpt2",
                    "input": [
                        {
                            "role": "user",
                            "content": "Is '{{sample.output_text}}' right for {{item.question}}?",
                        }
                    ],
                    "labels": ["right", "wrong"],
                    "passing_labels": ["right"],
                },
                {
                    "type": "text_similarity",
                    "name": "close",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "evaluation_metric": "fuzzy_match",
                    "pass_threshold": 0.8,
                },
            ],
        )
        rows = [
            {
                "item": {"question": "capital of France", "answer": "Paris"},
                "sample": {"output_text": "Paris"},
            },
            {
                "item": {"question": "capital of Spain", "answer": "Madrid"},
                "sample": {"output_text": "Lisbon"},
            },
        ]
        run = client.evals.runs.create(
            eval_id=created.id,
            data_source={"type": "jsonl", "source": {"type": "file_content", "content": rows}},
        )
        done = finished(client, created.id, run.id)
        items = list(client.evals.runs.output_items.list(run.id, eval_id=created.id))
    finally:
        worker.stop()

    assert done.status == "completed", done.error
    assert done.result_counts.total == 2
    judge = {item.datasource_item_id: item.results[0].to_dict() for item in items}
    close = {item.datasource_item_id: item.results[1].to_dict() for item in items}
    # the judge is constrained to answer one of the labels first (a tiny random model then rambles in
    # its steps until the token limit); its answer is kept, and its label decides the pass
    for result in judge.values():
        answer = result["sample"]["output"][0]["content"]
        found = re.match(r'\{\s*"result"\s*:\s*"(right|wrong)"', answer)
        assert found, answer
        verdict = found.group(1)
        assert result["passed"] is (verdict == "right") and result["score"] == (
            1.0 if verdict == "right" else 0.0
        )
    assert close[0]["score"] == 1.0 and close[0]["passed"] is True
    assert close[1]["passed"] is False and close[1]["score"] < 0.8
    # the judge's tokens are billed at its own price, under its own name
    job_row = Job.objects.get(public_id=run.id)
    records = UsageRecord.objects.filter(job=job_row)
    assert {r.model_name for r in records} == {"tiny-gpt2"}
    judged = sum(r["sample"]["usage"]["prompt_tokens"] for r in judge.values())
    assert sum(r.quantity for r in records if r.unit == "input_tokens") == judged
    assert done.per_model_usage[0].model_name == "tiny-gpt2"
    assert done.per_model_usage[0].invocation_count == 2


def test_an_alias_moves_to_the_model_whose_run_passes_and_refuses_the_one_that_fails(
    live_server: Any,
    alice_key: str,
    media: Path,
    tiny_llama_base: Any,  # noqa: F811
) -> None:
    purge_queues()
    worker = Worker(env=worker_env())
    try:
        tuned = fine_tune(sdk(live_server, alice_key), "red green blue")
        client = evals_client(live_server, alice_key)
        questions = ["hello", "what colour is the sky?"]

        def ask(model: str, question: str) -> str:
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": question}],
                max_completion_tokens=6,
                temperature=0,
            )
            return str(reply.choices[0].message.content)

        # the eval expects what the fine-tune says: it passes, its base does not
        expected = [ask(tuned, q) for q in questions]
        assert expected != [ask("tiny-llama-base", q) for q in questions]
        created = client.evals.create(
            name="matches the fine-tune",
            data_source_config={"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
            testing_criteria=[
                {
                    "type": "string_check",
                    "name": "same",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "operation": "eq",
                }
            ],
        )
        rows = [{"item": {"question": q, "answer": a}} for q, a in zip(questions, expected, strict=True)]

        def run_on(model: str) -> Any:
            run = client.evals.runs.create(
                eval_id=created.id,
                data_source={
                    "type": "completions",
                    "model": model,
                    "input_messages": {
                        "type": "template",
                        "template": [{"role": "user", "content": "{{item.question}}"}],
                    },
                    "sampling_params": {"temperature": 0, "max_completion_tokens": 6},
                    "source": {"type": "file_content", "content": rows},
                },
            )
            return finished(client, created.id, run.id)

        weak, strong = run_on("tiny-llama-base"), run_on(tuned)
        assert (strong.result_counts.passed, strong.result_counts.total) == (2, 2)
        assert weak.result_counts.passed < 2

        gate = {"eval_id": created.id, "min_pass_rate": 1.0}
        made = client.post(
            "/aliases",
            cast_to=dict,
            body={"name": "bot@prod", "model": "tiny-llama-base", "gate": gate},
        )
        assert made["model"] == "tiny-llama-base"
        with pytest.raises(openai.BadRequestError) as refused:
            client.post(
                "/aliases/bot@prod/move", cast_to=dict, body={"model": "tiny-llama-base", "run_id": weak.id}
            )
        assert refused.value.code == "eval_gate_failed"
        moved = client.post(
            "/aliases/bot@prod/move", cast_to=dict, body={"model": tuned, "run_id": strong.id}
        )
        assert moved["model"] == tuned
        # every call through the alias now reaches the fine-tune, and says so
        reply = client.chat.completions.create(
            model="bot@prod",
            messages=[{"role": "user", "content": questions[0]}],
            max_completion_tokens=6,
            temperature=0,
        )
        assert reply.model == tuned and reply.choices[0].message.content == expected[0]
        back = client.post("/aliases/bot@prod/rollback", cast_to=dict)
        assert back["model"] == "tiny-llama-base"
    finally:
        worker.stop()


def test_openais_getting_started_example_runs_with_only_base_url_and_model_changed(
    live_server: Any, alice_key: str, media: Path, tiny_chat: Any
) -> None:
    """OpenAI's evals guide, step by step: an eval for IT ticket labels, the tickets uploaded as an
    `evals` file, a run that asks a model (ours) with a developer prompt, and the report."""
    purge_queues()
    worker = Worker(env=worker_env())
    try:
        client = evals_client(live_server, alice_key)
        eval_obj = client.evals.create(
            name="IT Ticket Categorization",
            data_source_config={
                "type": "custom",
                "item_schema": {
                    "type": "object",
                    "properties": {"ticket_text": {"type": "string"}, "correct_label": {"type": "string"}},
                    "required": ["ticket_text", "correct_label"],
                },
                "include_sample_schema": True,
            },
            testing_criteria=[
                {
                    "type": "string_check",
                    "name": "Match output to human label",
                    "input": "{{ sample.output_text }}",
                    "operation": "eq",
                    "reference": "{{ item.correct_label }}",
                }
            ],
        )
        tickets = [
            {"item": {"ticket_text": "My monitor won't turn on!", "correct_label": "Hardware"}},
            {"item": {"ticket_text": "I'm in vim and I can't quit!", "correct_label": "Software"}},
            {"item": {"ticket_text": "Best restaurants in Cleveland?", "correct_label": "Other"}},
        ]
        file = client.files.create(
            file=("tickets.jsonl", io.BytesIO("".join(json.dumps(t) + "\n" for t in tickets).encode())),
            purpose="evals",
        )
        wait_for(lambda: client.files.retrieve(file.id).status == "processed", timeout=30)
        instructions = (
            "You are an expert in categorizing IT support tickets. Given the support ticket below, "
            "categorize the request into one of Hardware, Software, or Other. Respond with only one of those words."
        )
        run = client.evals.runs.create(
            eval_obj.id,
            name="Categorization text run",
            data_source={
                "type": "completions",
                "model": "tiny-gpt2",
                "input_messages": {
                    "type": "template",
                    "template": [
                        {"role": "developer", "content": instructions},
                        {"role": "user", "content": "{{ item.ticket_text }}"},
                    ],
                },
                "source": {"type": "file_id", "id": file.id},
                "sampling_params": {"max_completion_tokens": 4},
            },
        )
        done = finished(client, eval_obj.id, run.id)
        items = list(client.evals.runs.output_items.list(run.id, eval_id=eval_obj.id))
    finally:
        worker.stop()

    assert done.status == "completed" and done.report_url.endswith(f"/runs/{run.id}/")
    assert done.result_counts.total == 3 == len(items)
    for item, ticket in zip(items, tickets, strict=True):
        assert item.datasource_item == ticket["item"]
        assert [m.content for m in item.sample.input] == [instructions, ticket["item"]["ticket_text"]]
        said = item.sample.output[0].content
        assert item.results[0].passed is (said == ticket["item"]["correct_label"])
