"""Model aliases (ours; docs/api.md, "Model aliases"): a project's names for its models, moved only
when an eval passes if their gate says so, with every move recorded and the last one undoable."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView
from apps.api.serializers.common import ERRORS
from apps.evals import aliases
from apps.registry.models import ModelAlias

AliasSerializer = inline_serializer(
    "ModelAlias",
    {
        "object": serializers.CharField(),
        "name": serializers.CharField(),
        "model": serializers.CharField(allow_null=True),
        "protected": serializers.BooleanField(),
        "gate": serializers.DictField(allow_null=True),
        "created_at": serializers.IntegerField(),
        "updated_at": serializers.IntegerField(),
    },
)
AliasBody = inline_serializer("ModelAliasRequest", {"name": serializers.CharField(required=False)})
AliasList = inline_serializer(
    "ModelAliasList", {"object": serializers.CharField(), "data": AliasSerializer.__class__(many=True)}
)


class AliasBase(ProjectAPIView):
    def get_alias(self, name: str) -> ModelAlias:
        found: ModelAlias = self.get_scoped(
            ModelAlias.objects.filter(project=self.project).select_related("model", "project__organization"),
            name,
            noun="alias",
            field="name",
        )
        return found


class AliasListView(AliasBase):
    @extend_schema(operation_id="listModelAliases", responses={200: AliasList, **ERRORS})
    def get(self, request: Request) -> Response:
        rows = ModelAlias.objects.filter(project=self.project).select_related("model")
        return Response({"object": "list", "data": [aliases.alias_object(alias) for alias in rows]})

    @extend_schema(
        operation_id="createModelAlias", request=AliasBody, responses={200: AliasSerializer, **ERRORS}
    )
    def post(self, request: Request) -> Response:
        alias = aliases.create(self.project, request.data, self.api_key.created_by)
        return Response(aliases.alias_object(alias))


class AliasDetailView(AliasBase):
    @extend_schema(operation_id="getModelAlias", responses={200: AliasSerializer, **ERRORS})
    def get(self, request: Request, name: str) -> Response:
        return Response(aliases.alias_object(self.get_alias(name)))

    @extend_schema(
        operation_id="updateModelAlias", request=AliasBody, responses={200: AliasSerializer, **ERRORS}
    )
    def post(self, request: Request, name: str) -> Response:
        alias = aliases.update(self.get_alias(name), request.data, self.api_key.created_by)
        return Response(aliases.alias_object(alias))

    @extend_schema(
        operation_id="deleteModelAlias",
        responses={
            200: inline_serializer("ModelAliasDeleted", {"deleted": serializers.BooleanField()}),
            **ERRORS,
        },
    )
    def delete(self, request: Request, name: str) -> Response:
        aliases.delete(self.get_alias(name), self.api_key.created_by)
        return Response({"object": "model.alias.deleted", "name": name, "deleted": True})


class AliasMoveView(AliasBase):
    @extend_schema(
        operation_id="moveModelAlias", request=AliasBody, responses={200: AliasSerializer, **ERRORS}
    )
    def post(self, request: Request, name: str) -> Response:
        alias = aliases.move(self.get_alias(name), request.data, self.api_key.created_by)
        return Response(aliases.alias_object(alias))


class AliasRollbackView(AliasBase):
    @extend_schema(
        operation_id="rollbackModelAlias", request=None, responses={200: AliasSerializer, **ERRORS}
    )
    def post(self, request: Request, name: str) -> Response:
        alias = aliases.rollback(self.get_alias(name), self.api_key.created_by)
        return Response(aliases.alias_object(alias))


class AliasMovesView(AliasBase):
    @extend_schema(
        operation_id="listModelAliasMoves",
        responses={200: inline_serializer("ModelAliasMoves", {"data": serializers.ListField()}), **ERRORS},
    )
    def get(self, request: Request, name: str) -> Response:
        moves = self.get_alias(name).moves.select_related("moved_by")
        return Response({"object": "list", "data": [aliases.move_object(move) for move in moves]})
