"""Structured outputs and tool calls on a local model, end to end: the official openai SDK (strict)
and LangChain's ChatOpenAI, as their own docs use them with only `base_url` and `model` changed,
against a live server and a real worker running the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from apps.billing.models import UsageRecord
from apps.jobs.inference import largest_usage
from apps.jobs.models import Job
from tests.api.test_sdk_serving import sdk
from tests.conftest import wait_for
from tests.contract.openapi import assert_matches
from tests.contract.test_openapi_contract import client, ok, stream, upload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city, e.g. Paris"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


class Person(BaseModel):
    name: str
    age: int


def test_the_sdk_parses_a_json_schema_answer_and_json_mode_always_parses(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None
) -> None:
    client = sdk(live_server, alice_key)

    # the SDK's own helper: a pydantic model becomes a strict json_schema, the answer a Person
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Alice is 31 years old. Give her name and age."}],
        response_format=Person,
        temperature=0,
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Person), message.content
    assert json.loads(message.content or "") == message.parsed.model_dump()

    # the SDK's streaming helper parses the streamed JSON into the same Person
    with client.chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "Alice is 31 years old. Give her name and age."}],
        response_format=Person,
        temperature=0,
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert "content.delta" in kinds and "content.done" in kinds
    assert final.choices[0].message.parsed == message.parsed

    # json_object: any temperature, always one JSON object, streamed or not
    for streamed in (False, True):
        kwargs: dict[str, Any] = dict(
            model=MODEL,
            messages=[{"role": "user", "content": "List three colours as JSON."}],
            response_format={"type": "json_object"},
            temperature=1.0,
            seed=3,
            max_tokens=200,
        )
        if streamed:
            text = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(stream=True, **kwargs)
                if chunk.choices
            )
        else:
            answer = client.chat.completions.create(**kwargs)
            assert answer.choices[0].finish_reason == "stop"
            text = answer.choices[0].message.content or ""
        assert isinstance(json.loads(text), dict), text


def test_a_required_tool_call_round_trip_plain_and_streamed(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None
) -> None:
    client = sdk(live_server, alice_key)

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
    )
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    # the tool definitions are part of the prompt, and billed as input
    job = Job.objects.get(public_id="gen-" + completion.id.removeprefix("chatcmpl-"))
    assert job.request["tools"] == [WEATHER_TOOL] and job.request["tool_choice"] == "required"
    assert completion.usage is not None and completion.usage.prompt_tokens > 150
    record = UsageRecord.objects.get(job=job, unit="input_tokens")
    assert record.quantity == completion.usage.prompt_tokens
    # the spend cap's bound on a request covers the tool preamble, even for the smallest request
    assert largest_usage(job.request)["input_tokens"] >= completion.usage.prompt_tokens
    tiny = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": ""}],
        tools=[{"type": "function", "function": {"name": "f"}}],
        max_tokens=1,
    )
    tiny_job = Job.objects.get(public_id="gen-" + tiny.id.removeprefix("chatcmpl-"))
    assert tiny.usage is not None
    assert largest_usage(tiny_job.request)["input_tokens"] >= tiny.usage.prompt_tokens

    # streamed: the call arrives whole in one delta, then finish_reason tool_calls
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=ASK_WEATHER,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = [tool for delta in deltas for tool in delta.tool_calls or []]
    assert len(streamed) == 1 and streamed[0].index == 0 and (streamed[0].id or "").startswith("call_")
    assert streamed[0].function is not None and streamed[0].function.name == "get_weather"
    assert streamed[0].function.arguments == call.function.arguments
    assert "".join(delta.content or "" for delta in deltas) == ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # the result goes back as a tool message; the model answers in words
    follow_up = client.chat.completions.create(
        model=MODEL,
        messages=[
            *ASK_WEATHER,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    assert follow_up.choices[0].message.content
    assert follow_up.choices[0].message.tool_calls is None


def test_langchain_chat_openai_invoke_stream_structured_output_and_tools(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None
) -> None:
    from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    llm = ChatOpenAI(
        model=MODEL,
        base_url=live_server.url + "/v1",
        api_key=alice_key,
        temperature=0,
        max_tokens=60,
        max_retries=0,
        timeout=120,
    )

    said = llm.invoke("Say hello in one short sentence.")
    assert isinstance(said, AIMessage) and isinstance(said.content, str) and said.content
    streamed = "".join(str(chunk.content) for chunk in llm.stream("Say hello in one short sentence."))
    assert streamed == said.content

    person = llm.with_structured_output(Person, method="json_schema").invoke(
        "Bob is 42 years old. Give his name and age."
    )
    assert isinstance(person, Person)

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"18 C and sunny in {city}"

    with_tools = llm.bind_tools([get_weather], tool_choice="get_weather")
    asked = with_tools.invoke("What is the weather like in Paris today?")
    assert isinstance(asked, AIMessage)
    [call] = asked.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city"} and call["id"]

    gathered: AIMessageChunk | None = None
    for chunk in with_tools.stream("What is the weather like in Paris today?"):
        gathered = chunk if gathered is None else gathered + chunk  # type: ignore[assignment]
    assert gathered is not None and [c["name"] for c in gathered.tool_calls] == ["get_weather"]
    assert gathered.tool_calls[0]["args"] == call["args"]

    # the tool's answer goes back, as LangChain's agents send it
    answer = llm.bind_tools([get_weather]).invoke(
        [
            ("user", "What is the weather like in Paris today?"),
            asked,
            ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]),
        ]
    )
    assert isinstance(answer, AIMessage)

    embeddings = OpenAIEmbeddings(
        model="minilm-l6",
        base_url=live_server.url + "/v1",
        api_key=alice_key,  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    assert len(embeddings.embed_query("a guitar on stage")) == 384


def test_tool_calls_and_json_answers_match_openais_spec_and_run_in_batches(
    live_server: Any, alice_key: str, celery_worker: Any, catalog: None
) -> None:
    api = client(live_server, alice_key)
    call = {
        "model": MODEL,
        "messages": ASK_WEATHER,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "temperature": 0,
    }
    answer = ok(api.post("/chat/completions", json=call))
    assert_matches(answer, "CreateChatCompletionResponse")
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    chunks = stream(api, "/chat/completions", {**call, "stream": True})
    for chunk in chunks:
        assert_matches(chunk, "CreateChatCompletionStreamResponse")
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    person = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Alice is 31. Her name and age?"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": Person.model_json_schema()},
        },
        "temperature": 0,
    }
    assert_matches(ok(api.post("/chat/completions", json=person)), "CreateChatCompletionResponse")

    # the same requests as batch lines: each answer line holds the calls and the JSON
    lines = [
        {"custom_id": "tool", "method": "POST", "url": "/v1/chat/completions", "body": call},
        {"custom_id": "json", "method": "POST", "url": "/v1/chat/completions", "body": person},
    ]
    requests = upload(
        api, "requests.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode(), "batch"
    )
    batch = ok(
        api.post(
            "/batches",
            json={
                "input_file_id": requests["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
    )
    done = wait_for(
        lambda: (b := ok(api.get(f"/batches/{batch['id']}")))["status"] in ("completed", "failed") and b,
        timeout=120,
    )
    assert done["status"] == "completed", done
    output = api.get(f"/files/{done['output_file_id']}/content").text
    bodies = {row["custom_id"]: row["response"]["body"] for row in map(json.loads, output.splitlines())}
    assert bodies["tool"]["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(bodies["tool"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert Person.model_validate_json(bodies["json"]["choices"][0]["message"]["content"])
    for body in bodies.values():
        assert_matches(body, "CreateChatCompletionResponse")
