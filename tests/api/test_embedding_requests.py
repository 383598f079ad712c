"""`POST /v1/embeddings` refused before any work is queued: exact message, `param` and status.

No worker runs here: every request below is refused while parsing, so nothing is published, and
`refused` checks that no Job row was written either.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_inference_requests import bad, refused

CLASSIFIER = "ft:tiny-bert:acme:tickets:ftjob-1"
EMBEDDERS = "minilm-l6, openai:text-embedding-3-small"
IDS_REFUSED = (
    "input holds token ids, but minilm-l6 reads text: send strings. (LangChain's OpenAIEmbeddings sends "
    "token ids unless it is created with check_embedding_ctx_length=False.)"
)


def embed(**fields: Any) -> dict[str, Any]:
    return {"model": "minilm-l6", "input": "hello", **fields}


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"input": "hello"}, "Missing required parameter: 'model'.", "model"),
        ({"model": "minilm-l6"}, "Missing required parameter: 'input'.", "input"),
        (embed(input=[]), "input must be a string or a non-empty array of strings.", "input"),
        (embed(input={"text": "hi"}), "input must be a string or a non-empty array of strings.", "input"),
        (embed(input=""), "input is an empty string; every input must hold some text.", "input"),
        (
            embed(input=["fine", ""]),
            "input[1] is an empty string; every input must hold some text.",
            "input[1]",
        ),
        (embed(input=["fine", 7.5]), "input[1] must be a string.", "input[1]"),
        (embed(input=["x"] * 2049), "input has 2049 items; the limit is 2048 per request.", "input"),
        (embed(input=[101, 7592, 102]), IDS_REFUSED, "input"),
        (embed(input=[[101, 7592, 102], [101, 102]]), IDS_REFUSED, "input"),
        (embed(encoding_format="int8"), "encoding_format must be 'float' or 'base64'.", "encoding_format"),
        (
            embed(dimensions=256),
            "dimensions must be 384 for minilm-l6: it makes 384-dimensional embeddings only.",
            "dimensions",
        ),
        (
            embed(dimensions="384"),
            "dimensions must be 384 for minilm-l6: it makes 384-dimensional embeddings only.",
            "dimensions",
        ),
        (embed(user=42), "user must be a string.", "user"),
        (embed(stream=True), "Unrecognized request argument supplied: stream", "stream"),
    ],
)
def test_a_bad_request_is_refused_with_its_reason(
    api: Any, body: dict[str, Any], message: str, param: str
) -> None:
    assert refused(api, "/v1/embeddings", body) == bad(message, param)


def test_a_body_that_is_not_an_object_is_refused(api: Any) -> None:
    assert refused(api, "/v1/embeddings", ["hello"]) == bad("The request body must be a JSON object.", None)


def test_a_too_large_input_is_refused(api: Any, settings: Any) -> None:
    settings.PROMPT_MAX_BYTES = 1024

    error = refused(api, "/v1/embeddings", embed(input=["word " * 300]))

    assert error == bad("The prompt is longer than 1 KiB. Shorten it.", "input", code="prompt_too_long")


def test_a_generation_model_cannot_embed(api: Any, tiny_chat: Any) -> None:
    error = refused(api, "/v1/embeddings", embed(model="tiny-gpt2"))

    assert error == bad(
        f"'tiny-gpt2' is a generation model and cannot create embeddings. Models that can: {EMBEDDERS}.",
        "model",
    )


def test_a_fine_tuned_classifier_cannot_embed(api: Any, tiny_classifier: Any) -> None:
    error = refused(api, "/v1/embeddings", embed(model=CLASSIFIER))

    assert error == bad(
        f"'{CLASSIFIER}' is a classification model and cannot create embeddings. Models that can: {EMBEDDERS}.",
        "model",
    )


def test_an_embedding_model_is_not_a_chat_model(api: Any) -> None:
    body = {"model": "openai:text-embedding-3-small", "messages": [{"role": "user", "content": "hi"}]}

    error = refused(api, "/v1/chat/completions", body)

    assert error == bad(
        "'openai:text-embedding-3-small' is an embedding model; call it through /v1/embeddings.", "model"
    )


def test_an_unknown_model_is_a_404(api: Any) -> None:
    error = refused(api, "/v1/embeddings", embed(model="no-such-model"), status=404)

    assert error == bad(
        "The model 'no-such-model' does not exist or you do not have access to it.",
        "model",
        code="model_not_found",
    )


def test_an_outsider_gets_a_404_for_another_organizations_model(carol_api: Any, tiny_classifier: Any) -> None:
    error = refused(carol_api, "/v1/embeddings", embed(model=CLASSIFIER), status=404)

    assert error == bad(
        f"The model '{CLASSIFIER}' does not exist or you do not have access to it.",
        "model",
        code="model_not_found",
    )


def test_the_free_plan_leaves_out_openai_embeddings(api: Any) -> None:
    error = refused(api, "/v1/embeddings", embed(model="openai:text-embedding-3-small"), status=403)

    assert error == bad(
        "The Free plan does not include 'openai:text-embedding-3-small'. Upgrade under Billing.",
        "model",
        code="model_not_allowed",
    )
