"""OpenAI response bodies built from an inference result (for API responses and batch lines).

A result is what a worker stores on the job: `{"choices": [{index, text, finish_reason,
logprobs}], "usage": {prompt_tokens, completion_tokens}}` for generation, `{"data", "usage"}` for
classification, `{"data": [{index, embedding}], "usage", "encoding_format"}` for embeddings (each
vector stored as base64 float32, a quarter of its JSON size), or `{"proxied": <upstream body>}` for
`openai:*` models.
"""

from __future__ import annotations

import base64
import json
import sys
from array import array
from collections.abc import Iterable, Iterator
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


def _message(choice: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": choice["text"], "refusal": None}
    if choice.get("tool_calls"):
        message["tool_calls"] = [
            {key: call[key] for key in ("id", "type", "function")} for call in choice["tool_calls"]
        ]
    return message


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
                "message": _message(c),
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


def encode_vector(values: list[float]) -> str:
    """A vector as OpenAI's `encoding_format: "base64"` sends it: little-endian float32 bytes."""
    floats = array("f", values)
    if sys.byteorder == "big":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode()


def decode_vector(encoded: str) -> list[float]:
    floats = array("f")
    floats.frombytes(base64.b64decode(encoded))
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


def embedding_response(id: str, created: int, model: str, result: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's CreateEmbeddingResponse: no id or created, vectors as floats or base64 strings."""
    if "proxied" in result:
        return {**result["proxied"], "model": model}
    as_base64 = result.get("encoding_format") == "base64"
    tokens = int((result.get("usage") or {}).get("prompt_tokens", 0))
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": item["index"],
                "embedding": item["embedding"] if as_base64 else decode_vector(item["embedding"]),
            }
            for item in result.get("data", [])
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


RESPONSES = {
    "chat": ("chatcmpl-", chat_response),
    "completions": ("cmpl-", completion_response),
    "classifications": ("clf-", classification_response),
    "embeddings": ("emb-", embedding_response),
}


def job_response(job: Job) -> dict[str, Any]:
    """The OpenAI body for a finished inference job."""
    prefix, build = RESPONSES[job.request["endpoint"]]
    return build(response_id(job, prefix), int(job.created_at.timestamp()), job.model_name, job.result or {})


# --- Streams ----------------------------------------------------------------------------------------
class Chunker:
    """Builds OpenAI stream chunks for chat (`chat.completion.chunk`) and completions."""

    def __init__(self, endpoint: str, job: Job, parsed: dict[str, Any]) -> None:
        self.chat = endpoint == "chat"
        self.include_usage = bool(parsed.get("include_usage"))
        self.base = {
            "id": response_id(job, "chatcmpl-" if self.chat else "cmpl-"),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(job.created_at.timestamp()),
            "model": job.model_name,
            "system_fingerprint": FINGERPRINT,
        }

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        chunk = {**self.base, "choices": choices}
        if self.include_usage or usage is not None:
            chunk["usage"] = usage
        return chunk

    def role_chunk(self, index: int) -> dict[str, Any]:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def delta(self, index: int, text: str) -> dict[str, Any]:
        if self.chat:
            return self._chunk(
                [{"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]
            )
        return self._chunk([{"index": index, "text": text, "logprobs": None, "finish_reason": None}])

    def tool_call(self, index: int, call: dict[str, Any]) -> dict[str, Any]:
        """A whole tool call in one delta (OpenAI may split its arguments over several; clients join
        the pieces by the call's `index`, so one piece is the same to them)."""
        delta = {"tool_calls": [call]}
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def final(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        """One chunk per choice with its finish_reason, the last carrying the usage; or, when the
        client asked for `stream_options.include_usage`, OpenAI's shape: `usage: null` on every
        choice chunk and the totals once, in a separate chunk with no choices (a client that adds
        up the usage it sees would otherwise count it twice)."""
        usage = usage_body(result)
        choices = result.get("choices", [])
        chunks = []
        for position, choice in enumerate(choices):
            last = position == len(choices) - 1
            if self.chat:
                body = {
                    "index": choice["index"],
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            else:
                body = {
                    "index": choice["index"],
                    "text": "",
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            chunks.append(self._chunk([body], usage if last and not self.include_usage else None))
        if self.include_usage:
            chunks.append(self._chunk([], usage))
        return chunks


def server_sent_events(chunks: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """A stream's chunks as server-sent events, then OpenAI's `data: [DONE]`."""
    for chunk in chunks:
        yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
