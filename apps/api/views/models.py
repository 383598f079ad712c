"""`/v1/models`: the catalog plus the caller's organization's fine-tuned models. Any key lists,
retrieves and calls them all; downloading and deleting are for the key's own project's models."""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime, time
from typing import Any

from django.http import FileResponse
from drf_spectacular.utils import OpenApiResponse, OpenApiTypes, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView
from apps.api.serializers.common import ERRORS, DeletedSerializer, ErrorSerializer
from apps.core.errors import ActionError
from apps.jobs.deletion import delete_fine_tuned_model
from apps.registry.actions import WeightsMissing, export_archive
from apps.registry.models import Model

logger = logging.getLogger(__name__)


class ModelObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
    task = serializers.CharField(help_text="Extension: classification or generation.")
    provider = serializers.CharField(help_text="Extension: local or openai.")
    fine_tunable = serializers.BooleanField(help_text="Extension.")
    context_length = serializers.IntegerField(help_text="Extension.")
    shutdown_date = serializers.IntegerField(
        allow_null=True, help_text="The day (Unix time, 00:00 UTC) the model stops answering; null if none."
    )
    labels = serializers.ListField(
        child=serializers.CharField(), help_text="Extension: a classifier's labels."
    )
    metrics = serializers.DictField(help_text="Extension: validation metrics of a fine-tuned model.")


ModelListSerializer = inline_serializer(
    "ModelList", {"object": serializers.CharField(), "data": ModelObjectSerializer(many=True)}
)


def _timestamp(day: date | None) -> int | None:
    return None if day is None else int(datetime.combine(day, time.min, tzinfo=UTC).timestamp())


def model_object(model: Model) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": model.owned_by,
        "task": model.task,
        "provider": model.provider,
        "fine_tunable": model.is_fine_tunable,
        "context_length": model.context_length,
        # The day (Unix time, 00:00 UTC) the model stops answering; null when none is planned.
        "shutdown_date": _timestamp(model.shutdown_date),
        "labels": list(model.labels or []),
        "metrics": {
            k: v for k, v in (model.metrics or {}).items() if k not in ("confusion_matrix", "per_class")
        },
    }


OTHER_PROJECT = (
    "The model '{name}' belongs to another project. An API key can download or delete only the models "
    "of its own project: use a key of the project whose job made it."
)
NO_PROJECT = (
    "The model '{name}' no longer belongs to a project (its project was deleted), so no API key can "
    "download or delete it. An owner or admin can delete it on the dashboard."
)


OTHER_PROJECT_RESPONSE = OpenApiResponse(
    ErrorSerializer, description="A fine-tuned model of another project, or no longer in a project"
)


class ModelsBase(ProjectAPIView):
    def models(self) -> Any:
        return Model.objects.visible_to(self.organization).select_related("organization")

    def get_model(self, name: str) -> Model:
        model = self.models().filter(name=name).first()
        if model is None:
            raise ActionError(
                f"The model '{name}' does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
                status=404,
            )
        return model

    def get_project_model(self, name: str) -> Model:
        """A model to download or delete: a fine-tuned one must belong to the key's project
        (catalog models go on, to be refused by what they cannot do)."""
        model = self.get_model(name)
        if not model.is_catalog and model.project_id != self.project.pk:
            # 403, not 404: the model is listed to this key, so its existence is no secret.
            refusal = NO_PROJECT if model.project_id is None else OTHER_PROJECT
            raise ActionError(refusal.format(name=name), code="permission_denied", param="model", status=403)
        return model


class ModelListView(ModelsBase):
    @extend_schema(operation_id="listModels", responses={200: ModelListSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [model_object(m) for m in self.models()]})


class ModelContentView(ModelsBase):
    @extend_schema(
        operation_id="downloadModel",
        responses={(200, "application/gzip"): OpenApiTypes.BINARY, 403: OTHER_PROJECT_RESPONSE, **ERRORS},
        description="Extension: the fine-tuned model as a transformers directory (safetensors, config, "
        "tokenizer, chat template) in a .tar.gz, loadable with `from_pretrained`.",
    )
    def get(self, request: Request, model: str) -> FileResponse:
        found = self.get_project_model(model)
        try:
            archive = export_archive(found)
        except WeightsMissing as exc:
            logger.error("model %s: weights missing under %s", found.name, found.artifact_key)
            raise ActionError(str(exc), code="weights_not_found", param="model", status=404) from None
        except ValueError as exc:
            raise ActionError(str(exc), param="model") from None
        filename = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-") + ".tar.gz"
        return FileResponse(archive, as_attachment=True, filename=filename, content_type="application/gzip")


class ModelDetailView(ModelsBase):
    @extend_schema(operation_id="retrieveModel", responses={200: ModelObjectSerializer, **ERRORS})
    def get(self, request: Request, model: str) -> Response:
        return Response(model_object(self.get_model(model)))

    @extend_schema(
        operation_id="deleteModel",
        responses={
            200: DeletedSerializer,
            403: OpenApiResponse(
                ErrorSerializer,
                description="A model of another project, or one the key's creator may not delete",
            ),
            409: OpenApiResponse(
                ErrorSerializer, description="The checkpoint an unfinished job resumes from"
            ),
            **ERRORS,
        },
    )
    def delete(self, request: Request, model: str) -> Response:
        delete_fine_tuned_model(self.api_key.created_by, self.get_project_model(model))
        return Response({"id": model, "object": "model", "deleted": True})
