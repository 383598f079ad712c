"""The eval run adapter: each row of the run's data source → a sample from the model (a
`completions` run) → every testing criterion's grade → output items, chunk by chunk.

Every model call goes through the batch's path (`BatchRun`): the plan's models checked call by call,
the organization's tokens per minute, the spend cap taken ahead of each call, and the run's own
`max_cost`. The sampled model's tokens are billed as the run's units, each judge's and the embedding
model's under a key of its own (`apps.jobs.actions.usage_key`), each at its model's price. A chunk's
items, its bill and the run's progress are written in one transaction (`record_items`): a resumed
attempt skips the items recorded, and its counts start from what was billed, so no work is paid for
twice and none goes unpaid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from apps.billing.pricing import cost_of
from apps.core.errors import ActionError
from apps.evals.actions import record_items
from apps.evals.models import EvalOutputItem, EvalRun
from apps.evals.parsing import eval_validator, item_problem
from apps.jobs import actions, graders, inference
from apps.jobs.models import Job, JobStatus, StopReason
from workers.runners.attempt import BUDGET, FENCED, SPEND_LIMIT, AttemptGuard, drop_interrupted_connections
from workers.runners.batch import BatchRun, Line
from workers.runners.inference import storable

logger = logging.getLogger(__name__)

STOPS = {
    SPEND_LIMIT: (StopReason.SPEND_LIMIT_REACHED, "The organization's spend limit was reached"),
    BUDGET: (StopReason.BUDGET_REACHED, "The run's max_cost was reached"),
}


class Stopped(Exception):
    """The run must stop before the next call: cancelled, out of money, or its attempt lost."""


class Calls(BatchRun):
    """One model's calls for an eval run, through the batch's checks, answered into `answers`
    instead of a file. Billing is the run's (`EvalRunner.record`), with the chunk's items."""

    def __init__(self, runner: EvalRunner, endpoint: str, model_name: str) -> None:
        super().__init__(runner.job, runner.guard, None, None, endpoint=endpoint)
        self.runner = runner
        self.model_name = model_name
        self.share = runner.share  # one share of the cap for all the run's models
        self.subscription = runner.subscription
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.invocations = 0

    def write(self, custom_id: str, status: int, body: dict[str, Any]) -> None:
        self.answers[custom_id] = (status, body)
        self.invocations += 1

    def cost(self) -> int:
        return self.runner.cost()

    def bill(self) -> None:
        """Nothing here: a chunk's calls are billed with its items."""

    def _affordable(self, lines: list[Line]) -> list[Line]:
        fits = super()._affordable(lines)
        budget = self.job.max_cost
        if budget is None:
            return fits
        total, kept = self.cost(), list[Line]()
        for line in fits:
            worst = inference.largest_cost(line[1], line[2])
            # A budget is a promise: a call that could pass it does not start, the first one included.
            if total + worst > budget:
                self.stop_reason = BUDGET
                break
            kept.append(line)
            total += worst
        return kept

    def call(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request's response body; ActionError with its message when the call failed, `Stopped`
        when the run must stop first."""
        if self.guard.should_stop() or self.runner.stop_reason:
            raise Stopped
        self.call_lines([(0, {"custom_id": "call", "body": body})])
        if self.stop_reason:
            self.runner.stop_reason = self.stop_reason
        answer = self.answers.pop("call", None)
        if answer is None:  # not run: no money left, or the run was stopped
            raise Stopped
        status, response = answer
        if status != 200:
            error = response.get("error") or {}
            raise ActionError(
                str(error.get("message") or "The call failed."), code=str(error.get("code") or "")
            )
        return response


def input_messages(spec: dict[str, Any], item: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat a completions data source sends for `item`: its template rendered, or the item's
    own messages (`item_reference`). Raises ActionError when the item lacks what they name."""
    if spec["type"] == "template":
        return [
            {"role": m["role"], "content": graders.render(m["content"], item, None)} for m in spec["template"]
        ]
    value: Any = {"item": item}
    for part in spec["item_reference"].split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
        for m in value
    ):
        raise ActionError(f"{spec['item_reference']} is not a list of messages with role and content.")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def output_text(response: dict[str, Any]) -> str:
    choices = response.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) else ""


