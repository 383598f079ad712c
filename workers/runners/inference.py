"""Inference adapters: claimed generation/classification/embedding jobs → the runtime → results, usage and
a relay of tokens to the waiting web request. Requests for the same model that are waiting at
the same moment run together as one batch (one forward pass per token for all of them), and with
continuous batching, same-model requests that arrive while it decodes join it at the next step."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from apps.core.errors import ActionError
from apps.jobs import actions, relay
from apps.jobs.models import Job, JobKind, JobStatus
from apps.jobs.responses import encode_vector
from workers.runners.artifacts import load_servable
from workers.runners.attempt import AttemptGuard, drop_interrupted_connections

logger = logging.getLogger(__name__)


def run_inference(job: Job) -> None:
    jobs = [job]
    if job.kind == JobKind.GENERATION:
        jobs += actions.claim_waiting(job, limit=settings.INFERENCE_MAX_BATCH - 1)
    with ExitStack() as stack:
        guards = [stack.enter_context(AttemptGuard(member.pk, member.attempt)) for member in jobs]
        # torch only once the leases are kept alive (a fresh child imports it for seconds)
        from workers.runtime.models import default_cache

        try:
            loaded = load_servable(job.model, default_cache(settings.SERVE_QUANTIZATION))  # type: ignore[arg-type]
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
            _generate(jobs, loaded, guards)


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
    drop_interrupted_connections()
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
    relay.push_answer(job.public_id, body)


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
    """One job's share of a generation batch: its guard, its requests (one per prompt) and their
    keys in the decoder, the results of those finished so far, and for a request that offers
    tools, each choice's text split into content and tool calls."""

    job: Job
    guard: AttemptGuard
    requests: list[Any] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    results: dict[int, Any] = field(default_factory=dict)
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

    def choice_index(self, key: int, choice: int) -> int:
        return self.keys.index(key) * self.requests[0].n + choice

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.keys)

    def ordered_results(self) -> list[Any]:
        return [self.results[key] for key in self.keys]


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


def _prepared_requests(job: Job, loaded: Any) -> list[Any] | None:
    """The job's runtime requests, checked against the model; None (the job failed, its client
    told) when they cannot run."""
    from workers.runtime.constrain import GrammarError
    from workers.runtime.generate import (
        GenerateRequestError,
        check_constraint,
        check_context,
        prompt_ids,
        validate_request,
    )

    try:
        requests = _requests(job)
        for request in requests:
            validate_request(request)
            check_context(loaded, request, len(prompt_ids(loaded, request)))
            check_constraint(loaded, request)
    except GenerateRequestError as exc:
        _fail(job, 400, exc.code or "invalid_request", exc.message, exc.param)
        return None
    except GrammarError as exc:  # the web compiled it; a worker that cannot is refused alone
        _fail(
            job, 400, "invalid_request", f"The response format cannot be followed: {exc}", "response_format"
        )
        return None
    except Exception:  # one job's bad request must not fail the others batched with it
        logger.exception("job %s: could not prepare its request", job.public_id)
        _fail(job, 500, "internal_error", INTERNAL_ERROR, None)
        return None
    return requests


