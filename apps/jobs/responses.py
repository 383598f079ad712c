"""OpenAI response bodies built from an inference result (for API responses and batch lines).

A result is what a worker stores on the job: `{"choices": [{index, text, finish_reason,
logprobs}], "usage": {prompt_tokens, completion_tokens}}` for generation, `{"data", "usage"}` for
classification, or `{"proxied": <upstream body>}` for `openai:*` models.
"""

from __future__ import annotations

from typing import Any

from apps.jobs.models import Job

FINGERPRINT = "fp_modelworks"


def response_id(job: Job, prefix: str) -> str:
    return prefix + job.public_id.split("-", 1)[1]


def usage_body(result: dict[str, Any]) -> dict[str, Any]:
    usage = result.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _chat_logprobs(choice: dict[str, Any]) -> dict[str, Any] | None:
    if choice.get("logprobs") is None:
        return None
    content = [
        {**token, "top_logprobs": [{**alt, "bytes": None} for alt in token["top_logprobs"]]}
        for token in choice["logprobs"]
    ]
    return {"content": content, "refusal": None}


def _completion_logprobs(choice: dict[str, Any]) -> dict[str, Any] | None:
    tokens = choice.get("logprobs")
    if tokens is None:
        return None
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token["token"])
    return {
        "tokens": [t["token"] for t in tokens],
        "token_logprobs": [t["logprob"] for t in tokens],
        "top_logprobs": [{alt["token"]: alt["logprob"] for alt in t["top_logprobs"]} for t in tokens],
        "text_offset": offsets,
    }


def chat_response(id: str, created: int, model: str, result: dict[str, Any]) -> dict[str, Any]:
    if "proxied" in result:
        return {**result["proxied"], "model": model}
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": c["index"],
                "message": {"role": "assistant", "content": c["text"], "refusal": None},
                "logprobs": _chat_logprobs(c),
                "finish_reason": c["finish_reason"],
            }
            for c in result.get("choices", [])
        ],
        "usage": usage_body(result),
    }


def completion_response(id: str, created: int, model: str, result: dict[str, Any]) -> dict[str, Any]:
    if "proxied" in result:
        return {**result["proxied"], "model": model}
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": c["index"],
                "text": c["text"],
                "finish_reason": c["finish_reason"],
                "logprobs": _completion_logprobs(c),
            }
            for c in result.get("choices", [])
        ],
        "usage": usage_body(result),
    }


def classification_response(id: str, created: int, model: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": id,
        "object": "classification",
        "created": created,
        "model": model,
        "data": result.get("data", []),
        "usage": result.get("usage", {}),
    }


RESPONSES = {
    "chat": ("chatcmpl-", chat_response),
    "completions": ("cmpl-", completion_response),
    "classifications": ("clf-", classification_response),
}


def job_response(job: Job) -> dict[str, Any]:
    """The OpenAI body for a finished inference job."""
    prefix, build = RESPONSES[job.request["endpoint"]]
    return build(response_id(job, prefix), int(job.created_at.timestamp()), job.model_name, job.result or {})