class EvalRunner:
    def __init__(self, job: Job, guard: AttemptGuard) -> None:
        from apps.billing import quotas
        from apps.jobs.admission import SpendShare

        self.job, self.guard = job, guard
        self.run: EvalRun = EvalRun.objects.select_related("eval").get(job=job)
        self.eval = self.run.eval
        self.criteria: list[dict[str, Any]] = list(self.eval.testing_criteria)
        self.validator = eval_validator(self.eval.data_source_config["item_schema"])
        self.data_source: dict[str, Any] = job.request["data_source"]
        self.subscription = quotas.subscription_for(job.organization)
        self.share = SpendShare(job)
        self.stop_reason = ""
        # What earlier attempts billed: this attempt's counts continue from there.
        self.billed: dict[str, int] = {key: int(value) for key, value in (job.billed_usage or {}).items()}
        self.calls: dict[tuple[str, str], Calls] = {}
        self.progress = self._progress(job.progress or {})

    def _progress(self, saved: dict[str, Any]) -> dict[str, Any]:
        criteria = {c["id"]: {"passed": 0, "failed": 0} for c in self.criteria}
        criteria.update(saved.get("criteria") or {})
        return {
            "total": int(saved.get("total", 0)),
            "completed": int(saved.get("completed", 0)),
            "result_counts": {"passed": 0, "failed": 0, "errored": 0, **(saved.get("result_counts") or {})},
            "criteria": criteria,
            "models": dict(saved.get("models") or {}),
        }

    # --- the models --------------------------------------------------------------------------------
    def calls_for(self, model_name: str, endpoint: str = "/v1/chat/completions") -> Calls:
        key = (endpoint, model_name)
        if key not in self.calls:
            self.calls[key] = Calls(self, endpoint, model_name)
        return self.calls[key]

    def cost(self) -> int:
        """The run's whole cost so far, over all attempts and models."""
        total = 0
        for key, count in self.usage().items():
            unit, model_name = _priced(key, self.job.model_name)
            total += cost_of(model_name, unit, count)
        return total

    def usage(self) -> dict[str, int]:
        """The running count of each billing key: the sampled model's units plain, every other
        model's under `usage_key`; earlier attempts' counts included."""
        totals = dict(self.billed)
        for (_, model_name), calls in self.calls.items():
            for unit, count in calls.usage.items():
                if not count:
                    continue
                key = unit if model_name == self.job.model_name else actions.usage_key(unit, model_name)
                totals[key] = totals.get(key, 0) + count
        return totals

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
        response = self.calls_for(model).call(body)
        usage = response.get("usage") or {}
        return graders.JudgeReply(
            text=output_text(response),
            model=model,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )

    def embed(self, texts: list[str]) -> list[list[float]]:
        model = settings.EVAL_EMBEDDING_MODEL
        response = self.calls_for(model, "/v1/embeddings").call({"model": model, "input": texts})
        return [row["embedding"] for row in response.get("data") or []]

    # --- the rows ------------------------------------------------------------------------------------
    def rows(self) -> Iterator[tuple[int, Any]]:
        source = self.data_source["source"]
        if source["type"] == "file_content":
            yield from enumerate(source["content"])
            return
        assert self.job.training_file is not None
        with self.job.training_file.content.open("rb") as handle:
            index = 0
            for raw in handle:
                if raw.strip():
                    yield index, json.loads(raw)  # the file passed validation at upload
                    index += 1

    def sample_of(
        self, index: int, row: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The `sample` namespace of one row, and the output item's `sample`: from the model for a
        completions run, as the row gives it for a jsonl run."""
        if self.data_source["type"] == "jsonl":
            given = row.get("sample")
            return given, given
        messages = self.messages(row["item"])
        params = self.data_source.get("sampling_params") or {}
        model = self.data_source["model"]
        body = {"model": model, "messages": messages, **params}
        shown: dict[str, Any] = {
            "input": messages,
            "output": [],
            "finish_reason": "",
            "model": model,
            "usage": {"total_tokens": 0, "completion_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0},
            "error": None,
            "temperature": params.get("temperature", 1.0),
            "max_completion_tokens": params.get("max_completion_tokens"),
            "top_p": params.get("top_p", 1.0),
            "seed": params.get("seed"),
        }
        try:
            response = self.calls_for(model).call(body)
        except ActionError as exc:
            shown["error"] = {"code": exc.code or "error", "message": exc.message}
            return None, shown
        text = output_text(response)
        usage = response.get("usage") or {}
        shown["output"] = [{"role": "assistant", "content": text}]
        shown["finish_reason"] = ((response.get("choices") or [{}])[0]).get("finish_reason") or ""
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        shown["usage"] = {
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens": prompt,
            "cached_tokens": 0,
        }
        namespace: dict[str, Any] = {
            "model": model,
            "choices": response.get("choices") or [],
            "output_text": text,
        }
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            namespace["output_json"] = parsed
        return namespace, shown

    def messages(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        return input_messages(self.data_source["input_messages"], item)

    def grade_row(self, index: int, row: Any) -> dict[str, Any]:
        item = row.get("item") if isinstance(row, dict) else None
        problem = "" if isinstance(item, dict) else 'the row has no "item" object'
        if not problem:
            problem = item_problem(self.validator, item)
            if problem:
                problem = f"The item does not match the eval's item_schema: {problem}"
        sample: dict[str, Any] | None = None
        shown: dict[str, Any] | None = None
        if not problem:
            try:
                sample, shown = self.sample_of(index, row)
            except ActionError as exc:  # an input template names what the item lacks
                problem = exc.message
        results: list[dict[str, Any]] = []
        errored = bool(problem) or bool(shown and shown.get("error"))
        if not errored:
            for criterion in self.criteria:
                grade = graders.grade(criterion, item or {}, sample, judge=self.judge, embed=self.embed)
                if self.stop_reason or self.guard.should_stop():
                    raise Stopped
                results.append({**grade.result(), "id": criterion["id"]})
                errored = errored or grade.error is not None
        status = "error" if errored else ("pass" if all(r["passed"] for r in results) else "fail")
        if problem:
            shown = {**(shown or {}), "error": {"code": "invalid_item", "message": problem}}
        # jsonb holds no U+0000, which a model's output (or a row's given sample) may contain.
        return {
            "datasource_item_id": index,
            "datasource_item": storable(item if isinstance(item, dict) else {}),
            "status": status,
            "results": storable(results),
            "sample": storable(shown),
        }

    def count(self, items: list[dict[str, Any]]) -> None:
        counts = self.progress["result_counts"]
        for item in items:
            counts[{"pass": "passed", "fail": "failed", "error": "errored"}[item["status"]]] += 1
            for result in item["results"]:
                tally = self.progress["criteria"].setdefault(result["id"], {"passed": 0, "failed": 0})
                tally["passed" if result["passed"] else "failed"] += 1
        self.progress["completed"] += len(items)
        models = self.progress["models"]
        for (_, model_name), calls in self.calls.items():
            seen = models.setdefault(
                model_name, {"invocation_count": 0, "prompt_tokens": 0, "completion_tokens": 0}
            )
            seen["invocation_count"] += calls.invocations
            calls.invocations = 0
        # Tokens per model are the billed counts, kept on the job: read them at the end.

    def record(self, items: list[dict[str, Any]]) -> bool:
        self.count(items)
        usage = self.usage()
        recorded = self.guard.ride_out(
            lambda: record_items(self.job.pk, self.job.attempt, self.run.pk, items, usage, self.progress)
        )
        if not recorded:
            self.guard.request_stop(FENCED)
        return bool(recorded)

    def execute(self) -> None:
        done = set(EvalOutputItem.objects.filter(run=self.run).values_list("datasource_item_id", flat=True))
        chunk: list[dict[str, Any]] = []
        for index, row in self.rows():
            if index in done:
                continue
            if self.guard.should_stop() or self.stop_reason:
                break
            try:
                chunk.append(self.grade_row(index, row))
            except Stopped:
                break
            if len(chunk) >= settings.INFERENCE_MAX_BATCH:
                if not self.record(chunk):
                    return
                chunk = []
        if chunk or self.calls:
            self.record(chunk)  # also bills the calls of an item the stop cut short

    # --- the end -------------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        counts = self.progress["result_counts"]
        usage = self.usage()
        per_model: dict[str, dict[str, int]] = {}
        for key, count in usage.items():
            unit, model_name = _priced(key, self.job.model_name)
            row = per_model.setdefault(model_name, {"prompt_tokens": 0, "completion_tokens": 0})
            if unit == "input_tokens":
                row["prompt_tokens"] += count
            elif unit == "output_tokens":
                row["completion_tokens"] += count
        return {
            "result_counts": {**counts, "total": sum(counts.values())},
            "per_testing_criteria_results": [
                {
                    "testing_criteria": criterion["id"],
                    **self.progress["criteria"].get(criterion["id"], {"passed": 0, "failed": 0}),
                }
                for criterion in self.criteria
            ],
            "per_model_usage": [
                {
                    "model_name": name,
                    "invocation_count": int(self.progress["models"].get(name, {}).get("invocation_count", 0)),
                    "prompt_tokens": row["prompt_tokens"],
                    "completion_tokens": row["completion_tokens"],
                    "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
                    "cached_tokens": 0,
                }
                for name, row in per_model.items()
            ],
        }

    def finish(self) -> None:
        result = self.result()
        counts = result["result_counts"]
        error, reason = None, ""
        summary = f"{counts['passed']} passed, {counts['failed']} failed, {counts['errored']} errored"
        if self.guard.stop_reason == "cancel":
            status, message = JobStatus.CANCELLED, f"Eval run cancelled: {summary}."
        elif self.stop_reason in STOPS:
            code, why = STOPS[self.stop_reason]
            status, reason = JobStatus.FAILED, code
            message = (
                f"{why}: the run stopped after {self.progress['completed']:,} of {self.progress['total']:,} items "
                f"({summary}), billed for those."
            )
            error = {"code": code, "message": message, "param": None}
        else:
            status, message = JobStatus.SUCCEEDED, f"Eval run completed: {summary}."
        actions.finish(
            self.job.pk,
            self.job.attempt,
            status,
            result=result,
            error=error,
            status_reason=reason,
            usage=self.usage(),
            fields={"progress": self.progress},
            message=message,
        )


def _priced(key: str, run_model: str) -> tuple[str, str]:
    unit, model_name = actions.split_usage_key(key)
    return unit, model_name or run_model


def run_eval(job: Job) -> None:
    with AttemptGuard(job.pk, job.attempt) as guard:
        runner = EvalRunner(job, guard)
        try:
            runner.execute()
        except BaseException:
            # Whatever stops the run (a time limit, a bug, a write that failed), the calls it made
            # are paid for: bill them before the failure is recorded, which bills nothing new.
            usage = runner.usage()
            drop_interrupted_connections()  # a time limit may have landed inside a query
            try:
                guard.ride_out(lambda: actions.bill_progress(job.pk, job.attempt, usage))
            except Exception:  # the original failure is the one to report
                logger.exception("eval run %s: could not bill its calls before failing", job.public_id)
            raise
        if guard.lost:
            return
        runner.finish()
