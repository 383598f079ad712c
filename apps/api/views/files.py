"""The Files API, as OpenAI's: upload, list, retrieve, content, delete."""

from __future__ import annotations

import hashlib
from typing import Any

from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, OpenApiTypes, extend_schema
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView, cursor_page
from apps.api.errors import APIError
from apps.api.idempotency import idempotent
from apps.api.serializers.common import (
    ERRORS,
    IDEMPOTENCY_HEADER,
    DeletedSerializer,
    ErrorSerializer,
    cursor_parameters,
    list_of,
)
from apps.api.serializers.files import FileObjectSerializer, FileUploadSerializer, file_object
from apps.jobs import deletion
from apps.projects import actions
from apps.projects.models import File
from apps.projects.uploads import UploadTooLarge


def upload_fingerprint(view: Any, request: Request) -> str:
    """Hash of the form fields and the file's bytes, read from the spooled upload in chunks."""
    digest = hashlib.sha256(f"{request.method} {request.path}".encode())
    data: Any = request.data
    for key in sorted(data.keys()):
        if key != "file":
            digest.update(f"\n{key}={data.get(key)}".encode())
    upload = request.FILES.get("file")
    if upload is not None:
        digest.update(f"\nfile={upload.name}:{upload.size}\n".encode())
        for chunk in upload.chunks():
            digest.update(chunk)
        upload.seek(0)
    return digest.hexdigest()


class FileListView(ProjectAPIView):
    parser_classes = [MultiPartParser, FormParser]

    def files(self) -> Any:
        return File.objects.filter(project=self.project)

    @extend_schema(
        operation_id="listFiles",
        parameters=[
            OpenApiParameter("purpose", str, description="Only files with this purpose."),
            OpenApiParameter(
                "order", str, enum=["asc", "desc"], description="By creation time; default desc."
            ),
            *cursor_parameters(10_000),
        ],
        responses={200: list_of(FileObjectSerializer, "FileList", first_last=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        files = self.files()
        if purpose := request.query_params.get("purpose"):
            files = files.filter(purpose=purpose)
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise APIError("order must be 'asc' or 'desc'.", param="order")
        return cursor_page(
            request,
            files,
            file_object,
            default_limit=10_000,
            max_limit=10_000,
            ascending=order == "asc",
            first_last=True,
        )

    @extend_schema(
        operation_id="createFile",
        request={"multipart/form-data": FileUploadSerializer},
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: FileObjectSerializer, 413: OpenApiResponse(description="File too large"), **ERRORS},
        description="Upload a dataset. Validation runs at once; poll until `status` is processed or error.",
    )
    @idempotent(upload_fingerprint)
    def post(self, request: Request) -> Response:
        try:
            upload = request.FILES.get("file")
        except UploadTooLarge as exc:
            raise APIError(str(exc), status=413, code="file_too_large", param="file") from None
        data: Any = request.data
        for field in ("purpose", "column_mapping"):
            # A form field sent twice is ambiguous: refuse it rather than pick one of the values.
            if hasattr(data, "getlist") and len(data.getlist(field)) > 1:  # a form has parts; {} has none
                raise APIError(f"{field} was given more than once; give it once.", param=field)
        file = actions.upload_file(
            self.project,
            upload,
            data.get("purpose"),
            user=self.api_key.created_by,
            api_key=self.api_key,
            column_mapping=data.get("column_mapping"),
        )
        return Response(file_object(file))

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, UploadTooLarge):
            exc = APIError(str(exc), status=413, code="file_too_large", param="file")
        return super().handle_exception(exc)


class FileDetailView(ProjectAPIView):
    @extend_schema(operation_id="retrieveFile", responses={200: FileObjectSerializer, **ERRORS})
    def get(self, request: Request, file_id: str) -> Response:
        file = self.get_scoped(File.objects.filter(project=self.project), file_id, noun="file")
        return Response(file_object(file))

    @extend_schema(
        operation_id="deleteFile",
        responses={
            200: DeletedSerializer,
            403: OpenApiResponse(ErrorSerializer, description="A file the key's creator may not delete"),
            409: OpenApiResponse(ErrorSerializer, description="A file an unfinished job or batch reads"),
            **ERRORS,
        },
    )
    def delete(self, request: Request, file_id: str) -> Response:
        file = self.get_scoped(File.objects.filter(project=self.project), file_id, noun="file")
        deletion.delete_file(self.api_key.created_by, file)
        return Response({"id": file_id, "object": "file", "deleted": True})


class FileContentView(ProjectAPIView):
    @extend_schema(
        operation_id="downloadFile",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **ERRORS},
    )
    def get(self, request: Request, file_id: str) -> FileResponse:
        file = self.get_scoped(File.objects.filter(project=self.project), file_id, noun="file")
        response = FileResponse(
            file.content.open("rb"),
            as_attachment=True,
            filename=file.filename,
            content_type="application/octet-stream",
        )
        return response
