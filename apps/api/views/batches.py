"""The Batch API, as OpenAI's, for chat completions, completions and classifications."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView, cursor_page
from apps.api.idempotency import idempotent, json_fingerprint
from apps.api.serializers.common import ERRORS, IDEMPOTENCY_HEADER, cursor_parameters, list_of
from apps.core.errors import ActionError
from apps.jobs import actions, batches
from apps.jobs.models import Job, JobKind

BatchSerializer = inline_serializer(
    "Batch",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "endpoint": serializers.CharField(),
        "status": serializers.CharField(),
        "input_file_id": serializers.CharField(),
        "output_file_id": serializers.CharField(required=False, help_text="Omitted until set."),
        "error_file_id": serializers.CharField(required=False, help_text="Omitted until set."),
        "request_counts": serializers.DictField(),
        "usage": serializers.DictField(),
        "created_at": serializers.IntegerField(),
    },
)
BatchCreateSerializer = inline_serializer(
    "BatchCreate",
    {
        "input_file_id": serializers.CharField(),
        "endpoint": serializers.ChoiceField(choices=list(batches.ENDPOINTS)),
        "completion_window": serializers.ChoiceField(choices=["24h"]),
        "metadata": serializers.DictField(
            child=serializers.CharField(max_length=512, allow_blank=True), required=False, allow_null=True
        ),
    },
)


class BatchBase(ProjectAPIView):
    def batches(self) -> Any:
        return Job.objects.filter(project=self.project, kind=JobKind.BATCH)

    def get_batch(self, batch_id: str) -> Job:
        job: Job = self.get_scoped(self.batches(), batch_id, noun="batch")
        return job


class BatchListView(BatchBase):
    @extend_schema(
        operation_id="listBatches",
        parameters=cursor_parameters(100),
        responses={200: list_of(BatchSerializer, "BatchList"), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        return cursor_page(request, self.batches(), batches.batch_object, default_limit=20, max_limit=100)

    @extend_schema(
        operation_id="createBatch",
        request=BatchCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: BatchSerializer, **ERRORS},
    )
    @idempotent(json_fingerprint)
    def post(self, request: Request) -> Response:
        parsed = batches.parse(self.project, request.data)
        job = batches.submit(self.project, parsed, api_key=self.api_key, user=self.api_key.created_by)
        return Response(batches.batch_object(job))


class BatchDetailView(BatchBase):
    @extend_schema(operation_id="retrieveBatch", responses={200: BatchSerializer, **ERRORS})
    def get(self, request: Request, batch_id: str) -> Response:
        return Response(batches.batch_object(self.get_batch(batch_id)))


class BatchCancelView(BatchBase):
    @extend_schema(operation_id="cancelBatch", request=None, responses={200: BatchSerializer, **ERRORS})
    def post(self, request: Request, batch_id: str) -> Response:
        job = self.get_batch(batch_id)
        if job.is_finished:
            raise ActionError(f"Batch {batch_id} is already {batches.status_of(job)}.", param="id")
        actions.require_may_stop(self.api_key.created_by, job, "cancel")
        return Response(batches.batch_object(actions.cancel(job)))
