"""Inference requests refused before any work is queued: exact message, `param` and status.

No worker runs here: every request below is refused while parsing, so nothing is published,
and each test checks that no Job row was written either.
"""

from __future__ import annotations

from typing import Any

import pytest

from apps.jobs.models import Job

CLASSIFIER = "ft:tiny-bert:acme:tickets:ftjob-1"
HELLO = [{"role": "user", "content": "hello"}]


def refused(api: Any, path: str, body: Any, status: int = 400) -> dict[str, Any]:
    """POSTs `body`, checks the OpenAI error shape and that nothing was queued; returns `error`."""
    response = api.post(path, body, format="json")
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert response["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert not Job.objects.exists(), "a refused request queued a job"
    return dict(error)


def bad(message: str, param: str | None, code: str = "invalid_request") -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-gpt2", "messages": HELLO, **fields}


# --- /v1/chat/completions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (chat(messages=[]), "messages must be a non-empty array of {role, content} objects.", "messages"),
        (
            {"model": "tiny-gpt2"},
            "messages must be a non-empty array of {role, content} objects.",
            "messages",
        ),
        (
            chat(messages="hello"),
            "messages must be a non-empty array of {role, content} objects.",
            "messages",
        ),
        (
            chat(messages=[{"role": "wizard", "content": "hi"}]),
            "messages[0].role must be one of system, developer, user, assistant, tool; got 'wizard'.",
            "messages[0].role",
        ),
        (
            chat(messages=[*HELLO, {"role": "tool", "content": "42"}]),
            "messages[1].tool_call_id is required: the id of the tool call this message answers.",
            "messages[1].tool_call_id",
        ),
        (
            chat(messages=[*HELLO, {"role": "assistant", "content": None, "tool_calls": []}]),
            "messages[1].tool_calls must be a non-empty array.",
            "messages[1].tool_calls",
        ),
        (
            chat(
                messages=[
                    *HELLO,
                    {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
                ]
            ),
            "messages[1].tool_calls[0] must be {id, type: 'function', function: {name, arguments}} with string "
            "name and arguments.",
            "messages[1].tool_calls[0]",
        ),
        (
            chat(messages=[{"role": "user", "content": 7}]),
            "messages[0].content must be a string.",
            "messages[0].content",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            "Only text content parts are supported.",
            "messages[0].content",
        ),
        (chat(messages=["hello"]), "messages[0] must be an object with a role and content.", "messages[0]"),
        (
            chat(max_tokens=1000),
            "max_tokens is 1000, but tiny-gpt2 has a context of 256 tokens.",
            "max_tokens",
        ),
        (
            chat(max_completion_tokens=257),
            "max_completion_tokens is 257, but tiny-gpt2 has a context of 256 tokens.",
            "max_completion_tokens",
        ),
        (chat(max_tokens=0), "max_tokens must be a positive integer.", "max_tokens"),
        (chat(n=9), "n must be an integer between 1 and 8.", "n"),
        (chat(n=0), "n must be an integer between 1 and 8.", "n"),
        (chat(temperature=3), "temperature must be a number between 0 and 2.", "temperature"),
        (chat(temperature="hot"), "temperature must be a number between 0 and 2.", "temperature"),
        (chat(top_p=1.5), "top_p must be a number between 0 and 1.", "top_p"),
        (
            chat(presence_penalty=-3),
            "presence_penalty must be a number between -2 and 2.",
            "presence_penalty",
        ),
        (
            chat(stop=["a", "b", "c", "d", "e"]),
            "stop must be a string or a list of at most 4 non-empty strings.",
            "stop",
        ),
        (chat(stop=[""]), "stop must be a string or a list of at most 4 non-empty strings.", "stop"),
        (chat(logit_bias={"50256": -100}), "logit_bias is not supported.", "logit_bias"),
        (chat(tools="f"), "tools must be an array of 1 to 128 function tools.", "tools"),
        (chat(tools=[]), "tools must be an array of 1 to 128 function tools.", "tools"),
        (
            chat(tools=[{"type": "code_interpreter"}]),
            "tools[0] must be {type: 'function', function: {name, description, parameters}}; only function "
            "tools are supported.",
            "tools[0]",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "get weather"}}]),
            "tools[0].function.name must be 1 to 64 letters, digits, underscores or dashes.",
            "tools[0].function.name",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "f"}}] * 2),
            "tools[1].function.name 'f' is given twice.",
            "tools[1].function.name",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "object"}}]),
            "tools[0].function.parameters must be a JSON schema object.",
            "tools[0].function.parameters",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "objet"}}}]),
            "Invalid schema for function 'f': Invalid type: objet",
            "tools[0].function.parameters",
        ),
        (
            chat(tool_choice="auto"),
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="always"),
            "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}.",
            "tool_choice",
        ),
        (
            chat(
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice={"type": "function", "function": None},
            ),
            "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}.",
            "tool_choice",
        ),
        (
            chat(
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice={"type": "function", "function": "f"},
            ),
            "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}.",
            "tool_choice",
        ),
        (
            chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "costly",
                        "schema": {"allOf": [{"type": "string", "pattern": f".*a{i}.*"} for i in range(14)]},
                    },
                }
            ),
            "The schema is too complex to enforce: compiling it needs more than 2 s.",
            "response_format",
        ),
        (
            chat(
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice={"type": "function", "function": {"name": "g"}},
            ),
            "Invalid value for 'tool_choice': no function named 'g' was specified in the 'tools' parameter.",
            "tool_choice",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "f"}}], parallel_tool_calls="yes"),
            "parallel_tool_calls must be true or false.",
            "parallel_tool_calls",
        ),
        (
            chat(functions=[{"name": "f"}]),
            "'functions' is not supported: these models do not offer deprecated function calling (send tools "
            "instead).",
            "functions",
        ),
        (chat(frobnicate=True), "Unrecognized request argument supplied: frobnicate", "frobnicate"),
        (chat(top_logprobs=3), "top_logprobs needs logprobs set to true.", "top_logprobs"),
        (
            chat(logprobs=True, top_logprobs=21),
            "top_logprobs must be an integer between 0 and 20.",
            "top_logprobs",
        ),
        (
            chat(response_format={"type": "xml"}),
            "response_format must be an object whose type is 'text', 'json_object' or 'json_schema'.",
            "response_format",
        ),
        (
            chat(response_format={"type": "json_object"}),
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
            "'json_object'.",
            "messages",
        ),
        (
            chat(response_format={"type": "json_schema"}),
            "response_format.json_schema is required: {name, schema, strict}.",
            "response_format",
        ),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"name": "a person"}}),
            "response_format.json_schema.name must be 1 to 64 letters, digits, underscores or dashes.",
            "response_format.json_schema.name",
        ),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": []}}),
            "response_format.json_schema.schema must be a JSON schema object.",
            "response_format.json_schema.schema",
        ),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"name": "p", "strict": "yes"}}),
            "response_format.json_schema.strict must be true or false.",
            "response_format.json_schema.strict",
        ),
        (
            chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "p",
                        "strict": True,
                        "schema": {"type": "string", "format": "colour"},
                    },
                }
            ),
            "Invalid schema for response_format 'p': Unknown format: colour",
            "response_format.json_schema.schema",
        ),
        (
            chat(
                messages=[{"role": "user", "content": "JSON please"}],
                response_format={"type": "json_object"},
                tools=[{"type": "function", "function": {"name": "f"}}],
            ),
            "response_format cannot be combined with tools on this model: the answer is either a tool call or "
            "the JSON. Send tool_choice 'none', or drop one of them.",
            "response_format",
        ),
        (chat(stream="yes"), "stream must be true or false.", "stream"),
        (chat(stream_options="usage"), "stream_options must be an object.", "stream_options"),
    ],
)
def test_chat_refusals(api: Any, tiny_chat: Any, body: dict[str, Any], message: str, param: str) -> None:
    assert refused(api, "/v1/chat/completions", body) == bad(message, param)


