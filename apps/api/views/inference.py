"""`/v1/chat/completions`, `/v1/completions` and `/v1/classifications`.

Each request becomes a job that a worker runs; this view waits for its result (or relays its
tokens as server-sent events) through `apps.jobs.relay`. A request that waits too long gets a
504 and its job is cancelled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView
from apps.api.errors import APIError, error_body
from apps.api.serializers.common import ERRORS
from apps.core.errors import ActionError
from apps.jobs import actions, admission, inference, relay
from apps.jobs.models import Job
from apps.jobs.responses import job_response, response_id, usage_body

TIMEOUT_MESSAGE = (
    "The model did not answer within {seconds:g} seconds. The request was cancelled; retry later."
)

CUT_OFF_MESSAGE = (
    "The upstream provider's stream was cut off before the answer was complete. Retry the request."
)


class InferenceView(ProjectAPIView):
    """Shared by the three endpoints: limits, submission, waiting, relaying, timeouts."""

    endpoint = ""

    def parse(self, data: Any) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def body(self, job: Job) -> dict[str, Any]:
        return job_response(job)

    def post(self, request: Request) -> Response | StreamingHttpResponse:
        admitted = admission.admit_inference(
            self.project, lambda project, data: self.parse(data), request.data,
            api_key=self.api_key, user=self.api_key.created_by,
        )  # fmt: skip
        job, parsed = admitted.job, admitted.request
        if parsed.get("stream"):
            # The in-flight slot is released when the stream ends (or the client leaves).
            response: Any = StreamingHttpResponse(
                self.stream(job, parsed, admitted.release), content_type="text/event-stream"
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # let proxies pass each event on at once
        else:
            try:
                response = Response(self.wait(job))
            finally:
                admitted.release()
        for name, value in admitted.headers.items():
            response[name] = value
        return response

    def wait(self, job: Job) -> dict[str, Any]:
        for event in relay.listen(job.public_id, settings.INFERENCE_TIMEOUT_SECONDS):
            if event is None:
                self.give_up(job)
                raise APIError(TIMEOUT_MESSAGE.format(seconds=settings.INFERENCE_TIMEOUT_SECONDS),
                               status=504, code="timeout")  # fmt: skip
            if event["type"] == "error":
                raise APIError(event["message"], status=event.get("status", 500), code=event.get("code"),
                               param=event.get("param"))  # fmt: skip
            if event["type"] == "done":
                return self.body(inference.answered(job))
        raise APIError("The worker stopped without an answer.", status=500, code="server_error")

    @staticmethod
    def give_up(job: Job) -> None:
        relay.request_abort(job.public_id)
        actions.cancel(job)

    def stream(self, job: Job, parsed: dict[str, Any], release: Callable[[], None]) -> Iterator[bytes]:
        finished = False
        try:
            yield from self.relay_events(job, parsed)
            finished = True
        finally:
            release()
            if not finished:  # the client went away mid-stream
                self.give_up(job)

    def relay_events(self, job: Job, parsed: dict[str, Any]) -> Iterator[bytes]:
        chunker = Chunker(self.endpoint, job, parsed)
        if self.endpoint == "chat" and not parsed.get("proxy"):
            yield from sse([chunker.role_chunk(i) for i in range(parsed["n"])])
        for event in relay.listen(job.public_id, settings.INFERENCE_TIMEOUT_SECONDS):
            if event is None:
                self.give_up(job)
                yield from sse([error_body(TIMEOUT_MESSAGE.format(seconds=settings.INFERENCE_TIMEOUT_SECONDS),
                                           "server_error", "timeout")])  # fmt: skip
                break
            if event["type"] == "delta":
                yield from sse([chunker.delta(event["index"], event["text"])])
            elif event["type"] == "chunk":
                if not event["chunk"].get("choices") and not parsed.get("include_usage"):
                    continue  # upstream's usage-only chunk: we asked for it (to bill), the client did not
                yield from sse([{**event["chunk"], "model": job.model_name}])
            elif event["type"] == "error":
                yield from sse([error_body(event["message"], "invalid_request_error" if event.get("status", 500) < 500
                                           else "server_error", event.get("code"), event.get("param"))])  # fmt: skip
                break
            elif event["type"] == "done":
                try:
                    job = inference.answered(job)
                except ActionError as exc:
                    yield from sse([error_body(exc.message, "invalid_request_error", exc.code)])
                    break
                if not parsed.get("proxy"):
                    yield from sse(chunker.final(job.result or {}))
                elif not _proxied_finished(job.result or {}):  # upstream's stream was cut off half-way
                    yield from sse([error_body(CUT_OFF_MESSAGE, "server_error", "upstream_error")])
                break
        yield b"data: [DONE]\n\n"


def _proxied_finished(result: dict[str, Any]) -> bool:
    choices = (result.get("proxied") or {}).get("choices") or []
    return bool(choices) and all(choice.get("finish_reason") for choice in choices)


def sse(payloads: list[dict[str, Any]]) -> Iterator[bytes]:
    for payload in payloads:
        yield b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


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
            "system_fingerprint": "fp_modelworks",
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

    def final(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        """One chunk per choice with its finish_reason (the last also carries the usage, always),
        then OpenAI's separate usage chunk when the client asked for it."""
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
            chunks.append(self._chunk([body], usage if last else None))
        if self.include_usage:
            chunks.append(self._chunk([], usage))
        return chunks


GENERIC_REQUEST = inline_serializer("OpenAIRequest", {"model": serializers.CharField()})
GENERIC_RESPONSE = inline_serializer(
    "OpenAIResponse", {"id": serializers.CharField(), "object": serializers.CharField()}
)


class ChatCompletionsView(InferenceView):
    endpoint = "chat"

    def parse(self, data: Any) -> tuple[Any, dict[str, Any]]:
        return inference.parse_chat(self.project, data)

    @extend_schema(
        operation_id="createChatCompletion",
        request=GENERIC_REQUEST,
        responses={
            200: GENERIC_RESPONSE,
            504: OpenApiResponse(description="The model did not answer in time"),
            **ERRORS,
        },  # fmt: skip
        description="OpenAI's chat completions, on local models or proxied `openai:*` models. "
        "With `stream: true` the answer is server-sent events ending in `data: [DONE]`.",
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)


class CompletionsView(InferenceView):
    endpoint = "completions"

    def parse(self, data: Any) -> tuple[Any, dict[str, Any]]:
        return inference.parse_completion(self.project, data)

    @extend_schema(operation_id="createCompletion", request=GENERIC_REQUEST,
                   responses={200: GENERIC_RESPONSE, **ERRORS})  # fmt: skip
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)


class ClassificationsView(InferenceView):
    endpoint = "classifications"

    def parse(self, data: Any) -> tuple[Any, dict[str, Any]]:
        return inference.parse_classification(self.project, data)

    @extend_schema(
        operation_id="createClassification",
        request=inline_serializer("ClassificationRequest", {
            "model": serializers.CharField(), "input": serializers.JSONField(help_text="a string or up to 2,048"),
            "top_k": serializers.IntegerField(required=False)}),
        responses={200: GENERIC_RESPONSE, **ERRORS},
        description="Extension: classify texts with a fine-tuned classifier.",
    )  # fmt: skip
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)
