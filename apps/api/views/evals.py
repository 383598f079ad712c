"""The Evals API, as OpenAI's: evals, their runs and each run's output items; and the fine-tuning
graders' `run` and `validate` (docs/api.md, "Evals")."""

from __future__ import annotations

import time
from typing import Any, cast

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView, cursor_page
from apps.api.errors import APIError
from apps.api.idempotency import idempotent, json_fingerprint
from apps.api.serializers.common import ERRORS, IDEMPOTENCY_HEADER, cursor_parameters, list_of
from apps.core.errors import ActionError
from apps.evals import actions, parsing
from apps.evals.models import Eval, EvalOutputItem, EvalRun
from apps.evals.objects import eval_object, output_item_object, run_object
from apps.jobs import admission, graders, inference, serving
from apps.jobs.models import JobStatus

EvalSerializer = inline_serializer(
    "Eval",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "name": serializers.CharField(),
        "data_source_config": serializers.DictField(),
        "testing_criteria": serializers.ListField(child=serializers.DictField()),
        "created_at": serializers.IntegerField(),
        "metadata": serializers.DictField(),
    },
)
EvalRunSerializer = inline_serializer(
    "EvalRun",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "eval_id": serializers.CharField(),
        "status": serializers.CharField(),
        "result_counts": serializers.DictField(),
        "per_testing_criteria_results": serializers.ListField(child=serializers.DictField()),
        "data_source": serializers.DictField(),
    },
)
OutputItemSerializer = inline_serializer(
    "EvalRunOutputItem",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "status": serializers.CharField(),
        "results": serializers.ListField(child=serializers.DictField()),
    },
)
GENERIC_BODY = inline_serializer(
    "EvalRequest", {"name": serializers.CharField(required=False, allow_blank=True, max_length=200)}
)
GraderResult = inline_serializer(
    "RunGraderResponse",
    {
        "reward": serializers.FloatField(),
        "metadata": serializers.DictField(),
        "sub_rewards": serializers.DictField(),
        "model_grader_token_usage_per_model": serializers.DictField(),
    },
)
GraderValidated = inline_serializer("ValidateGraderResponse", {"grader": serializers.DictField()})
ORDER = OpenApiParameter("order", {"type": "string", "enum": ["asc", "desc"]}, description="Default asc.")

RUN_STATUSES = {
    "queued": [JobStatus.QUEUED, JobStatus.VALIDATING_FILES],
    "in_progress": [JobStatus.RUNNING],
    "completed": [JobStatus.SUCCEEDED],
    "failed": [JobStatus.FAILED],
    "canceled": [JobStatus.CANCELLED],
}
ITEM_STATUSES = ("pass", "fail", "error")


def _ascending(request: Request) -> bool:
    order = request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise APIError("order must be 'asc' or 'desc'.", param="order")
    return order == "asc"


def _choice(request: Request, name: str, choices: Any) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in choices:
        raise APIError(f"{name} must be one of {', '.join(choices)}.", param=name)
    return value


class EvalBase(ProjectAPIView):
    def get_eval(self, eval_id: str) -> Eval:
        found: Eval = self.get_scoped(Eval.objects.filter(project=self.project), eval_id, noun="eval")
        return found

    def get_run(self, eval: Eval, run_id: str) -> EvalRun:
        runs = EvalRun.objects.filter(eval=eval).select_related("job", "eval__project")
        found: EvalRun = self.get_scoped(runs, run_id, noun="eval run", field="job__public_id")
        return found