def test_a_body_that_is_not_an_object_is_refused(api: Any, tiny_chat: Any) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/classifications"):
        assert refused(api, path, ["tiny-gpt2"]) == bad("The request body must be a JSON object.", None)


def test_a_missing_model_is_refused(api: Any) -> None:
    error = refused(api, "/v1/chat/completions", {"messages": HELLO})
    assert error == bad("Missing required parameter: 'model'.", "model")


def test_a_prompt_over_the_size_limit_is_refused(api: Any, tiny_chat: Any, settings: Any) -> None:
    long_text = "x" * (settings.PROMPT_MAX_BYTES + 1)
    message = f"The prompt is longer than {settings.PROMPT_MAX_BYTES // 1024} KiB. Shorten it."
    error = refused(api, "/v1/chat/completions", chat(messages=[{"role": "user", "content": long_text}]))
    assert error == bad(message, "messages", code="prompt_too_long")
    error = refused(api, "/v1/completions", {"model": "tiny-gpt2", "prompt": long_text})
    assert error == bad(message, "prompt", code="prompt_too_long")


def test_the_size_limit_is_a_setting_and_covers_every_endpoint(
    api: Any, tiny_chat: Any, tiny_classifier: Any, catalog: None, settings: Any
) -> None:
    settings.PROMPT_MAX_BYTES = 2048
    text = "y" * 2100
    message = "The prompt is longer than 2 KiB. Shorten it."
    error = refused(api, "/v1/classifications", {"model": CLASSIFIER, "input": [text]})
    assert error == bad(message, "input", code="prompt_too_long")
    error = refused(api, "/v1/completions", {"model": "tiny-gpt2", "prompt": ["short", text]})
    assert error == bad(message, "prompt", code="prompt_too_long")
    # proxied models too, before anything is sent upstream
    proxied = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    assert refused(api, "/v1/chat/completions", proxied) == bad(message, "messages", code="prompt_too_long")


