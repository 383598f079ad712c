"""`openai:*` requests are checked for what decides their cost before they are queued: their
completion budget is a number and always counts against the token limit, and fields that cost
more upstream than the tokens we bill are refused by name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apps.billing.models import Plan
from apps.billing.quotas import QuotaError
from apps.jobs.models import Job
from tests.api.test_inference_requests import bad, refused

MODEL = "openai:gpt-4o-mini"
HELLO = [{"role": "user", "content": "hello"}]
# A few bytes that OpenAI reads as hundreds of prompt tokens.
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}
# 40 functions of 1,000 characters each: OpenAI counts their definitions as prompt tokens.
TOOLS = [
    {
        "type": "function",
        "function": {"name": f"tool_{i}", "description": "d" * 1000, "parameters": {"type": "object"}},
    }
    for i in range(40)
]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, **fields}


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (chat(max_tokens="many"), "max_tokens must be an integer between 1 and 1000000.", "max_tokens"),
        (chat(max_tokens=[5]), "max_tokens must be an integer between 1 and 1000000.", "max_tokens"),
        (chat(max_tokens=0), "max_tokens must be an integer between 1 and 1000000.", "max_tokens"),
        (chat(max_tokens=True), "max_tokens must be an integer between 1 and 1000000.", "max_tokens"),
        (
            chat(max_completion_tokens=10**12),
            "max_completion_tokens must be an integer between 1 and 1000000.",
            "max_completion_tokens",
        ),
        (
            chat(service_tier="priority"),
            "service_tier must be 'auto', 'default' or 'flex' through the proxy; other tiers are priced above "
            "the tokens we bill.",
            "service_tier",
        ),
        (
            chat(web_search_options={}),
            "'web_search_options' is not supported through the proxy: web search is priced apart from tokens.",
            "web_search_options",
        ),
        (
            chat(audio={"voice": "alloy", "format": "wav"}),
            "'audio' is not supported through the proxy: audio output is priced apart from tokens.",
            "audio",
        ),
        (chat(modalities=["text", "audio"]), 'modalities must be ["text"] through the proxy.', "modalities"),
        (chat(surprise=1), "Unrecognized request argument supplied: surprise", "surprise"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}]),
            "'image_url' content is not supported through the proxy: only text parts are.",
            "messages[0].content",
        ),
        (
            chat(
                messages=[
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklG"}}]}
                ]
            ),
            "'input_audio' content is not supported through the proxy: only text parts are.",
            "messages[0].content",
        ),
        (
            chat(messages=[*HELLO, {"role": "user", "content": ["hello"]}]),
            "Non-text content is not supported through the proxy: only text parts are.",
            "messages[1].content",
        ),
        (
            chat(messages=[*HELLO, {"role": "assistant", "audio": {"id": "audio_1"}}]),
            "'messages[1].audio' is not supported through the proxy: audio is priced apart from tokens.",
            "messages[1].audio",
        ),
        (chat(stream="yes"), "stream must be true or false.", "stream"),
        (
            {"model": MODEL, "prompt": "hi", "n": 2, "best_of": 1},
            "best_of must be at least n.",
            "best_of",
        ),
    ],
)
def test_a_proxied_request_that_would_cost_more_than_it_says_is_refused(
    api: Any, pro: Any, body: dict[str, Any], message: str, param: str
) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    assert refused(api, path, body) == bad(message, param)


def test_a_proxied_request_without_a_limit_counts_a_completion_budget(
    api: Any, pro: Any, settings: Any
) -> None:
    # given 6,000 tokens a minute, and no worker (an admitted request times out after a second)
    Plan.objects.filter(slug="pro").update(tokens_per_minute=6000)
    settings.INFERENCE_TIMEOUT_SECONDS = 1
    # when a request without max_tokens is admitted, it counts as the 4,096-token budget
    first = api.post("/v1/chat/completions", chat(), format="json")
    assert first.status_code == 504
    # so a second one does not fit in the minute
    second = api.post("/v1/chat/completions", chat(), format="json")
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert second.json()["error"]["message"].startswith("Rate limit reached for tokens for your organization")
    # while one that asks for few tokens does
    assert api.post("/v1/chat/completions", chat(max_tokens=16), format="json").status_code == 504
    assert Job.objects.count() == 2


def test_the_flex_tier_and_text_modality_pass(api: Any, pro: Any, settings: Any) -> None:
    settings.INFERENCE_TIMEOUT_SECONDS = 1
    response = api.post(
        "/v1/chat/completions", chat(service_tier="flex", modalities=["text"], max_tokens=5), format="json"
    )
    assert response.status_code == 504  # admitted (no worker answers here)
    assert Job.objects.get().request["body"]["service_tier"] == "flex"


def test_text_parts_and_a_refusal_pass(api: Any, pro: Any, settings: Any) -> None:
    settings.INFERENCE_TIMEOUT_SECONDS = 1
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        *HELLO,
    ]
    response = api.post("/v1/chat/completions", chat(messages=messages, max_tokens=5), format="json")
    assert response.status_code == 504  # admitted (no worker answers here)


def test_tool_definitions_count_against_the_tokens_per_minute(api: Any, pro: Any, settings: Any) -> None:
    # given 6,000 tokens a minute, and no worker
    Plan.objects.filter(slug="pro").update(tokens_per_minute=6000)
    settings.INFERENCE_TIMEOUT_SECONDS = 1
    # when a request with a short message, 16 completion tokens and 40,000 characters of tools comes
    response = api.post("/v1/chat/completions", chat(tools=TOOLS, max_tokens=16), format="json")
    # then its tools count: it does not fit in the minute
    assert response.status_code == 429, response.content
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert not Job.objects.exists()


def test_tool_definitions_are_part_of_a_requests_share_of_the_spend_cap(
    alice: Any, alice_org: Any, alice_project: Any, pro: Any
) -> None:
    from apps.billing.pricing import cost_of
    from apps.jobs import admission, inference

    # given a spend limit with room for the tools' bytes as prompt tokens, no more
    tools_cost = cost_of(MODEL, "input_tokens", len(json.dumps(TOOLS).encode()))
    pro.spend_limit = tools_cost
    pro.save(update_fields=["spend_limit"])
    body = chat(tools=TOOLS, max_tokens=16)
    # when a request with those tools is admitted, it holds them in its share
    first = admission.admit_inference(alice_project, inference.parse_chat, body, user=alice)
    first.release()
    assert first.job.reserved_cost == tools_cost
    # so a second one finds the cap taken until the first ends
    with pytest.raises(QuotaError) as refused_again:
        admission.admit_inference(alice_project, inference.parse_chat, body, user=alice)
    assert refused_again.value.headers == {"retry-after": "5"}


def test_each_prompt_of_a_proxied_completion_counts_its_completion_budget(
    api: Any, pro: Any, settings: Any
) -> None:
    # given 6,000 tokens a minute, and no worker
    Plan.objects.filter(slug="pro").update(tokens_per_minute=6000)
    settings.INFERENCE_TIMEOUT_SECONDS = 1
    # when 50 prompts of 200 completion tokens each are sent in one request (OpenAI answers each)
    body = {"model": MODEL, "prompt": ["hi"] * 50, "max_tokens": 200}
    response = api.post("/v1/completions", body, format="json")
    # then they count 10,000 tokens: more than the minute holds
    assert response.status_code == 429, response.content
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    # while one prompt of token ids is one prompt
    one = api.post(
        "/v1/completions", {"model": MODEL, "prompt": [1, 2, 3] * 50, "max_tokens": 200}, format="json"
    )
    assert one.status_code == 504
