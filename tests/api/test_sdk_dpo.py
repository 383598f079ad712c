"""Contract: a DPO fine-tune through the official openai SDK, against a live server and a real
worker, on the tiny GPT-2: uploaded, validated, trained, billed and callable."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from apps.jobs.models import Job
from tests.api.test_sdk_fine_tuning import sdk
from tests.conftest import billed, wait_for

pytestmark = pytest.mark.integration

QUESTIONS = ["hello", "how are you today", "please tell me a story", "what a sad day"]


def preference_jsonl(n: int) -> bytes:
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"{QUESTIONS[i % 4]} {i}"}]},
            "preferred_output": [{"role": "assistant", "content": "good great excellent"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad terrible awful"}],
        }
        for i in range(n)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def tiny_lm_base(db: None, tiny_gpt2_dir: Path) -> Any:
    """A catalog generation base backed by the tiny GPT-2, open to supervised and DPO fine-tuning."""
    from apps.registry.models import Model

    return Model.objects.create(
        name="tiny-gpt2-base",
        task="generation",
        artifact_key=f"local:{tiny_gpt2_dir}",
        context_length=256,
        is_fine_tunable=True,
        limits={"max_seq_length": 128, "methods": ["supervised", "dpo"], "servable": True},
    )


def test_the_sdk_runs_a_dpo_fine_tune_to_a_callable_model(
    live_server: Any, alice_key: str, carol_key: str, celery_worker: Any, tiny_lm_base: Any
) -> None:
    client = sdk(live_server, alice_key)
    file = client.files.create(file=("pairs.jsonl", io.BytesIO(preference_jsonl(20))), purpose="fine-tune")
    file = client.files.wait_for_processing(file.id, poll_interval=0.2, max_wait_seconds=30)
    assert file.status == "processed"

    job = client.fine_tuning.jobs.create(
        model="tiny-gpt2-base",
        training_file=file.id,
        seed=3,
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "beta": 0.2,
                    "n_epochs": 2,
                    "batch_size": 4,
                    "learning_rate_multiplier": 20,
                }
            },
        },
    )
    # the SDK reads the method back in its own types
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None
    assert (job.method.dpo.hyperparameters.beta, job.method.dpo.hyperparameters.n_epochs) == (0.2, 2)

    done = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        timeout=120,
    )
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model and done.trained_tokens and done.trained_tokens > 0

    # the events carry the loss and the rewards; the reference was computed once
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=200))
    metrics = [e.data for e in events if e.type == "metrics" and isinstance(e.data, dict)]
    steps = [data for data in metrics if "train_rewards_margin" in data]
    assert steps and all("train_loss" in data and "train_rewards_accuracy" in data for data in steps)
    assert any("valid_rewards_margin" in data for data in metrics)  # the 10% held out
    messages = [e.message for e in events]
    assert (
        sum(message.startswith("Computed the reference model's log-probabilities") for message in messages)
        == 1
    )

    # the results file has a row a step with the rewards
    results = client.files.content(done.result_files[0]).text.splitlines()
    assert results[0] == (
        "step,epoch,train_loss,train_rewards_margin,train_rewards_accuracy,valid_loss,valid_rewards_margin,"
        "valid_rewards_accuracy"
    )
    assert len(results) == 1 + 2 * 5  # 18 training pairs at batch 4, 2 epochs
    assert all(line.split(",")[3] for line in results[1:])

    # billed for exactly the tokens it trained on, no unit twice (records follow the checkpoints)
    assert billed(Job.objects.get(public_id=job.id)) == {"trained_tokens": done.trained_tokens}

    # the model answers
    reply = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        temperature=0,
    )
    assert reply.choices[0].message.content is not None and reply.model == done.fine_tuned_model

    # and another organization sees none of it
    outsider = sdk(live_server, carol_key)
    with pytest.raises(openai.NotFoundError):
        outsider.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        outsider.models.retrieve(done.fine_tuned_model)


def chat_jsonl(n: int) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{QUESTIONS[i % 4]} {i}"},
                {"role": "assistant", "content": "good great"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_sft_then_dpo_trains_the_supervised_fine_tune_further(
    live_server: Any, alice_key: str, celery_worker: Any, tiny_lm_base: Any
) -> None:
    from apps.registry.models import Model

    client = sdk(live_server, alice_key)

    def finished(job_id: str) -> Any:
        done = wait_for(
            lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed") and j,
            timeout=120,
        )
        assert done.status == "succeeded", done.error
        return done

    def uploaded(name: str, data: bytes) -> str:
        file = client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")
        return client.files.wait_for_processing(file.id, poll_interval=0.2, max_wait_seconds=30).id

    # given a supervised fine-tune of the base
    chats, pairs = uploaded("chats.jsonl", chat_jsonl(12)), uploaded("pairs.jsonl", preference_jsonl(12))
    sft = finished(
        client.fine_tuning.jobs.create(
            model="tiny-gpt2-base",
            training_file=chats,
            suffix="chat",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        ).id
    )
    assert sft.fine_tuned_model

    # when the supervised model is trained further with DPO, as OpenAI's SFT-then-DPO flow does
    job = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model,
        training_file=pairs,
        suffix="prefs",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    assert job.model == sft.fine_tuned_model
    assert (
        job.method is not None and job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    )
    assert job.method.dpo.hyperparameters.beta == 0.1  # "auto"
    done = finished(job.id)

    # then the new model is named after the catalog base, descends from the supervised one, and answers
    assert (
        done.fine_tuned_model
        == f"ft:tiny-gpt2-base:{Job.objects.get(public_id=job.id).organization.slug}:prefs:{job.id}"
    )
    model = Model.objects.get(name=done.fine_tuned_model)
    assert model.base is not None and model.base.name == sft.fine_tuned_model
    assert model.catalog_base == tiny_lm_base
    reply = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        temperature=0,
    )
    assert reply.model == done.fine_tuned_model
