"""LoRA fine-tunes served on one base (docs/architecture.md, "Models and weights"), through
the official openai SDK against a live server and a real worker: two fine-tunes of the tiny Llama
answer as their own merged weights would, from one copy of the base on the worker."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from apps.registry.models import Model
from tests.api.test_sdk_dpo import QUESTIONS
from tests.api.test_sdk_fine_tuning import sdk
from tests.conftest import Worker, purge_queues, wait_for, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture
def tiny_llama_base(transactional_db: None, tiny_llama_dir: Path) -> Any:
    return Model.objects.create(
        name="tiny-llama-base",
        task="generation",
        artifact_key=f"local:{tiny_llama_dir}",
        context_length=256,
        is_fine_tunable=True,
        limits={"max_seq_length": 128, "methods": ["supervised"], "servable": True},
    )


def chat_jsonl(answer: str) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": QUESTIONS[i % 4]},
                {"role": "assistant", "content": answer},
            ]
        }
        for i in range(16)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_two_lora_fine_tunes_answer_from_one_base_as_their_merged_weights_would(
    live_server: Any, alice_key: str, media: Path, tiny_llama_base: Any
) -> None:
    from workers.runners.artifacts import local_model_dir
    from workers.runtime.generate import generate
    from workers.runtime.models import load_model
    from workers.runtime.specs import GenerateRequest

    purge_queues()
    # float32 on both sides: the comparison is of the adapter view against the merged weights
    worker = Worker(env=worker_env({"SERVE_QUANTIZATION": "none"}))
    try:
        client = sdk(live_server, alice_key)
        tuned = []
        for answer in ("good great excellent", "red green blue"):
            file = client.files.create(
                file=("chat.jsonl", io.BytesIO(chat_jsonl(answer))), purpose="fine-tune"
            )
            job = client.fine_tuning.jobs.create(
                model="tiny-llama-base",
                training_file=file.id,
                seed=1,
                method={
                    "type": "supervised",
                    "supervised": {
                        "lora": {"r": 4},
                        "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 50},
                    },
                },
            )
            done = wait_for(
                lambda job=job: (
                    (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j
                ),
                timeout=120,
            )
            assert done.status == "succeeded", done.error
            tuned.append(done.fine_tuned_model)

        replies = {}
        for name in tuned * 2:  # round-robin: the second round finds both adapters loaded
            replies[name] = (
                client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
                )
                .choices[0]
                .message.content
            )
        log = worker.log.read_text(errors="replace")
    finally:
        worker.stop()

    # each was served as a view of the one base, loaded once
    base = str(local_model_dir(tiny_llama_base.artifact_key))
    assert log.count(f"as a LoRA view of {base} ") == 2, log[-3000:]
    assert "from its merged weights" not in log
    # and answered exactly as its own merged weights answer
    for name in tuned:
        merged = load_model(str(local_model_dir(Model.objects.get(name=name).artifact_key)), "cpu", "float32")
        request = GenerateRequest(
            messages=({"role": "user", "content": "hello"},), max_tokens=8, temperature=0
        )
        assert replies[name] == generate(merged, request).choices[0].text
    assert replies[tuned[0]] != replies[tuned[1]]


def test_a_lora_classifier_is_served_on_its_base_as_its_merged_weights_would_be(
    live_server: Any, alice_key: str, tiny_base: Any
) -> None:
    from tests.api.test_sdk_fine_tuning import sentiment_csv
    from workers.runners.artifacts import local_model_dir
    from workers.runtime.classify import classify
    from workers.runtime.models import load_model
    from workers.runtime.specs import ClassifyRequest

    purge_queues()
    worker = Worker(env=worker_env({}))
    try:
        client = sdk(live_server, alice_key)
        file = client.files.create(file=("train.csv", io.BytesIO(sentiment_csv(60))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny-bert",
            training_file=file.id,
            seed=3,
            extra_body={
                "method": {
                    "type": "classification",
                    "classification": {"lora": {"r": 4}, "hyperparameters": {"n_epochs": 2, "batch_size": 8}},
                }
            },
        )
        done = wait_for(
            lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
            timeout=120,
        )
        assert done.status == "succeeded", done.error
        texts = ["what a lovely day", "this is awful"]
        answered = client.post(
            "/classifications",
            cast_to=object,
            body={"model": done.fine_tuned_model, "input": texts, "top_k": 2},
        )
        log = worker.log.read_text(errors="replace")
    finally:
        worker.stop()

    # served as a view of the base, not from its merged weights
    assert f"as a LoRA view of {local_model_dir(tiny_base.artifact_key)} " in log, log[-3000:]
    assert "from its merged weights" not in log
    # with the scores its merged weights give, to the float16/bfloat16 rounding of serving
    tuned = Model.objects.get(name=done.fine_tuned_model)
    merged = load_model(str(local_model_dir(tuned.artifact_key)), "cpu", "float32")
    assert isinstance(answered, dict)
    expected = classify(merged, ClassifyRequest(texts=tuple(texts), top_k=2)).results
    for item, want in zip(answered["data"], expected, strict=True):
        got = {label["label"]: label["score"] for label in item["labels"]}
        assert got.keys() == {score.label for score in want}
        assert all(abs(got[score.label] - score.score) < 0.02 for score in want)
