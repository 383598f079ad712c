"""Import from OpenAI (ours; docs/api.md, "Import from OpenAI"): the organization's OpenAI
fine-tuning jobs listed, and chosen ones recreated here with their files."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView
from apps.api.serializers.common import ERRORS
from apps.evals import openai_import

ImportBody = inline_serializer(
    "OpenAIImportRequest",
    {"jobs": serializers.ListField(child=serializers.CharField()), "base_model": serializers.CharField()},
)
FilesBody = inline_serializer(
    "OpenAIFilesCopyRequest", {"files": serializers.ListField(child=serializers.CharField())}
)
ImportResult = inline_serializer(
    "OpenAIImport",
    {"object": serializers.CharField(), "data": serializers.ListField(child=serializers.DictField())},
)


class OpenAIJobsView(ProjectAPIView):
    @extend_schema(operation_id="listOpenAIFineTuningJobs", responses={200: ImportResult, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": openai_import.list_jobs(self.project)})


class OpenAIImportView(ProjectAPIView):
    @extend_schema(
        operation_id="importFromOpenAI", request=ImportBody, responses={200: ImportResult, **ERRORS}
    )
    def post(self, request: Request) -> Response:
        result = openai_import.import_jobs(
            self.project, request.data, api_key=self.api_key, user=self.api_key.created_by
        )
        return Response(result)


class OpenAIFilesView(ProjectAPIView):
    @extend_schema(operation_id="listOpenAIFiles", responses={200: ImportResult, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": openai_import.list_files(self.project)})

    @extend_schema(operation_id="copyOpenAIFiles", request=FilesBody, responses={200: ImportResult, **ERRORS})
    def post(self, request: Request) -> Response:
        result = openai_import.copy_files(
            self.project, request.data, api_key=self.api_key, user=self.api_key.created_by
        )
        return Response(result)
