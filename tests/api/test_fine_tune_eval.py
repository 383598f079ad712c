"""A fine-tune scored by an eval (`eval_id`, ours): refused with a reason when the eval cannot score
it; otherwise every epoch's model answers the eval's items, its score is in the events, the
checkpoints and the job page, the checkpoint kept is the best by that score, and the answers are
billed. The fine-tune is made through the official SDK (`extra_body`, as any extension)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from apps.billing.models import UsageRecord
from apps.billing.pricing import cost_of
from apps.evals.models import EvalRun
from apps.jobs.models import Job, JobEvent, JobKind, JobStatus
from apps.projects.actions import create_processed_file
from apps.projects.validation import validate_stream
from tests.api.test_evals import CHECK, SCHEMA, create_eval, error_of
from tests.api.test_sdk_adapters import chat_jsonl, tiny_llama_base  # noqa: F401  (a fixture)
from tests.api.test_sdk_evals import evals_client
from tests.api.test_sdk_fine_tuning import sdk
from tests.conftest import Worker, login, purge_queues, wait_for, worker_env

QUESTIONS = ["hello", "what colour is the sky?", "name three colours", "say something"]
COMPLETIONS = {
    "type": "completions",
    "model": "tiny-llama-base",
    "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
    "sampling_params": {"temperature": 0, "max_completion_tokens": 6},
    "source": {
        "type": "file_content",
        "content": [{"item": {"question": q, "answer": "red green blue"}} for q in QUESTIONS],
    },
}


def body(file_id: str, eval_id: Any, **changes: Any) -> dict[str, Any]:
    return {
        "model": "tiny-llama-base",
        "training_file": file_id,
        "eval_id": eval_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        **changes,
    }


def test_an_eval_that_cannot_score_a_fine_tune_is_refused_saying_why(
    api: Any,
    alice_project: Any,
    settings: Any,
    tiny_llama_base: Any,  # noqa: F811
) -> None:
    settings.TRAINING_MAX_DEVICES = 2  # as on a worker with two GPUs
    data = chat_jsonl("red green blue")
    report = validate_stream([data], "fine-tune", filename="chat.jsonl")
    file = create_processed_file(alice_project, "chat.jsonl", "fine-tune", data, report).public_id
    judged = create_eval(
        api,
        testing_criteria=[
            {
                "type": "score_model",
                "name": "judge",
                "model": "tiny-llama-base",
                "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}],
            }
        ],
    )
    never_run = create_eval(api)
    ran = create_eval(api)
    assert (
        api.post(f"/v1/evals/{ran['id']}/runs", {"data_source": COMPLETIONS}, format="json").status_code
        == 200
    )

    def refusal(payload: dict[str, Any]) -> tuple[int, str, str | None]:
        return error_of(api.post("/v1/fine_tuning/jobs", payload, format="json"))

    assert refusal(body(file, 5)) == (
        400,
        "eval_id must be the id of an eval of this project (eval_…).",
        "eval_id",
    )
    assert refusal(body(file, "eval_nope")) == (400, "No eval eval_nope in this project.", "eval_id")
    assert refusal(body(file, judged["id"])) == (
        400,
        "The eval's criterion 'judge' is a score_model grader, which asks a model: a fine-tune is scored at "
        "each epoch only with string_check, text_similarity (but cosine) and multi graders.",
        "eval_id",
    )
    assert refusal(body(file, never_run["id"])) == (
        400,
        f"{never_run['id']} has no completions run to take its items and prompts from: run it once on a model "
        "(a completions data source), then name it here.",
        "eval_id",
    )
    assert refusal(body(file, ran["id"], devices=2)) == (
        400,
        "A fine-tune scored by an eval trains on one device: leave out devices or eval_id.",
        "eval_id",
    )
    tiny_llama_base.limits = {**tiny_llama_base.limits, "methods": ["supervised", "dpo"]}
    tiny_llama_base.save(update_fields=["limits"])
    dpo = body(file, ran["id"], method={"type": "dpo", "dpo": {"hyperparameters": {}}})
    assert refusal(dpo)[1:] == (
        "eval_id scores a supervised fine-tune of a generation model; this job's method is 'dpo'.",
        "eval_id",
    )
    # the estimate says the same, and counts the answers at their costliest
    assert error_of(api.post("/v1/fine_tuning/jobs/estimate", body(file, "eval_nope"), format="json"))[1] == (
        "No eval eval_nope in this project."
    )
    estimate = api.post("/v1/fine_tuning/jobs/estimate", body(file, ran["id"]), format="json").json()
    answers = 4 * 2  # 4 items, 2 epochs
    worst = cost_of(
        "tiny-llama-base", "input_tokens", answers * estimate["hyperparameters"]["max_seq_length"]
    )
    worst += cost_of("tiny-llama-base", "output_tokens", answers * 6)
    assert estimate["eval_cost"] == worst > 0
    assert (
        estimate["estimated_cost"]
        == cost_of("tiny-llama-base", "trained_tokens", estimate["trained_tokens"]) + worst
    )
    # a job keeps at most a megabyte of the eval's items
    Job.objects.filter(kind=JobKind.EVAL_RUN).update(status=JobStatus.CANCELLED)  # the plan's one place
    big = create_eval(api)
    rows = [{"item": {"question": "x" * 11_000, "answer": "y"}} for _ in range(100)]
    heavy = {**COMPLETIONS, "source": {"type": "file_content", "content": rows}}
    assert api.post(f"/v1/evals/{big['id']}/runs", {"data_source": heavy}, format="json").status_code == 200
    assert refusal(body(file, big["id"])) == (
        400,
        f"The first 100 items of {big['id']}'s latest completions run are {len(json.dumps([r['item'] for r in rows])):,} "
        "bytes; a fine-tune keeps at "
        "most 1,000,000 bytes of them. Run the eval on fewer or smaller items first.",
        "eval_id",
    )
    assert not Job.objects.filter(kind=JobKind.FINE_TUNE).exists()


@pytest.mark.integration
def test_a_fine_tune_scored_by_an_eval_keeps_its_best_checkpoint_by_that_eval(
    live_server: Any,
    alice: Any,
    alice_key: str,
    media: Path,
    tiny_llama_base: Any,  # noqa: F811
) -> None:
    purge_queues()
    worker = Worker(env=worker_env())
    try:
        evals = evals_client(live_server, alice_key)
        created = evals.evals.create(
            name="colours",
            data_source_config={"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
            testing_criteria=[
                {**CHECK, "name": "says the colours", "operation": "ilike", "reference": "%{{item.answer}}%"},
            ],
        )
        evals.evals.runs.create(eval_id=created.id, data_source=COMPLETIONS)  # where the items come from
        client = sdk(live_server, alice_key)
        file = client.files.create(
            file=("chat.jsonl", io.BytesIO(chat_jsonl("red green blue"))), purpose="fine-tune"
        )
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
            extra_body={"eval_id": created.id},
        )
        done = wait_for(
            lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
            timeout=180,
        )
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    finally:
        worker.stop()

    assert done.status == "succeeded", done.error
    row = Job.objects.get(public_id=job.id)
    scored = [
        e.data
        for e in JobEvent.objects.filter(job=row, type="metrics", data__has_key="eval_score").order_by("id")
    ]
    assert len(scored) == 3 and all(d["eval_items"] == 4 for d in scored)
    # each epoch's score in its event, as the share of the eval's 4 items that passed
    for data in scored:
        assert data["eval_score"] == data["eval_passed"] / 4
        assert (
            f"Epoch {data['epoch']} evaluated: valid_loss {data['valid_loss']:.4f}, eval score "
            f"{data['eval_score']:.1%} ({data['eval_passed']} of 4)" in events
        )
    # kept: the highest score, a tie going to the lower validation loss (of the held-out rows)
    best = max(scored, key=lambda d: (d["eval_score"], -d["valid_loss"]))
    assert row.result["metrics"]["best_step"] == best["step"]
    assert row.result["metrics"]["eval_score"] == best["eval_score"]
    assert (
        f"Saved the model from step {best['step']}, the best by its eval: {best['eval_score']:.1%} of the "
        f"eval's items passed ({best['eval_passed']} of 4)." in events
    )
    # the checkpoints show their scores
    scores = {d["step"]: d["eval_score"] for d in scored}
    shown = {c.step_number: c.metrics.to_dict().get("eval_score") for c in checkpoints}
    assert best["step"] in shown and shown == {step: scores[step] for step in shown}
    # the answers are billed as the base model's tokens, with the training
    records = UsageRecord.objects.filter(job=row)
    assert {r.unit for r in records} >= {"trained_tokens", "input_tokens", "output_tokens"}
    assert {r.model_name for r in records if r.unit in ("input_tokens", "output_tokens")} == {
        "tiny-llama-base"
    }
    assert all(r.quantity > 0 for r in records)
    assert EvalRun.objects.filter(eval__public_id=created.id).count() == 1  # scoring makes no eval runs
    # the job page shows the kept model's score
    client_page = login(Client(), alice)
    html = client_page.get(f"/projects/{row.project.public_id}/fine-tuning/{job.id}/").content.decode()
    assert f'id="eval-score">{round(best["eval_score"] * 100)}%' in html
    assert "chosen by its eval score" in html
    assert row.status == JobStatus.SUCCEEDED
