"""The Evals API's objects, as OpenAI's: `eval`, `eval.run` and `eval.run.output_item`."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse

from apps.evals.actions import run_status
from apps.evals.models import Eval, EvalOutputItem, EvalRun
from apps.evals.parsing import shown_config


def _ts(value: Any) -> int:
    return int(value.timestamp())


def eval_object(eval: Eval) -> dict[str, Any]:
    return {
        "object": "eval",
        "id": eval.public_id,
        "name": eval.name,
        "data_source_config": shown_config(eval.data_source_config),
        "testing_criteria": eval.testing_criteria,
        "created_at": _ts(eval.created_at),
        "metadata": eval.metadata or {},
    }


def run_object(run: EvalRun) -> dict[str, Any]:
    job = run.job
    result = job.result or {}
    progress = job.progress or {}
    error = None
    if job.error:
        error = {"code": job.error.get("code") or "error", "message": job.error.get("message") or ""}
    counts = result.get("result_counts") or progress.get("result_counts") or {}
    return {
        "object": "eval.run",
        "id": job.public_id,
        "eval_id": run.eval.public_id,
        "name": run.name,
        "status": run_status(job),
        "model": job.model_name or None,
        "created_at": _ts(job.created_at),
        "report_url": settings.SITE_URL
        + reverse("dashboard:eval_run", args=[run.eval.project.public_id, run.eval.public_id, job.public_id]),
        # While a run goes, its progress counts the graded items without a total: it is their sum.
        "result_counts": {
            **{key: int(counts.get(key, 0)) for key in ("errored", "failed", "passed")},
            "total": int(
                counts.get("total", sum(int(counts.get(k, 0)) for k in ("errored", "failed", "passed")))
            ),
        },
        "per_model_usage": result.get("per_model_usage") or progress.get("per_model_usage") or [],
        "per_testing_criteria_results": result.get("per_testing_criteria_results")
        or progress.get("per_testing_criteria_results")
        or [],
        "data_source": shown_data_source(job.request.get("data_source") or {}),
        "metadata": job.metadata or {},
        "error": error,
    }


def shown_data_source(data_source: dict[str, Any]) -> dict[str, Any]:
    """The run's data source as OpenAI shows it: template messages as typed eval items
    (`{"type": "message", "role", "content": {"type": "input_text", "text"}}`), as its examples do;
    a bare `{role, content}` would match two of the spec's message shapes at once."""
    spec = data_source.get("input_messages")
    if not spec or spec.get("type") != "template":
        return data_source
    template = [
        {"type": "message", "role": m["role"], "content": {"type": "input_text", "text": m["content"]}}
        for m in spec["template"]
    ]
    return {**data_source, "input_messages": {"type": "template", "template": template}}


def output_item_object(item: EvalOutputItem, run: EvalRun) -> dict[str, Any]:
    return {
        "object": "eval.run.output_item",
        "id": item.public_id,
        "run_id": run.job.public_id,
        "eval_id": run.eval.public_id,
        "created_at": _ts(item.created_at),
        "status": item.status,
        "datasource_item_id": item.datasource_item_id,
        "datasource_item": item.datasource_item,
        "results": item.results,
        "sample": item.sample,
    }
