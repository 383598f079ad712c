"""Relaying chat, legacy completion and embedding requests to OpenAI (or a compatible upstream).

A small client, not a framework: one function per endpoint takes the
request body and an injected official `openai` client, and returns the upstream body plus
the token usage to bill. Upstream failures become `ProxyError`s carrying the status and
error code our API answers with.

Retries are the SDK's: `max_retries` retries connection errors, timeouts, 408/409/429 and
5xx with backoff, honouring `retry-after(-ms)`. A stream is retried only until its first
byte; after that a failure is a cut-off stream (see `proxy_chat`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import openai

from workers.runtime.specs import approx_tokens

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Streaming is ours to control: we always stream from upstream with usage when relaying.
_CONTROLLED_KEYS = ("stream", "stream_options")
# Rough size of a token in characters, for usage we must estimate (a stream cut before its usage chunk).

OnChunk = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ProxyUsage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # True when upstream never reported usage (a cut-off stream)


@dataclass(frozen=True)
class ProxyResult:
    body: dict[str, Any]  # the upstream response (assembled from the chunks when streamed)
    usage: ProxyUsage
    truncated: bool = False  # the stream ended before its final chunk or usage arrived


class ProxyError(Exception):
    """An upstream failure, as our API should report it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retryable: bool,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status our API answers with
        self.code = code
        self.message = message
        self.retryable = retryable  # worth trying again later (our caller's retry, not the SDK's)
        self.param = param
        self.retry_after_s = retry_after_s


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


def check_base_url(url: str) -> None:
    """Refuse upstream URLs that could leak the key: https only (http only to loopback), no userinfo."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"upstream base URL must be an http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise ValueError("upstream base URL must not carry credentials")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError("upstream base URL must use https (plain http is allowed only to localhost)")


def make_client(
    api_key: str, base_url: str | None, timeout_s: float = 60.0, max_retries: int = 2
) -> openai.OpenAI:
    """An SDK client with explicit limits (the SDK's own default timeout is 10 minutes)."""
    url = base_url or DEFAULT_BASE_URL  # explicit, so a stray OPENAI_BASE_URL env var is not used
    check_base_url(url)
    # Connecting should be quick; reading a long completion may take the whole budget.
    timeout = openai.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    return openai.OpenAI(api_key=api_key, base_url=url, timeout=timeout, max_retries=max_retries)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _upstream_message(exc: openai.APIError) -> str:
    if isinstance(exc.body, dict) and isinstance(exc.body.get("message"), str):
        return exc.body["message"]
    return exc.message


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _status_error(exc: openai.APIStatusError) -> ProxyError:
    status = exc.status_code
    if status == 429 and exc.code == "insufficient_quota":
        return ProxyError(429, "insufficient_quota", "The upstream provider's quota is exhausted.", False)
    if status == 429:
        return ProxyError(
            429,
            "rate_limit_exceeded",
            "The upstream provider is rate limiting requests; retry later.",
            True,
            retry_after_s=_retry_after(exc),
        )
    if status in (401, 403):
        # Never relay upstream's text here: it quotes part of the key.
        return ProxyError(
            502, "upstream_auth_error", "The upstream provider rejected our credentials.", False
        )
    if status == 404:
        return ProxyError(404, "model_not_found", _upstream_message(exc), False, param="model")
    if status >= 500:
        return ProxyError(502, "upstream_error", f"The upstream provider failed (HTTP {status}).", True)
    return ProxyError(400, "invalid_request_error", _upstream_message(exc), False, param=exc.param)


def map_error(exc: openai.APIError) -> ProxyError:
    if isinstance(exc, openai.APITimeoutError):  # before APIConnectionError: it is a subclass
        return ProxyError(504, "upstream_timeout", "The upstream provider did not answer in time.", True)
    if isinstance(exc, openai.APIConnectionError):
        return ProxyError(502, "upstream_unavailable", "Could not reach the upstream provider.", True)
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc)
    # An error event inside a stream.
    return ProxyError(502, "upstream_error", _upstream_message(exc), False)


# ---------------------------------------------------------------------------------------------
# Assembling streamed chunks into a final body
# ---------------------------------------------------------------------------------------------


def _append(target: dict[str, Any], key: str, piece: Any) -> None:
    if piece:
        target[key] = (target.get(key) or "") + piece