def test_a_nul_character_is_refused_with_the_field_that_holds_it(
    api: Any, tiny_chat: Any, tiny_classifier: Any, catalog: None
) -> None:
    """PostgreSQL cannot store U+0000 in the job's request: a 400, never a 500."""

    def nul(param: str) -> dict[str, Any]:
        return bad(f"{param} contains a NUL character (\\u0000); remove it.", param)

    error = refused(api, "/v1/chat/completions", chat(messages=[{"role": "user", "content": "a\u0000b"}]))
    assert error == nul("messages[0].content")
    error = refused(api, "/v1/completions", completion(prompt=["fine", "x\u0000"]))
    assert error == nul("prompt[1]")
    error = refused(api, "/v1/classifications", {"model": CLASSIFIER, "input": "\u0000"})
    assert error == nul("input")
    proxied = {"model": "openai:gpt-4o-mini", "messages": HELLO, "user": "u\u0000"}  # passed through as is
    assert refused(api, "/v1/chat/completions", proxied) == nul("user")


# --- /v1/completions ---------------------------------------------------------------------------


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-gpt2", "prompt": "once upon a time", **fields}


TOKEN_IDS = "prompt must be a string or a non-empty array of strings (token ids are not supported)."


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (completion(prompt=[1, 2, 3]), TOKEN_IDS, "prompt"),
        (completion(prompt=[[1, 2], [3]]), TOKEN_IDS, "prompt"),
        (completion(prompt=[]), TOKEN_IDS, "prompt"),
        ({"model": "tiny-gpt2"}, TOKEN_IDS, "prompt"),
        (completion(echo=True), "echo is not supported.", "echo"),
        (completion(best_of=3), "best_of is not supported.", "best_of"),
        (completion(suffix="the end"), "suffix is not supported.", "suffix"),
        (completion(logprobs=6), "logprobs must be an integer between 0 and 5.", "logprobs"),
        (completion(n=9), "n must be an integer between 1 and 8.", "n"),
        (completion(prompt=["p"] * 9, n=8), "At most 64 completions per request (prompts × n).", "n"),
        (
            completion(max_tokens=300),
            "max_tokens is 300, but tiny-gpt2 has a context of 256 tokens.",
            "max_tokens",
        ),
        (completion(messages=HELLO), "Unrecognized request argument supplied: messages", "messages"),
        (completion(top_logprobs=2), "Unrecognized request argument supplied: top_logprobs", "top_logprobs"),
        (completion(logit_bias={"1": 5}), "logit_bias is not supported.", "logit_bias"),
    ],
)
def test_completion_refusals(
    api: Any, tiny_chat: Any, body: dict[str, Any], message: str, param: str
) -> None:
    assert refused(api, "/v1/completions", body) == bad(message, param)


# --- /v1/classifications -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (
            {"model": CLASSIFIER, "input": ["ok"] * 2049},
            "input has 2049 items; the limit is 2048 per request.",
            "input",
        ),
        ({"model": CLASSIFIER, "input": ["ok", 5]}, "input[1] must be a string.", "input[1]"),
        ({"model": CLASSIFIER, "input": [None]}, "input[0] must be a string.", "input[0]"),
        (
            {"model": CLASSIFIER, "input": []},
            "input must be a string or a non-empty array of strings.",
            "input",
        ),
        (
            {"model": CLASSIFIER, "input": 42},
            "input must be a string or a non-empty array of strings.",
            "input",
        ),
        ({"model": CLASSIFIER}, "input must be a string or a non-empty array of strings.", "input"),
        (
            {"model": CLASSIFIER, "input": "ok", "top_k": 4},
            "top_k must be an integer between 1 and 3.",
            "top_k",
        ),
        (
            {"model": CLASSIFIER, "input": "ok", "top_k": 0},
            "top_k must be an integer between 1 and 3.",
            "top_k",
        ),
        (
            {"model": CLASSIFIER, "input": "ok", "temperature": 1},
            "Unrecognized request argument supplied: temperature",
            "temperature",
        ),
    ],
)
def test_classification_refusals(
    api: Any, tiny_classifier: Any, body: dict[str, Any], message: str, param: str
) -> None:
    assert refused(api, "/v1/classifications", body) == bad(message, param)


