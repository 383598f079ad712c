"""Webhook endpoints, as OpenAI's `/v1/webhook_endpoints` (the SDK's `client.webhooks`): create,
list, retrieve, update, delete, rotate the secret, send a test event; and the event types."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView, cursor_page
from apps.api.serializers.common import (
    ERRORS,
    DeletedSerializer,
    ErrorSerializer,
    cursor_parameters,
    list_of,
)
from apps.core.errors import ActionError
from apps.webhooks import actions
from apps.webhooks.models import EVENT_TYPES, WebhookEndpoint

_ENDPOINT_FIELDS: dict[str, serializers.Field] = {
    "id": serializers.CharField(),
    "object": serializers.CharField(),
    "name": serializers.CharField(),
    "url": serializers.CharField(),
    "event_types": serializers.ListField(child=serializers.CharField()),
    "created_at": serializers.IntegerField(),
    "updated_at": serializers.IntegerField(),
    "signing_secret_hint": serializers.CharField(),
    "enabled": serializers.BooleanField(),
    "disabled_reason": serializers.CharField(required=False),
}
EndpointSerializer = inline_serializer("WebhookEndpoint", _ENDPOINT_FIELDS)
EndpointWithSecretSerializer = inline_serializer(
    "WebhookEndpointWithSecret", {**_ENDPOINT_FIELDS, "signing_secret": serializers.CharField()}
)
_EVENT_TYPES = serializers.ListField(child=serializers.ChoiceField(choices=list(EVENT_TYPES)))
CreateSerializer = inline_serializer(
    "WebhookEndpointCreate",
    {
        "name": serializers.CharField(max_length=200),
        "url": serializers.CharField(),
        "event_types": _EVENT_TYPES,
    },
)
UpdateSerializer = inline_serializer(
    "WebhookEndpointUpdate",
    {
        "name": serializers.CharField(required=False, max_length=200),
        "url": serializers.CharField(required=False),
        "event_types": serializers.ListField(
            child=serializers.ChoiceField(choices=list(EVENT_TYPES)), required=False
        ),
        "enabled": serializers.BooleanField(required=False),
    },
)
RotateSerializer = inline_serializer(
    "WebhookEndpointRotateSecret",
    {"keep_old_secret_active_for_24_hours": serializers.BooleanField(required=False)},
)
TestSerializer = inline_serializer(
    "WebhookEndpointTest", {"event_type": serializers.ChoiceField(choices=list(EVENT_TYPES))}
)
TestResultSerializer = inline_serializer(
    "WebhookEndpointTestResult",
    {
        "object": serializers.CharField(),
        "webhook_endpoint_id": serializers.CharField(),
        "event_type": serializers.CharField(),
        "status_code": serializers.IntegerField(),
        "success": serializers.BooleanField(),
    },
)
EventTypesSerializer = inline_serializer(
    "WebhookEventTypeList",
    {"object": serializers.CharField(), "data": serializers.ListField(child=serializers.CharField())},
)
MANAGERS_ONLY = {403: OpenApiResponse(ErrorSerializer, description="Only owners and admins manage endpoints")}


def _body(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ActionError("The request body must be a JSON object.")
    unknown = sorted(set(request.data) - set(allowed))
    if unknown:
        raise ActionError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    return dict(request.data)


class WebhookBase(ProjectAPIView):
    def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        queryset = WebhookEndpoint.objects.filter(project=self.project).select_related(
            "project__organization"
        )
        endpoint: WebhookEndpoint = self.get_scoped(queryset, endpoint_id, noun="webhook endpoint")
        return endpoint


class WebhookEndpointListView(WebhookBase):
    @extend_schema(
        operation_id="listWebhookEndpoints",
        parameters=cursor_parameters(100),
        responses={200: list_of(EndpointSerializer, "WebhookEndpointList"), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        endpoints = WebhookEndpoint.objects.filter(project=self.project)
        return cursor_page(request, endpoints, actions.endpoint_object, default_limit=20, max_limit=100)

    @extend_schema(
        operation_id="createWebhookEndpoint",
        request=CreateSerializer,
        responses={200: EndpointWithSecretSerializer, **ERRORS, **MANAGERS_ONLY},
    )
    # No Idempotency-Key replay here: a replayed answer would hand the signing secret to whoever
    # repeats the request, before their role is checked.
    def post(self, request: Request) -> Response:
        body = _body(request, ("name", "url", "event_types"))
        endpoint, secret = actions.create_endpoint(
            self.project,
            self.api_key.created_by,
            name=body.get("name"),
            url=body.get("url"),
            event_types=body.get("event_types"),
        )
        return Response(actions.endpoint_object(endpoint, secret))


class WebhookEndpointDetailView(WebhookBase):
    @extend_schema(operation_id="retrieveWebhookEndpoint", responses={200: EndpointSerializer, **ERRORS})
    def get(self, request: Request, endpoint_id: str) -> Response:
        return Response(actions.endpoint_object(self.get_endpoint(endpoint_id)))

    @extend_schema(
        operation_id="updateWebhookEndpoint",
        request=UpdateSerializer,
        responses={200: EndpointSerializer, **ERRORS, **MANAGERS_ONLY},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = self.get_endpoint(endpoint_id)
        changes = _body(request, ("name", "url", "event_types", "enabled"))
        return Response(
            actions.endpoint_object(actions.update_endpoint(endpoint, self.api_key.created_by, changes))
        )

    @extend_schema(
        operation_id="deleteWebhookEndpoint", responses={200: DeletedSerializer, **ERRORS, **MANAGERS_ONLY}
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        endpoint = self.get_endpoint(endpoint_id)
        actions.delete_endpoint(endpoint, self.api_key.created_by)
        return Response({"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True})


class WebhookEndpointRotateView(WebhookBase):
    @extend_schema(
        operation_id="rotateWebhookEndpointSecret",
        request=RotateSerializer,
        responses={200: EndpointWithSecretSerializer, **ERRORS, **MANAGERS_ONLY},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = self.get_endpoint(endpoint_id)
        keep = _body(request, ("keep_old_secret_active_for_24_hours",)).get(
            "keep_old_secret_active_for_24_hours", False
        )
        if not isinstance(keep, bool):
            raise ActionError(
                "keep_old_secret_active_for_24_hours must be true or false.",
                param="keep_old_secret_active_for_24_hours",
            )
        secret = actions.rotate_secret(endpoint, self.api_key.created_by, keep_old=keep)
        return Response(actions.endpoint_object(endpoint, secret))


class WebhookEndpointTestView(WebhookBase):
    @extend_schema(
        operation_id="testWebhookEndpoint",
        request=TestSerializer,
        responses={200: TestResultSerializer, **ERRORS, **MANAGERS_ONLY},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = self.get_endpoint(endpoint_id)
        event_type = _body(request, ("event_type",)).get("event_type")
        attempt = actions.send_test(endpoint, self.api_key.created_by, event_type)
        if attempt.status_code is None:
            raise ActionError(
                f"The test event could not be delivered to {endpoint.url}: {attempt.error}.",
                code="webhook_unreachable",
            )
        return Response(
            {
                "object": "webhook_endpoint.test",
                "webhook_endpoint_id": endpoint.public_id,
                "event_type": event_type,
                "status_code": attempt.status_code,
                "success": True,
            }
        )


class WebhookEventTypesView(ProjectAPIView):
    @extend_schema(operation_id="listWebhookEventTypes", responses={200: EventTypesSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": list(EVENT_TYPES)})