class _Assembler:
    """Folds chunks into the body a non-streamed request would have returned."""

    def __init__(self, obj: str) -> None:
        self.object = obj
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.chunks = 0
        self.pieces = 0  # chunks that carried generated text: ~1 token each

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunks += 1
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                self.head.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for part in chunk.get("choices") or []:
            index = part.get("index", 0)
            if index not in self.choices:
                self.choices[index] = self.new_choice(index)
            self.fold(self.choices[index], part)
            if part.get("finish_reason"):
                self.choices[index]["finish_reason"] = part["finish_reason"]

    def new_choice(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def fold(self, choice: dict[str, Any], part: dict[str, Any]) -> None:
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        return bool(self.choices) and all(c.get("finish_reason") for c in self.choices.values())

    def body(self, usage: dict[str, Any]) -> dict[str, Any]:
        choices = [self.choices[i] for i in sorted(self.choices)]
        return {**self.head, "object": self.object, "choices": choices, "usage": usage}


class _ChatAssembler(_Assembler):
    def new_choice(self, index: int) -> dict[str, Any]:
        message = {"role": "assistant", "content": None, "refusal": None}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": None}

    def fold(self, choice: dict[str, Any], part: dict[str, Any]) -> None:
        delta = part.get("delta") or {}
        message = choice["message"]
        if delta.get("role"):
            message["role"] = delta["role"]
        _append(message, "content", delta.get("content"))
        _append(message, "refusal", delta.get("refusal"))
        for call in delta.get("tool_calls") or []:
            self._fold_tool_call(message.setdefault("tool_calls", []), call)
        if delta.get("content") or delta.get("refusal") or delta.get("tool_calls"):
            self.pieces += 1
        if part.get("logprobs"):
            logprobs = choice["logprobs"] or {"content": None, "refusal": None}
            for key in ("content", "refusal"):
                if part["logprobs"].get(key):
                    logprobs[key] = (logprobs[key] or []) + part["logprobs"][key]
            choice["logprobs"] = logprobs

    @staticmethod
    def _fold_tool_call(calls: list[dict[str, Any]], piece: dict[str, Any]) -> None:
        # The first piece of a call carries its id and name; later pieces add argument text.
        index = piece.get("index", len(calls))
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
        call = calls[index]
        for key in ("id", "type"):
            if piece.get(key):
                call[key] = piece[key]
        function = piece.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments") or ""


class _CompletionAssembler(_Assembler):
    def new_choice(self, index: int) -> dict[str, Any]:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": None}

    def fold(self, choice: dict[str, Any], part: dict[str, Any]) -> None:
        if part.get("text"):
            choice["text"] += part["text"]
            self.pieces += 1
        if part.get("logprobs"):
            logprobs = choice["logprobs"] or {
                "tokens": [],
                "token_logprobs": [],
                "top_logprobs": [],
                "text_offset": [],
            }
            for key in logprobs:
                logprobs[key] = logprobs[key] + (part["logprobs"].get(key) or [])
            choice["logprobs"] = logprobs


# ---------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------


def _request_kwargs(body: dict[str, Any], required: str) -> dict[str, Any]:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ProxyError(400, "invalid_request_error", "model is required", False, param="model")
    if required not in body:
        raise ProxyError(400, "invalid_request_error", f"{required} is required", False, param=required)
    # Everything else passes through as JSON (extra_body), so new OpenAI parameters need no change here.
    extra = {k: v for k, v in body.items() if k not in ("model", required, *_CONTROLLED_KEYS)}
    return {"model": body["model"], required: body[required], "extra_body": extra}


def _usage_from(usage: dict[str, Any] | None) -> ProxyUsage | None:
    if not usage:
        return None
    return ProxyUsage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _estimate_tokens(value: Any) -> int:
    return approx_tokens(len(json.dumps(value, ensure_ascii=False)))


def _generated_text(response: dict[str, Any]) -> list[Any]:
    return [c.get("text") or (c.get("message") or {}).get("content") for c in response.get("choices") or []]


def _usage_dict(usage: ProxyUsage) -> dict[str, int]:
    total = usage.prompt_tokens + usage.completion_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": total,
    }


