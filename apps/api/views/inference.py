"""`/v1/chat/completions`, `/v1/completions`, `/v1/classifications` and `/v1/embeddings`.

Each request takes the one inference path (`apps.jobs.serving`): admitted, queued as a job that a
worker runs, then answered as JSON or relayed as server-sent events. These views only choose the
parser and format what comes back.
"""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView
from apps.api.serializers.common import ERRORS
from apps.jobs import admission, inference, serving
from apps.jobs.admission import Parser
from apps.jobs.responses import server_sent_events


class InferenceView(ProjectAPIView):
    """Shared by the four endpoints: the parser differs, the path is `apps.jobs.serving`'s."""

    endpoint = ""
    parser: Parser

    def post(self, request: Request) -> Response | StreamingHttpResponse:
        admitted = admission.admit_inference(
            self.project, self.parser, request.data, api_key=self.api_key, user=self.api_key.created_by
        )
        if admitted.request.get("stream"):
            chunks = serving.stream(admitted, self.endpoint)
            response: Any = StreamingHttpResponse(
                server_sent_events(chunks), content_type="text/event-stream"
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # let proxies pass each event on at once
        else:
            response = Response(serving.answer(admitted))
        for name, value in admitted.headers.items():
            response[name] = value
        return response


GENERIC_REQUEST = inline_serializer("OpenAIRequest", {"model": serializers.CharField()})
GENERIC_RESPONSE = inline_serializer(
    "OpenAIResponse", {"id": serializers.CharField(), "object": serializers.CharField()}
)


class ChatCompletionsView(InferenceView):
    endpoint = "chat"
    parser = staticmethod(inference.parse_chat)

    @extend_schema(
        operation_id="createChatCompletion",
        request=GENERIC_REQUEST,
        responses={
            200: GENERIC_RESPONSE,
            504: OpenApiResponse(description="The model did not answer in time"),
            **ERRORS,
        },
        description="OpenAI's chat completions, on local models or proxied `openai:*` models. "
        "With `stream: true` the answer is server-sent events ending in `data: [DONE]`. Local chat "
        "models take `response_format` (`json_object`, `json_schema`, enforced by constrained decoding) "
        'and `tools` with `tool_choice` (see docs/api.md, "Structured outputs and tools").',
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)


class CompletionsView(InferenceView):
    endpoint = "completions"
    parser = staticmethod(inference.parse_completion)

    @extend_schema(
        operation_id="createCompletion", request=GENERIC_REQUEST, responses={200: GENERIC_RESPONSE, **ERRORS}
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)


class ClassificationsView(InferenceView):
    endpoint = "classifications"
    parser = staticmethod(inference.parse_classification)

    @extend_schema(
        operation_id="createClassification",
        request=inline_serializer(
            "ClassificationRequest",
            {
                "model": serializers.CharField(),
                "input": serializers.JSONField(help_text="a string or up to 2,048"),
                "top_k": serializers.IntegerField(required=False),
            },
        ),
        responses={200: GENERIC_RESPONSE, **ERRORS},
        description="Extension: classify texts with a fine-tuned classifier.",
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)


class EmbeddingsView(InferenceView):
    endpoint = "embeddings"
    parser = staticmethod(inference.parse_embedding)

    @extend_schema(
        operation_id="createEmbedding",
        request=inline_serializer(
            "CreateEmbeddingRequest",
            {
                "model": serializers.CharField(),
                "input": serializers.JSONField(help_text="a string or an array of up to 2,048 strings"),
                "encoding_format": serializers.ChoiceField(choices=["float", "base64"], required=False),
                "dimensions": serializers.IntegerField(required=False),
                "user": serializers.CharField(required=False),
            },
        ),
        responses={
            200: inline_serializer(
                "CreateEmbeddingResponse",
                {
                    "object": serializers.CharField(),
                    "data": serializers.JSONField(),
                    "model": serializers.CharField(),
                    "usage": serializers.JSONField(),
                },
            ),
            **ERRORS,
        },
        description="OpenAI's embeddings: MiniLM-L6 on our workers (384 dimensions, unit length), or "
        "proxied `openai:*` embedding models.",
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)
