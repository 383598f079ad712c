"""The fine-tuning API, as OpenAI's, plus `POST /v1/fine_tuning/jobs/estimate`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView, cursor_page
from apps.api.idempotency import idempotent, json_fingerprint
from apps.api.serializers.common import ERRORS, IDEMPOTENCY_HEADER, cursor_parameters, list_of
from apps.api.serializers.jobs import (
    CheckpointSerializer,
    EstimateSerializer,
    FineTuningJobCreateSerializer,
    FineTuningJobSerializer,
    JobEventSerializer,
    checkpoint_object,
    fine_tuning_job,
    job_event,
)
from apps.core.errors import ActionError
from apps.evals import checkpoints
from apps.jobs import actions, fine_tuning
from apps.jobs.models import Job, JobKind, JobStatus


class FineTuningBase(ProjectAPIView):
    def jobs(self) -> Any:
        return Job.objects.filter(project=self.project, kind=JobKind.FINE_TUNE).select_related(
            "organization", "training_file", "validation_file", "fine_tuned_model"
        )

    def get_job(self, job_id: str) -> Job:
        job: Job = self.get_scoped(self.jobs(), job_id, noun="fine-tuning job")
        return job


class FineTuningJobListView(FineTuningBase):
    @extend_schema(
        operation_id="listFineTuningJobs",
        parameters=[
            *cursor_parameters(100),
            OpenApiParameter("metadata", str, description="metadata[key]=value filters (repeatable)."),
        ],
        responses={200: list_of(FineTuningJobSerializer, "FineTuningJobList"), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        jobs = self.jobs()
        for name, value in request.query_params.items():
            if name.startswith("metadata[") and name.endswith("]"):
                # Containment, not a lookup spelled from the name: `metadata[isnull]` is a key too.
                jobs = jobs.filter(metadata__contains={name[9:-1]: value})
        return cursor_page(request, jobs, fine_tuning_job, default_limit=20, max_limit=100)

    @extend_schema(
        operation_id="createFineTuningJob",
        request=FineTuningJobCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: FineTuningJobSerializer, **ERRORS},
    )
    @idempotent(json_fingerprint)
    def post(self, request: Request) -> Response:
        # A max_cost below the estimate is allowed: the job stops when its next step would pass it.
        parsed = fine_tuning.parse(self.project, request.data, checkpoint_eval=checkpoints.snapshot)
        job = fine_tuning.submit(
            parsed, project=self.project, api_key=self.api_key, user=self.api_key.created_by
        )
        return Response(fine_tuning_job(self.get_job(job.public_id)))


class FineTuningEstimateView(FineTuningBase):
    @extend_schema(
        operation_id="estimateFineTuningJob",
        request=FineTuningJobCreateSerializer,
        responses={200: EstimateSerializer, **ERRORS},
        description="Extension: what a fine-tuning job would cost and how long it would take. Starts nothing.",
    )
    def post(self, request: Request) -> Response:
        parsed = fine_tuning.parse(self.project, request.data, checkpoint_eval=checkpoints.snapshot)
        return Response(fine_tuning.estimate(parsed))


class FineTuningJobDetailView(FineTuningBase):
    @extend_schema(operation_id="retrieveFineTuningJob", responses={200: FineTuningJobSerializer, **ERRORS})
    def get(self, request: Request, job_id: str) -> Response:
        return Response(fine_tuning_job(self.get_job(job_id)))


class FineTuningJobCancelView(FineTuningBase):
    @extend_schema(
        operation_id="cancelFineTuningJob", request=None, responses={200: FineTuningJobSerializer, **ERRORS}
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = self.get_job(job_id)
        if job.is_finished:
            # 400, not 409: the SDK retries 409s, and this will never succeed.
            raise ActionError(f"Job {job_id} has already {job.status}; it cannot be cancelled.", param="id")
        actions.require_may_stop(self.api_key.created_by, job, "cancel")
        actions.cancel(job)
        return Response(fine_tuning_job(self.get_job(job_id)))


class FineTuningJobPauseView(FineTuningBase):
    @extend_schema(
        operation_id="pauseFineTuningJob", request=None, responses={200: FineTuningJobSerializer, **ERRORS}
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = self.get_job(job_id)
        actions.require_may_stop(self.api_key.created_by, job, "pause")
        if not actions.request_pause(job):
            job.refresh_from_db(fields=["status", "stop_requested"])
            if job.status == JobStatus.RUNNING and job.stop_requested == actions.STOP_CANCEL:
                raise ActionError(f"Job {job_id} is being cancelled; it cannot be paused.", param="id")
            raise ActionError(
                f"Only a running job can be paused; {job_id} is {job.shown_status}.", param="id"
            )
        return Response(fine_tuning_job(self.get_job(job_id)))


class FineTuningJobResumeView(FineTuningBase):
    @extend_schema(
        operation_id="resumeFineTuningJob", request=None, responses={200: FineTuningJobSerializer, **ERRORS}
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = self.get_job(job_id)
        if job.is_pausing:
            # Its worker is saving the checkpoint a resume would start from; until the attempt has
            # ended, a second worker must not start on the same job.
            raise ActionError(
                f"Job {job_id} is pausing; resume it once its checkpoint is saved and it is paused.",
                param="id",
            )
        if job.status != JobStatus.PAUSED or not fine_tuning.resume(job):
            raise ActionError(
                f"Only a paused job can be resumed; {job_id} is {job.shown_status}.", param="id"
            )
        return Response(fine_tuning_job(self.get_job(job_id)))


class FineTuningEventsView(FineTuningBase):
    @extend_schema(
        operation_id="listFineTuningEvents",
        parameters=cursor_parameters(1000),
        responses={200: list_of(JobEventSerializer, "FineTuningJobEventList"), **ERRORS},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = self.get_job(job_id)
        return cursor_page(request, job.events.all(), job_event, default_limit=20, max_limit=1000)


class FineTuningCheckpointsView(FineTuningBase):
    @extend_schema(
        operation_id="listFineTuningCheckpoints",
        parameters=cursor_parameters(100),
        responses={200: list_of(CheckpointSerializer, "FineTuningCheckpointList", first_last=True), **ERRORS},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = self.get_job(job_id)
        return cursor_page(
            request,
            job.checkpoints.all(),
            lambda c: checkpoint_object(c, job),
            default_limit=10,
            max_limit=100,
            first_last=True,
        )
