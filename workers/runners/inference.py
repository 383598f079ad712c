"""Inference adapters: claimed generation/classification/embedding jobs → the runtime → results, usage and
a relay of tokens to the waiting web request. Requests for the same model that are waiting at
the same moment run together as one batch (one forward pass per token for all of them)."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from apps.core.errors import ActionError
from apps.jobs import actions, relay
from apps.jobs.models import Job, JobKind, JobStatus
from apps.jobs.responses import encode_vector
from workers.runners.artifacts import local_model_dir
from workers.runners.attempt import AttemptGuard

logger = logging.getLogger(__name__)


def run_inference(job: Job) -> None:
    jobs = [job]
    if job.kind == JobKind.GENERATION:
        jobs += actions.claim_waiting(job, limit=settings.INFERENCE_MAX_BATCH - 1)
    with ExitStack() as stack:
        for member in jobs:
            stack.enter_context(AttemptGuard(member.pk, member.attempt))
        # torch only once the leases are kept alive (a fresh child imports it for seconds)
        from workers.runtime.models import default_cache

        try:
            model_dir = local_model_dir(job.model.artifact_key)  # type: ignore[union-attr]
            loaded = default_cache(settings.SERVE_QUANTIZATION).get(str(model_dir))
        except (OSError, ValueError):
            # The reason names paths on the worker: it goes to the log, never to the customer.
            logger.exception("job %s: model %s could not be loaded", job.public_id, job.model_name)
            for member in jobs:
                _fail(member, 500, "model_unavailable", MODEL_UNAVAILABLE, "model")
            return
        if job.kind == JobKind.CLASSIFICATION:
            _classify(job, loaded)
        elif job.kind == JobKind.EMBEDDING:
            _embed(job, loaded)
        else:
            _generate(jobs, loaded)


MODEL_UNAVAILABLE = "The model could not be loaded. Retry, and contact us with the request id if it persists."
INTERNAL_ERROR = (
    "The job failed because of an internal error. Retry, and contact us with the job id if it persists."
)


def storable(value: Any) -> Any:
    """PostgreSQL's jsonb cannot hold U+0000, which a byte-level tokenizer (or an upstream) can
    produce: it becomes U+FFFD, in relayed tokens too so that a stream joins to the stored text."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {key: storable(item) for key, item in value.items()}
    return value


def _fail(job: Job, status: int, code: str, message: str, param: str | None) -> None:
    actions.finish(
        job.pk, job.attempt, JobStatus.FAILED, error={"code": code, "message": message, "param": param}
    )
    relay.push(
        job.public_id, {"type": "error", "status": status, "code": code, "message": message, "param": param}
    )


def succeed(job: Job, body: dict[str, Any], usage: dict[str, int]) -> None:
    """Stores the answer and its usage, then hands the answer to the waiting request itself, so
    that it need not read the row back. When this attempt no longer owns the job (another one
    answers), or the job is gone with its project, the request is only told to look at the row."""
    if not actions.finish_request(job, body, usage):
        relay.push(job.public_id, {"type": "done"})
        return
    relay.push(job.public_id, {"type": "done", "result": body})


def classification_result(loaded: Any, request: dict[str, Any]) -> dict[str, Any]:
    from workers.runtime.classify import classify
    from workers.runtime.specs import ClassifyRequest

    result = classify(loaded, ClassifyRequest(texts=tuple(request["texts"]), top_k=request.get("top_k")))
    return {
        "data": [
            {"index": i, "labels": [{"label": s.label, "score": round(s.score, 6)} for s in labels]}
            for i, labels in enumerate(result.results)
        ],
        "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens},
    }


def _classify(job: Job, loaded: Any) -> None:
    try:
        body = classification_result(loaded, job.request)
    except ValueError as exc:
        _fail(job, 400, "invalid_request", str(exc), "input")
        return
    usage = {"classified_texts": len(job.request["texts"]), "input_tokens": body["usage"]["prompt_tokens"]}
    succeed(job, body, usage)


TOO_LONG = "input[{index}] is {tokens} tokens long; {model} reads at most {limit} tokens per input. Shorten or split it."


