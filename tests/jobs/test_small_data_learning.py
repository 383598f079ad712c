"""A small fine-tune learns with only `n_epochs` given, as an OpenAI user would send it
(docs/api.md, "Hyperparameters"): the official SDK, a live server, a real worker and real SmolLM2."""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.api.test_sdk_fine_tuning import sdk
from tests.conftest import use_plan, wait_for
from tests.small_data import SYSTEM, codeword_chats

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_small_fact_set_is_learned_with_only_n_epochs_given(
    live_server: Any, alice_key: str, alice_org: Any, catalog: None, celery_worker: Any
) -> None:
    use_plan(alice_org, "team")
    client = sdk(live_server, alice_key)
    file = client.files.create(file=("codeword.jsonl", io.BytesIO(codeword_chats())), purpose="fine-tune")
    assert (
        client.files.wait_for_processing(file.id, poll_interval=0.2, max_wait_seconds=30).status
        == "processed"
    )

    # when the job names only the number of epochs, as the SDK's users write it
    job = client.fine_tuning.jobs.create(
        model="smollm2-135m-instruct",
        training_file=file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )

    # then "auto" gave it a batch size that leaves enough steps: 16 training chats at batch 1
    resolved = job.method.supervised.hyperparameters  # type: ignore[union-attr]
    assert (resolved.n_epochs, resolved.batch_size) == (3, 1)
    done = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        timeout=540,
        interval=1.0,
    )
    assert done.status == "succeeded", done.error
    assert done.trained_tokens and done.trained_tokens > 0
    # and the model says the fact at temperature 0
    reply = client.chat.completions.create(
        model=done.fine_tuned_model or "",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is the vault codeword?"},
        ],
        temperature=0,
        max_tokens=16,
    )
    assert "PERIWINKLE-42" in (reply.choices[0].message.content or "")