class EvalListView(EvalBase):
    @extend_schema(
        operation_id="listEvals",
        parameters=[*cursor_parameters(100), ORDER],
        responses={200: list_of(EvalSerializer, "EvalList", first_last=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        order_by = _choice(request, "order_by", ("created_at", "updated_at"))
        del order_by  # both orders are creation order: an eval's config never changes
        return cursor_page(
            request,
            Eval.objects.filter(project=self.project),
            eval_object,
            ascending=_ascending(request),
            first_last=True,
        )

    @extend_schema(
        operation_id="createEval",
        request=GENERIC_BODY,
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: EvalSerializer, **ERRORS},
    )
    @idempotent(json_fingerprint)
    def post(self, request: Request) -> Response:
        parsed = parsing.parse_eval(self.project, request.data)
        return Response(eval_object(actions.create_eval(self.project, parsed, self.api_key.created_by)))


class EvalDetailView(EvalBase):
    @extend_schema(operation_id="getEval", responses={200: EvalSerializer, **ERRORS})
    def get(self, request: Request, eval_id: str) -> Response:
        return Response(eval_object(self.get_eval(eval_id)))

    @extend_schema(operation_id="updateEval", request=GENERIC_BODY, responses={200: EvalSerializer, **ERRORS})
    def post(self, request: Request, eval_id: str) -> Response:
        eval = self.get_eval(eval_id)
        return Response(eval_object(actions.update_eval(eval, parsing.parse_eval_update(request.data))))

    @extend_schema(
        operation_id="deleteEval",
        responses={200: inline_serializer("EvalDeleted", {"deleted": serializers.BooleanField()}), **ERRORS},
    )
    def delete(self, request: Request, eval_id: str) -> Response:
        eval = self.get_eval(eval_id)
        actions.delete_eval(eval, self.api_key.created_by)
        return Response({"object": "eval.deleted", "deleted": True, "eval_id": eval_id})


class EvalRunListView(EvalBase):
    @extend_schema(
        operation_id="getEvalRuns",
        parameters=[*cursor_parameters(100), ORDER, OpenApiParameter("status", str)],
        responses={200: list_of(EvalRunSerializer, "EvalRunList", first_last=True), **ERRORS},
    )
    def get(self, request: Request, eval_id: str) -> Response:
        eval = self.get_eval(eval_id)
        runs = EvalRun.objects.filter(eval=eval).select_related("job", "eval__project")
        status = _choice(request, "status", tuple(RUN_STATUSES))
        if status:
            runs = runs.filter(job__status__in=RUN_STATUSES[status])
        return cursor_page(
            request,
            runs,
            run_object,
            ascending=_ascending(request),
            first_last=True,
            id_field="job__public_id",
        )

    @extend_schema(
        operation_id="createEvalRun",
        request=GENERIC_BODY,
        parameters=[IDEMPOTENCY_HEADER],
        responses={200: EvalRunSerializer, **ERRORS},
    )
    @idempotent(json_fingerprint)
    def post(self, request: Request, eval_id: str) -> Response:
        eval = self.get_eval(eval_id)
        body = request.data if isinstance(request.data, dict) else None
        # `max_cost` is ours (micro-dollars, as a fine-tune's): the run stops before passing it.
        rest = {k: v for k, v in body.items() if k != "max_cost"} if body is not None else request.data
        parsed = parsing.parse_run(self.project, eval.data_source_config["item_schema"], rest)
        run = actions.submit_run(eval, parsed, body or {}, api_key=self.api_key, user=self.api_key.created_by)
        return Response(run_object(run))


class EvalRunDetailView(EvalBase):
    @extend_schema(operation_id="getEvalRun", responses={200: EvalRunSerializer, **ERRORS})
    def get(self, request: Request, eval_id: str, run_id: str) -> Response:
        return Response(run_object(self.get_run(self.get_eval(eval_id), run_id)))

    @extend_schema(operation_id="cancelEvalRun", request=None, responses={200: EvalRunSerializer, **ERRORS})
    def post(self, request: Request, eval_id: str, run_id: str) -> Response:
        """OpenAI's SDK cancels a run with a POST to the run itself."""
        return _cancel(self, eval_id, run_id)

    @extend_schema(
        operation_id="deleteEvalRun",
        responses={
            200: inline_serializer("EvalRunDeleted", {"deleted": serializers.BooleanField()}),
            **ERRORS,
        },
    )
    def delete(self, request: Request, eval_id: str, run_id: str) -> Response:
        run = self.get_run(self.get_eval(eval_id), run_id)
        actions.delete_run(run, self.api_key.created_by)
        return Response({"object": "eval.run.deleted", "deleted": True, "run_id": run_id})


def _cancel(view: EvalBase, eval_id: str, run_id: str) -> Response:
    run = view.get_run(view.get_eval(eval_id), run_id)
    run.job = actions.cancel_run(run, view.api_key.created_by)
    return Response(run_object(run))


class EvalRunCancelView(EvalBase):
    @extend_schema(
        operation_id="cancelEvalRunExplicit", request=None, responses={200: EvalRunSerializer, **ERRORS}
    )
    def post(self, request: Request, eval_id: str, run_id: str) -> Response:
        return _cancel(self, eval_id, run_id)


class OutputItemListView(EvalBase):
    @extend_schema(
        operation_id="getEvalRunOutputItems",
        parameters=[*cursor_parameters(100), ORDER, OpenApiParameter("status", str)],
        responses={200: list_of(OutputItemSerializer, "EvalRunOutputItemList", first_last=True), **ERRORS},
    )
    def get(self, request: Request, eval_id: str, run_id: str) -> Response:
        run = self.get_run(self.get_eval(eval_id), run_id)
        items = EvalOutputItem.objects.filter(run=run)
        status = _choice(request, "status", ITEM_STATUSES)
        if status:
            items = items.filter(status=status)
        return cursor_page(
            request,
            items,
            lambda item: output_item_object(item, run),
            ascending=_ascending(request),
            first_last=True,
        )


class OutputItemDetailView(EvalBase):
    @extend_schema(operation_id="getEvalRunOutputItem", responses={200: OutputItemSerializer, **ERRORS})
    def get(self, request: Request, eval_id: str, run_id: str, output_item_id: str) -> Response:
        run = self.get_run(self.get_eval(eval_id), run_id)
        item = self.get_scoped(EvalOutputItem.objects.filter(run=run), output_item_id, noun="output item")
        return Response(output_item_object(item, run))


# --- Fine-tuning graders ---------------------------------------------------------------------------
def _grader(project: Any, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    if body.get("grader") is None:
        raise ActionError("Missing required parameter: 'grader'.", param="grader")
    grader = graders.validate_grader(body["grader"], param="grader", in_eval=False)
    parsing.check_grader_models(project, grader, "grader")
    return grader


class GraderValidateView(ProjectAPIView):
    @extend_schema(
        operation_id="validateGrader",
        request=GENERIC_BODY,
        responses={200: GraderValidated, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        for key in request.data if isinstance(request.data, dict) else ():
            if key != "grader":
                raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
        return Response({"grader": _grader(self.project, request.data)})


class GraderRunView(ProjectAPIView):
    @extend_schema(operation_id="runGrader", request=GENERIC_BODY, responses={200: GraderResult, **ERRORS})
    def post(self, request: Request) -> Response:
        grader = _grader(self.project, request.data)  # refuses a body that is not an object
        body = cast(dict[str, Any], request.data)
        for key in body:
            if key not in ("grader", "item", "model_sample"):
                raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
        sample_text = body.get("model_sample")
        if not isinstance(sample_text, str):
            raise ActionError(
                "model_sample must be a string: the model's output to grade.", param="model_sample"
            )
        item = body.get("item", {})
        if not isinstance(item, dict):
            raise ActionError("item must be an object.", param="item")
        # Grading costs the web process's time even without a judge: it counts as a request.
        from apps.billing import quotas

        subscription = quotas.check_quota(self.organization)
        quotas.check_rate(subscription, self.api_key, max(len(sample_text) // 4, 1))
        sample: dict[str, Any] = {"output_text": sample_text, "choices": [], "model": ""}
        started = time.monotonic()
        grade = graders.grade(grader, item, sample, judge=self.judge, embed=self.embed)
        elapsed = time.monotonic() - started
        tokens: dict[str, dict[str, int]] = {}
        for reply in grade.usage:
            row = tokens.setdefault(
                reply.model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            )
            row["prompt_tokens"] += reply.prompt_tokens
            row["completion_tokens"] += reply.completion_tokens
            row["total_tokens"] += reply.prompt_tokens + reply.completion_tokens
        error = grade.error or ""
        errors = {
            "formula_parse_error": False,
            "sample_parse_error": False,
            "truncated_observation_error": False,
            "unresponsive_reward_error": False,
            "invalid_variable_error": "variable" in error.lower(),
            "other_error": bool(error) and "variable" not in error.lower(),
            "python_grader_server_error": False,
            "python_grader_server_error_type": None,
            "python_grader_runtime_error": False,
            "python_grader_runtime_error_details": None,
            "model_grader_server_error": False,
            "model_grader_refusal_error": False,
            "model_grader_parse_error": False,
            "model_grader_server_error_details": error or None,
        }
        return Response(
            {
                "reward": grade.score,
                "metadata": {
                    "name": grader["name"],
                    "type": grader["type"],
                    "errors": errors,
                    "execution_time": round(elapsed, 3),
                    "scores": grade.sub_scores or {grader["name"]: grade.score},
                    "token_usage": sum(row["total_tokens"] for row in tokens.values()) or None,
                    "sampled_model_name": grade.usage[-1].model if grade.usage else None,
                },
                "sub_rewards": grade.sub_scores,
                "model_grader_token_usage_per_model": tokens,
            }
        )

    def _call(self, body: dict[str, Any], parser: Any) -> dict[str, Any]:
        """A judge's or the embedding model's call takes the one inference path: admitted, billed and
        limited as any request of this API key."""
        admitted = admission.admit_inference(
            self.project, parser, body, api_key=self.api_key, user=self.api_key.created_by
        )
        return serving.answer(admitted)

    def judge(
        self,
        model: str,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        sampling: dict[str, Any],
    ) -> graders.JudgeReply:
        body: dict[str, Any] = {"model": model, "messages": messages, **sampling}
        if response_format is not None:
            body["response_format"] = response_format
        response = self._call(body, inference.parse_chat)
        usage = response.get("usage") or {}
        content = ((response.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        return graders.JudgeReply(
            text=content,
            model=model,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )

    def embed(self, texts: list[str]) -> list[list[float]]:
        from django.conf import settings

        response = self._call(
            {"model": settings.EVAL_EMBEDDING_MODEL, "input": texts}, inference.parse_embedding
        )
        return [row["embedding"] for row in response.get("data") or []]