def test_exactly_2048_inputs_are_accepted(
    api: Any, tiny_classifier: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """The limit itself is allowed: the job is created (and not published, so the request times out)."""
    from django.test import override_settings

    with (
        django_capture_on_commit_callbacks(execute=False) as callbacks,
        override_settings(INFERENCE_TIMEOUT_SECONDS=0.2),
    ):
        response = api.post(
            "/v1/classifications", {"model": CLASSIFIER, "input": ["ok"] * 2048}, format="json"
        )
    assert response.status_code == 504, response.content  # no worker: it waited, then gave up
    job = Job.objects.get()
    assert len(job.request["texts"]) == 2048 and job.status == "cancelled"
    assert len(callbacks) == 1  # the publish that execute=False held back


# --- Which model may be called where -----------------------------------------------------------


def not_found(name: str) -> dict[str, Any]:
    return bad(
        f"The model '{name}' does not exist or you do not have access to it.", "model", "model_not_found"
    )


def test_an_unknown_model_is_404(api: Any, catalog: None) -> None:
    error = refused(api, "/v1/chat/completions", chat(model="gpt-17"), status=404)
    assert error == not_found("gpt-17")
    error = refused(api, "/v1/completions", completion(model="gpt-17"), status=404)
    assert error == not_found("gpt-17")
    error = refused(api, "/v1/classifications", {"model": "no-such-classifier", "input": "hi"}, status=404)
    assert error == not_found("no-such-classifier")


def test_models_are_called_through_the_endpoint_for_their_task(
    api: Any, tiny_chat: Any, tiny_classifier: Any
) -> None:
    error = refused(api, "/v1/chat/completions", chat(model=CLASSIFIER))
    assert error == bad(
        f"'{CLASSIFIER}' is a classification model; call it through /v1/classifications.", "model"
    )
    error = refused(api, "/v1/completions", completion(model=CLASSIFIER))
    assert error == bad(
        f"'{CLASSIFIER}' is a classification model; call it through /v1/classifications.", "model"
    )
    error = refused(api, "/v1/classifications", {"model": "tiny-gpt2", "input": "hi"})
    assert error == bad("'tiny-gpt2' is a generation model; call it through /v1/chat/completions.", "model")


def test_a_base_model_that_is_not_servable_is_refused(api: Any, catalog: None) -> None:
    error = refused(api, "/v1/classifications", {"model": "minilm-l6", "input": "hi"})
    assert error == bad(
        "'minilm-l6' is a base model for fine-tuning and cannot be called directly; fine-tune it first.",
        "model",
    )


def test_an_outsider_gets_the_same_404_as_for_a_model_that_does_not_exist(
    carol_api: Any, tiny_classifier: Any, catalog: None
) -> None:
    theirs = carol_api.post("/v1/classifications", {"model": CLASSIFIER, "input": "hi"}, format="json")
    missing_name = "ft:tiny-bert:acme:tickets:ftjob-2"
    missing = carol_api.post("/v1/classifications", {"model": missing_name, "input": "hi"}, format="json")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {"error": not_found(CLASSIFIER)}
    assert theirs.json()["error"] == {**missing.json()["error"], "message": not_found(CLASSIFIER)["message"]}
    # the same through chat: an outsider never learns the model exists (nor that it is a classifier)
    chatted = carol_api.post("/v1/chat/completions", chat(model=CLASSIFIER), format="json")
    assert chatted.status_code == 404 and chatted.json() == {"error": not_found(CLASSIFIER)}
    assert not Job.objects.exists()


def test_a_plan_without_openai_models_refuses_them_before_anything_is_sent(api: Any, catalog: None) -> None:
    """alice is on the Free plan (no subscription yet), which leaves out `openai:*`."""
    body = {"model": "openai:gpt-4o-mini", "messages": HELLO}
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 403, response.content
    assert response.json()["error"] == {
        "message": "The Free plan does not include 'openai:gpt-4o-mini'. Upgrade under Billing.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_allowed",
    }
    assert not Job.objects.exists()


def test_no_api_key_is_401_and_queues_nothing(client: Any, tiny_chat: Any) -> None:
    response = client.post("/v1/chat/completions", chat(), content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert not Job.objects.exists()