def _call(create: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    try:
        return create(**kwargs)
    except openai.APIError as exc:
        raise map_error(exc) from exc


def _once(create: Callable[..., Any], body: dict[str, Any], prompt_key: str) -> ProxyResult:
    response = _call(create, _request_kwargs(body, prompt_key)).to_dict(mode="json")
    usage = _usage_from(response.get("usage"))
    if usage is None:  # some OpenAI-compatible servers omit it; the work was done, so estimate
        prompt, completion = _estimate_tokens(body[prompt_key]), _estimate_tokens(_generated_text(response))
        usage = ProxyUsage(prompt, completion, estimated=True)
    return ProxyResult(body=response, usage=usage)


def _streamed(
    create: Callable[..., Any],
    body: dict[str, Any],
    prompt_key: str,
    assembler: _Assembler,
    on_chunk: OnChunk,
) -> ProxyResult:
    stream_options = {**(body.get("stream_options") or {}), "include_usage": True}
    kwargs = {**_request_kwargs(body, prompt_key), "stream": True, "stream_options": stream_options}
    stream = _call(create, kwargs)
    try:
        with stream:  # closes the upstream connection even if on_chunk raises
            for chunk in stream:
                data = chunk.to_dict(mode="json")
                assembler.add(data)
                on_chunk(data)
    except openai.APIError as exc:
        if not assembler.chunks:
            raise map_error(exc) from exc
        logger.warning("upstream stream cut off after %d chunks: %s", assembler.chunks, exc)
    usage = _usage_from(assembler.usage) or ProxyUsage(
        _estimate_tokens(body[prompt_key]), assembler.pieces, estimated=True
    )
    truncated = assembler.usage is None or not assembler.finished
    return ProxyResult(body=assembler.body(_usage_dict(usage)), usage=usage, truncated=truncated)


def proxy_chat(client: openai.OpenAI, body: dict[str, Any], on_chunk: OnChunk | None = None) -> ProxyResult:
    """POST /chat/completions upstream; `body["model"]` is the upstream name (no "openai:" prefix).

    With `on_chunk`, the request is streamed (always with usage) and each chunk dict is passed on
    as it arrives, the final usage-only chunk (`choices: []`) included: drop it if your client did
    not ask for `stream_options.include_usage`. An exception from `on_chunk` closes the upstream
    stream and propagates.

    A stream cut off after its first chunk (connection lost, timeout, an in-band error) is not an
    error: the result holds what arrived, `truncated=True`, and usage upstream reported or, if its
    usage chunk never came, an estimate (prompt ≈ its JSON characters / 4, completion = chunks
    carrying text) marked `estimated=True`, because upstream bills us for that work anyway.
    A failure before the first chunk raises ProxyError like a non-streamed call.
    """
    create = client.chat.completions.create
    if on_chunk is None:
        return _once(create, body, "messages")
    return _streamed(create, body, "messages", _ChatAssembler("chat.completion"), on_chunk)


def proxy_completion(
    client: openai.OpenAI, body: dict[str, Any], on_chunk: OnChunk | None = None
) -> ProxyResult:
    """POST /completions upstream; same contract as `proxy_chat`."""
    create = client.completions.create
    if on_chunk is None:
        return _once(create, body, "prompt")
    return _streamed(create, body, "prompt", _CompletionAssembler("text_completion"), on_chunk)


def proxy_embeddings(client: openai.OpenAI, body: dict[str, Any]) -> ProxyResult:
    """POST /embeddings upstream; `body["model"]` is the upstream name. The body comes back as the
    upstream sent it: floats, or base64 strings when the request asked for them."""
    kwargs = _request_kwargs(body, "input")
    # Without an encoding_format the SDK asks upstream for base64 and decodes it into floats; naming
    # the format (OpenAI's default, float, when the request names none) relays the answer as it is.
    kwargs["encoding_format"] = kwargs["extra_body"].pop("encoding_format", None) or "float"
    # warnings=False: the SDK types `embedding` as floats, and a base64 answer is a string.
    response = _call(client.embeddings.create, kwargs).to_dict(mode="json", warnings=False)
    usage = _usage_from(response.get("usage"))
    if usage is None:  # an OpenAI-compatible server that omits it: the work was done, so estimate
        usage = ProxyUsage(_estimate_tokens(body["input"]), 0, estimated=True)
    return ProxyResult(body=response, usage=usage)