class _DecodeLoop:
    """One serving task's decode loop: the jobs it started with, and (continuous batching) the
    same-model jobs that join it while it runs. Each job leaves as soon as its every choice is
    done: it is finished, billed and answered then, whatever the others still decode."""

    def __init__(self, leader: Job, loaded: Any) -> None:
        from workers.runtime.generate import Decoder

        self.leader = leader
        self.loaded = loaded
        self.decoder = Decoder(loaded, self._on_token)
        self.by_key: dict[int, _Member] = {}
        self.members: list[_Member] = []
        self.relayed = 0
        self.started = time.monotonic()
        self.next_poll = self.started + settings.INFERENCE_JOIN_POLL_SECONDS

    # --- who is in the batch -----------------------------------------------------------------
    def admit(self, job: Job, guard: AttemptGuard) -> None:
        from workers.runtime.generate import GenerateRequestError

        requests = _prepared_requests(job, self.loaded)
        if requests is None:
            _release(guard)
            return
        try:
            keys = self.decoder.add(requests)
        except GenerateRequestError as exc:
            _fail(job, 400, exc.code or "invalid_request", exc.message, exc.param)
            _release(guard)
            return
        except Exception:  # its prefill failed: the batch already running goes on without it
            logger.exception("job %s: could not join the batch", job.public_id)
            _fail(job, 500, "internal_error", INTERNAL_ERROR, None)
            _release(guard)
            return
        member = _Member(job=job, guard=guard, requests=requests, keys=keys)
        self.members.append(member)
        self.by_key.update(dict.fromkeys(keys, member))

    def join_newcomers(self) -> None:
        """Claims same-model jobs queued since the loop started, at most every
        INFERENCE_JOIN_POLL_SECONDS (one SKIP LOCKED query): cheap next to a decode step."""
        now = time.monotonic()
        if now < self.next_poll or not self._may_join(now):
            return
        self.next_poll = now + settings.INFERENCE_JOIN_POLL_SECONDS
        room = settings.INFERENCE_MAX_BATCH - self.decoder.live
        if room <= 0:
            return
        try:
            newcomers = actions.claim_waiting(self.leader, limit=room)
        except DatabaseError:  # the batch under way goes on; the next poll tries again
            logger.warning("could not look for requests to join the batch", exc_info=True)
            connections.close_all()
            return
        for job in newcomers:
            self.admit(job, AttemptGuard(job.pk, job.attempt).__enter__())

    def _may_join(self, now: float) -> bool:
        if not settings.INFERENCE_CONTINUOUS_BATCHING or not self.decoder.can_join():
            return False
        if now - self.started >= settings.INFERENCE_JOIN_WINDOW_SECONDS:
            return False
        # A newcomer runs under this task's time limit: take none that could not get a whole
        # request's time before it.
        limit_at = self.leader.time_limit_at
        margin = timedelta(seconds=settings.INFERENCE_TIMEOUT_SECONDS + 60)
        return limit_at is None or limit_at - timezone.now() > margin

    def _leave(self, member: _Member) -> None:
        self.members.remove(member)
        for key in member.keys:
            self.by_key.pop(key, None)

    # --- decoding ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while self.decoder.live:
                self.drop_the_lost()
                self.join_newcomers()
                for key, result in self.decoder.step():
                    member = self.by_key[key]
                    member.results[key] = result
                    if member.complete:
                        self._finish(member)
        except Exception:  # every job of the batch gets its answer, not only the one that claimed it
            logger.exception(
                "generation batch of %s failed", ", ".join(m.job.public_id for m in self.members)
            )
            for member in list(self.members):
                self._leave(member)
                _fail(member.job, 500, "internal_error", INTERNAL_ERROR, None)
                _release(member.guard)

    def _on_token(self, key: int, choice: int, delta: str) -> None:
        member = self.by_key[key]
        index = member.choice_index(key, choice)
        events = member.events(index, delta)  # even for a client that left: the stored answer needs them
        if member.aborted:
            return
        self.relayed += 1
        if self.relayed % 16 == 0 and relay.abort_requested(member.job.public_id):
            member.aborted = True  # its client left; the others in the batch go on
            return
        _push(member.job, index, events)

    def drop_the_lost(self) -> None:
        """A job whose lease was lost (another attempt owns it now) leaves the batch at once and
        writes nothing. A cancel or a client that left does not stop a job: as before continuous
        batching, its answer is still made, stored and billed (only its relay stops)."""
        for member in [m for m in self.members if m.guard.should_stop() and m.guard.lost]:
            logger.warning("job %s: lease lost; it leaves the batch", member.job.public_id)
            self.decoder.drop([k for k in member.keys if k not in member.results])
            self._leave(member)
            _release(member.guard)

    def _finish(self, member: _Member) -> None:
        self._leave(member)
        try:
            for index, parser in member.parsers.items():
                events = parser.finish()
                if not member.aborted:
                    _push(member.job, index, events)
            _finish_generation(member.job, member.ordered_results(), member.parsers)
        except Exception:  # one job's failure must not leave the others of its batch running
            logger.exception("job %s: could not store its result", member.job.public_id)
            _fail(member.job, 500, "internal_error", INTERNAL_ERROR, None)
        _release(member.guard)  # its lease is kept until its answer is written


def _release(guard: AttemptGuard) -> None:
    """Stops a job's lease as soon as the job is done, not when the whole loop ends: a guard left
    running would find its job finished and report it fenced. The guards of the jobs the task
    started with are closed again by run_inference's ExitStack, which does nothing more."""
    guard.__exit__(None, None, None)


def _generate(jobs: list[Job], loaded: Any, guards: list[AttemptGuard]) -> None:
    loop = _DecodeLoop(jobs[0], loaded)
    for job, guard in zip(jobs, guards, strict=True):
        loop.admit(job, guard)
    loop.run()


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
