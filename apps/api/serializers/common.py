"""Shapes shared by every /v1/ resource, for the OpenAPI schema."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class DeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()


def list_of(
    item: type[serializers.Serializer] | serializers.Serializer, name: str, first_last: bool = False
) -> serializers.Serializer:
    # `inline_serializer` gives an instance; its class is what a list needs.
    item_class = item if isinstance(item, type) else type(item)
    fields: dict[str, serializers.Field] = {
        "object": serializers.CharField(default="list"),
        "data": item_class(many=True),
        "has_more": serializers.BooleanField(),
    }
    if first_last:
        fields["first_id"] = serializers.CharField(allow_null=True)
        fields["last_id"] = serializers.CharField(allow_null=True)
    return inline_serializer(name=name, fields=fields)


ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid request"),
    401: OpenApiResponse(ErrorSerializer, description="Missing or invalid API key"),
    404: OpenApiResponse(ErrorSerializer, description="No such object in this project"),
    429: OpenApiResponse(ErrorSerializer, description="Rate limited or out of quota"),
}


def cursor_parameters(max_limit: int) -> list[OpenApiParameter]:
    """`after` and `limit`, with the page sizes the endpoint accepts."""
    return [
        OpenApiParameter("after", str, description="Return objects after this id (cursor)."),
        OpenApiParameter(
            "limit", {"type": "integer", "minimum": 1, "maximum": max_limit}, description="Page size."
        ),
    ]


IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    location=OpenApiParameter.HEADER,
    description="Repeat the same creating request safely: the first response is returned for 24 h.",
)
