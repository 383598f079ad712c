"""A fine-tune on OpenAI's tool-calling examples is called the way it was trained (docs/api.md,
"Structured outputs and tools"): the same chat template renders the tools and the calls in training
and in serving, and `tool_choice: "auto"` reads the learned calls back into `tool_calls`. The
official SDK, a live server, a real worker and real SmolLM2."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.api.test_sdk_fine_tuning import sdk
from tests.conftest import use_plan, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TRAINING = [
    ("What is the weather in Paris?", "Paris"),
    ("Is it raining in Tokyo right now?", "Tokyo"),
    ("How cold is it in Oslo today?", "Oslo"),
    ("Tell me the weather for Nairobi.", "Nairobi"),
    ("Should I take an umbrella in London?", "London"),
    ("What's the temperature in Cairo?", "Cairo"),
]


def tool_chats() -> bytes:
    """OpenAI's documented tool-calling format, six distinct chats three times: 18 lines."""
    chats = [
        {
            "messages": [
                {"role": "user", "content": question},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": f"call_{index}",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
                        }
                    ],
                },
            ],
            "tools": [WEATHER_TOOL],
            "parallel_tool_calls": False,
        }
        for index, (question, city) in enumerate(TRAINING)
    ]
    return "".join(json.dumps(chat) + "\n" for chat in chats * 3).encode()


def test_a_tool_calling_fine_tune_calls_the_tool_it_learned(
    live_server: Any, alice_key: str, alice_org: Any, catalog: None, celery_worker: Any
) -> None:
    use_plan(alice_org, "team")
    client = sdk(live_server, alice_key)
    question = [{"role": "user", "content": "What is the weather like in Lima?"}]

    # before: the base model offered the tool answers in words
    before = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=question, tools=[WEATHER_TOOL], temperature=0, max_tokens=40
    )
    assert before.choices[0].message.tool_calls is None and before.choices[0].message.content

    file = client.files.create(file=("tools.jsonl", io.BytesIO(tool_chats())), purpose="fine-tune")
    assert (
        client.files.wait_for_processing(file.id, poll_interval=0.2, max_wait_seconds=30).status
        == "processed"
    )
    job = client.fine_tuning.jobs.create(
        model="smollm2-135m-instruct",
        training_file=file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )
    done = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        timeout=540,
        interval=1.0,
    )
    assert done.status == "succeeded", done.error

    # after: a question it never saw, tool_choice left to the model ("auto")
    after = client.chat.completions.create(
        model=done.fine_tuned_model or "",
        messages=question,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=40,
    )
    choice = after.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    # the arguments follow the learned shape; a 135M model may misspell a city it never saw
    # ("Limpa" in one run), which is the model's size, not the format's
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str) and arguments["city"]
