"""`openai:*` requests are checked for what decides their cost before they are queued: their
completion budget is a number and always counts against the token limit, and fields that cost
more upstream than the tokens we bill are refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from apps.billing.models import Plan
from apps.jobs.models import Job
from tests.api.test_inference_requests import bad, refused

MODEL = "openai:gpt-4o-mini"
HELLO = [{"role": "user", "content": "hello"}]


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
    response = api.post("/v1/chat/completions", chat(service_tier="flex", modalities=["text"], max_tokens=5),
                        format="json")  # fmt: skip
    assert response.status_code == 504  # admitted (no worker answers here)
    assert Job.objects.get().request["body"]["service_tier"] == "flex"