def embedding_result(loaded: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The vectors of a parsed embedding request, stored as base64 float32 (apps.jobs.responses)."""
    from workers.runtime.embed import embed
    from workers.runtime.specs import EmbedRequest

    result = embed(loaded, EmbedRequest(texts=tuple(request["texts"])))
    return {
        "data": [{"index": i, "embedding": encode_vector(vector)} for i, vector in enumerate(result.vectors)],
        "encoding_format": request["encoding_format"],
        "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens},
    }


def _embed(job: Job, loaded: Any) -> None:
    from workers.runtime.embed import EmbedInputError

    try:
        body = embedding_result(loaded, job.request)
    except EmbedInputError as exc:
        message = TOO_LONG.format(index=exc.index, tokens=exc.tokens, model=job.model_name, limit=exc.limit)
        _fail(job, 400, "invalid_request", message, f"input[{exc.index}]")
        return
    except ValueError as exc:
        _fail(job, 400, "invalid_request", str(exc), "model")
        return
    usage = {"input_tokens": body["usage"]["prompt_tokens"]}
    succeed(job, body, usage)


@dataclass
class _Member:
    """One job's share of a generation batch: its requests (one per prompt), choice offsets, and for
    a request that offers tools, each choice's text split into content and tool calls."""

    job: Job
    first_row: int
    requests: list[Any] = field(default_factory=list)
    aborted: bool = False
    parsers: dict[int, Any] = field(default_factory=dict)

    def events(self, index: int, delta: str) -> list[tuple[str, Any]]:
        names = tool_names(self.job.request)
        if names is None:
            return [("content", delta)]
        if index not in self.parsers:
            from workers.runtime.tools import ToolCallStream

            self.parsers[index] = ToolCallStream(names)
        events: list[tuple[str, Any]] = self.parsers[index].feed(delta)
        return events


def tool_names(request: dict[str, Any]) -> frozenset[str] | None:
    """The functions whose calls are read back from the text; None when the request offers no
    tools or forbids calling them."""
    if not request.get("tools") or request.get("tool_choice") == "none":
        return None
    return frozenset(tool["function"]["name"] for tool in request["tools"])


def _push(job: Job, index: int, events: list[tuple[str, Any]]) -> None:
    for kind, value in events:
        if kind == "content":
            relay.push(job.public_id, {"type": "delta", "index": index, "text": storable(value)})
        else:
            relay.push(job.public_id, {"type": "tool_call", "index": index, "call": storable(value)})


def _generate(jobs: list[Job], loaded: Any) -> None:
    from workers.runtime.constrain import GrammarError
    from workers.runtime.generate import (
        GenerateRequestError,
        check_constraint,
        check_context,
        generate_batch,
        prompt_ids,
        validate_request,
    )

    members: list[_Member] = []
    batch: list[Any] = []
    for job in jobs:
        try:
            requests = _requests(job)
            for request in requests:
                validate_request(request)
                check_context(loaded, request, len(prompt_ids(loaded, request)))
                check_constraint(loaded, request)
        except GenerateRequestError as exc:
            _fail(job, 400, exc.code or "invalid_request", exc.message, exc.param)
            continue
        except GrammarError as exc:  # the web compiled it; a worker that cannot is refused alone
            _fail(
                job,
                400,
                "invalid_request",
                f"The response format cannot be followed: {exc}",
                "response_format",
            )
            continue
        except Exception:  # one job's bad request must not fail the others batched with it
            logger.exception("job %s: could not prepare its request", job.public_id)
            _fail(job, 500, "internal_error", INTERNAL_ERROR, None)
            continue
        members.append(_Member(job=job, first_row=len(batch), requests=requests))
        batch.extend(requests)
    if not members:
        return
    owners = [m for m in members for _ in m.requests]
    relayed = [0]

    def on_token(row: int, choice: int, delta: str) -> None:
        member = owners[row]
        index = (row - member.first_row) * member.requests[0].n + choice
        events = member.events(index, delta)  # even for a client that left: the stored answer needs them
        if member.aborted:
            return
        relayed[0] += 1
        if relayed[0] % 16 == 0 and relay.abort_requested(member.job.public_id):
            member.aborted = True  # its client left; the others in the batch go on
            return
        _push(member.job, index, events)

    try:
        results = generate_batch(loaded, batch, on_token)
    except Exception:  # every job of the batch gets its answer, not only the one that claimed it
        logger.exception("generation batch of %s failed", ", ".join(m.job.public_id for m in members))
        for member in members:
            _fail(member.job, 500, "internal_error", INTERNAL_ERROR, None)
        return
    for member in members:
        mine = results[member.first_row : member.first_row + len(member.requests)]
        try:
            for index, parser in member.parsers.items():
                events = parser.finish()
                if not member.aborted:
                    _push(member.job, index, events)
            _finish_generation(member.job, mine, member.parsers)
        except Exception:  # one job's failure must not leave the others of its batch running
            logger.exception("job %s: could not store its result", member.job.public_id)
            _fail(member.job, 500, "internal_error", INTERNAL_ERROR, None)


def _requests(job: Job) -> list[Any]:
    return generate_requests(job.request)


def generate_requests(r: dict[str, Any]) -> list[Any]:
    """A parsed chat or completion request → one GenerateRequest per prompt."""
    from workers.runtime.specs import GenerateRequest

    common = {
        "max_tokens": r["max_tokens"],
        "temperature": r["temperature"],
        "top_p": r["top_p"],
        "n": r["n"],
        "stop": tuple(r["stop"]),
        "seed": r["seed"],
        "presence_penalty": r["presence_penalty"],
        "frequency_penalty": r["frequency_penalty"],
        "logprobs": r["logprobs"],
        "top_logprobs": r["top_logprobs"],
    }
    if r["endpoint"] == "chat":
        from workers.runtime.constrain import request_grammar

        tools = r.get("tools")
        grammar = request_grammar(
            r.get("response_format"), tools, r.get("tool_choice"), r.get("parallel_tool_calls", True)
        )
        return [
            GenerateRequest(
                messages=tuple(r["messages"]),
                tools=tuple(tools) if tools else None,
                grammar=grammar,
                **common,
            )
        ]
    return [GenerateRequest(prompt=prompt, **common) for prompt in r["prompts"]]


def _finish_generation(job: Job, results: list[Any], parsers: dict[int, Any]) -> None:
    body = storable(generation_result(results, job.request, parsers))
    usage = {
        "input_tokens": body["usage"]["prompt_tokens"],
        "output_tokens": body["usage"]["completion_tokens"],
    }
    actions.finish(job.pk, job.attempt, JobStatus.SUCCEEDED, result=body, usage=usage, message="Generated.")
    relay.push(job.public_id, {"type": "done"})


def generation_result(
    results: list[Any], request: dict[str, Any], parsers: dict[int, Any] | None = None
) -> dict[str, Any]:
    """The runtime's results for one request's prompts → the result dict stored on the job. For a
    request that offers tools, each choice's text is split into content and `tool_calls` (by the
    parsers that streamed it, so the streamed call ids are the stored ones)."""
    from workers.runtime.tools import ToolCallStream

    names = tool_names(request)
    choices = []
    for prompt_index, result in enumerate(results):
        for choice in result.choices:
            index = prompt_index * len(result.choices) + choice.index
            stored = {
                "index": index,
                "text": choice.text,
                "finish_reason": choice.finish_reason,
                "logprobs": [
                    {
                        "token": t.token,
                        "logprob": t.logprob,
                        "bytes": t.bytes,
                        "top_logprobs": [{"token": tok, "logprob": lp} for tok, lp in t.top_logprobs],
                    }
                    for t in choice.logprobs
                ]
                if choice.logprobs is not None
                else None,
            }
            if names is not None:
                parser = (parsers or {}).get(index)
                if parser is None:  # not streamed (a batch line), or no text at all
                    parser = ToolCallStream(names)
                    parser.feed(choice.text)
                    parser.finish()
                stored["text"] = parser.message_content
                if parser.calls:
                    stored["tool_calls"] = parser.calls
                    if choice.finish_reason == "stop":  # "length" still says a call may be cut off
                        stored["finish_reason"] = "tool_calls"
            choices.append(stored)
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    return {
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def run_proxy(job: Job) -> None:
    from workers.runtime.openai_proxy import (
        ProxyError,
        make_client,
        proxy_chat,
        proxy_completion,
        proxy_embeddings,
    )

    try:
        key = job.organization.openai_key_for_calls()
    except ActionError as exc:
        _fail(job, exc.status, exc.code, exc.message, exc.param)
        return
    request = job.request
    stream = request.get("stream", False)

    def on_chunk(chunk: dict[str, Any]) -> None:
        relay.push(job.public_id, {"type": "chunk", "chunk": chunk})

    with AttemptGuard(job.pk, job.attempt):
        client = make_client(
            key, settings.OPENAI_BASE_URL, settings.OPENAI_TIMEOUT_SECONDS, settings.OPENAI_MAX_RETRIES
        )
        try:
            if request["endpoint"] == "embeddings":
                result = proxy_embeddings(client, request["body"])
            else:
                call = proxy_chat if request["endpoint"] == "chat" else proxy_completion
                result = call(client, request["body"], on_chunk if stream else None)
        except ProxyError as exc:
            _fail(job, exc.status, exc.code, exc.message, exc.param)
            return
    usage = {"input_tokens": result.usage.prompt_tokens, "output_tokens": result.usage.completion_tokens}
    actions.finish(
        job.pk,
        job.attempt,
        JobStatus.SUCCEEDED,
        result={
            "proxied": storable(result.body),
            "truncated": result.truncated,
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
            },
        },
        usage=usage,
        message="Proxied to OpenAI.",
    )
    relay.push(job.public_id, {"type": "done"})
