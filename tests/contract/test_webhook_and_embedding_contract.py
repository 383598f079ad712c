"""Contract: our webhook event bodies and embeddings responses against OpenAI's spec (tests/contract).

OpenAI's spec names a schema for each event it sends; ours of the same name must match it, so a
receiver written against OpenAI's types reads ours. Our own events (paused, budget_reached, file.*)
have no schema there; they keep the same envelope, checked against the fine-tune one.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.utils import timezone

from apps.webhooks.actions import event_body
from apps.webhooks.models import EVENT_TYPES, new_event_id
from tests.contract.openapi import assert_matches

OPENAI_EVENTS = {
    "fine_tuning.job.succeeded": "WebhookFineTuningJobSucceeded",
    "fine_tuning.job.failed": "WebhookFineTuningJobFailed",
    "fine_tuning.job.cancelled": "WebhookFineTuningJobCancelled",
    "batch.completed": "WebhookBatchCompleted",
    "batch.failed": "WebhookBatchFailed",
    "batch.expired": "WebhookBatchExpired",
    "batch.cancelled": "WebhookBatchCancelled",
}


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_body_matches_openais_schema_for_it(event_type: str) -> None:
    body = json.loads(event_body(new_event_id(), event_type, "ftjob-abc", timezone.now()))
    schema = OPENAI_EVENTS.get(event_type)
    if schema is None:  # ours: OpenAI's envelope, with our type name in it
        body = {**body, "type": "fine_tuning.job.succeeded"}
        schema = "WebhookFineTuningJobSucceeded"
    assert_matches(body, schema)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    from workers.runtime.catalog import minilm_dir

    return minilm_dir()


@pytest.mark.integration
def test_embeddings_as_floats_and_base64_match_the_spec(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None, minilm_dir: Path
) -> None:
    with httpx.Client(
        base_url=live_server.url + "/v1", headers={"Authorization": f"Bearer {alice_key}"}, timeout=120
    ) as client:
        for body in (
            {"model": "minilm-l6", "input": ["a cat", "a dog"]},
            {"model": "minilm-l6", "input": "a cat", "encoding_format": "base64"},
        ):
            response = client.post("/embeddings", json=body)
            assert response.status_code == 200, response.text
            answer = response.json()
            if body.get("encoding_format") == "base64":
                # The spec types `embedding` as numbers only, though OpenAI answers a base64 request
                # with a string (the SDK decodes it): checked decoded, the rest as sent.
                for item in answer["data"]:
                    assert isinstance(item["embedding"], str)
                    item["embedding"] = list(struct.unpack(f"<{384}f", base64.b64decode(item["embedding"])))
            assert_matches(answer, "CreateEmbeddingResponse")
        refused = client.post("/embeddings", json={"model": "minilm-l6", "input": ""})
        assert refused.status_code == 400
        assert_matches(refused.json(), "ErrorResponse")
