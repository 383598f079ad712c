"""The batch adapter: an input file of requests → runtime calls in chunks → output and error
files, with `request_counts` as progress. A cancelled batch keeps what it finished.

A batch is held to the plan line by line, as requests are: each line's model must be one the plan
includes (otherwise the line fails with `model_not_allowed`), its tokens count against the
organization's tokens per minute (the batch waits when they run out), and each chunk takes its share
of the spend cap before it runs and is billed once it ran. When the cap leaves nothing for the next
line, the batch stops with `spend_limit_reached`, billed for what ran and keeping its output.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.conf import settings

from apps.billing import quotas, ratelimit
from apps.billing.pricing import cost_of
from apps.core.errors import ActionError
from apps.jobs import actions, inference
from apps.jobs.admission import SpendShare
from apps.jobs.models import Job, JobStatus, StopReason
from apps.jobs.responses import RESPONSES
from apps.projects.actions import discard, stored_result_file
from apps.projects.formats import BATCH_ENDPOINTS
from apps.projects.models import FilePurpose
from apps.registry.models import Provider
from workers.runners.artifacts import load_servable
from workers.runners.attempt import FENCED, SPEND_LIMIT, AttemptGuard
from workers.runners.inference import (
    TOO_LONG,
    classification_result,
    embedding_result,
    generate_requests,
    generation_result,
)

# How often a batch waiting for its organization's tokens per minute checks for a cancel.
RATE_WAIT_SECONDS = 1.0
SPEND_LIMIT_MESSAGE = (
    "The organization's spend limit was reached: the batch stopped after {done:,} of {total:,} requests, "
    "billed for those. Their results are in the output and error files. Raise the limit under Billing and "
    "submit the remaining requests as a new batch."
)

Line = tuple[str, Any, dict[str, Any]]  # custom_id, model, parsed request


def _lines(job: Job) -> Iterator[tuple[int, dict[str, Any]]]:
    assert job.training_file is not None
    with job.training_file.content.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, json.loads(raw)  # the file passed validation at upload


def _chunks(
    lines: Iterator[tuple[int, dict[str, Any]]], size: int
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    chunk: list[tuple[int, dict[str, Any]]] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class BatchRun:
    def __init__(
        self, job: Job, guard: AttemptGuard, out: Any, errors: Any, *, endpoint: str | None = None
    ) -> None:
        self.job, self.guard, self.out, self.errors = job, guard, out, errors
        self.endpoint = endpoint or job.request["endpoint"]
        self.model_name = job.model_name
        self.counts = {"total": int((job.progress or {}).get("total", 0)), "completed": 0, "failed": 0}
        self.usage = {"input_tokens": 0, "output_tokens": 0, "classified_texts": 0}
        self.subscription = quotas.subscription_for(job.organization)
        self.share = SpendShare(job)
        self.stop_reason = ""  # "", or SPEND_LIMIT once the cap leaves nothing for the next line
        self._client: Any = None

    # --- the files ---------------------------------------------------------------------------------
    def write(self, custom_id: str, status: int, body: dict[str, Any]) -> None:
        line = {
            "id": "batch_req_" + secrets.token_hex(12),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": "req_" + secrets.token_hex(16), "body": body},
            "error": None,
        }
        (self.out if status == 200 else self.errors).write(json.dumps(line) + "\n")
        self.counts["completed" if status == 200 else "failed"] += 1

    def fail_line(self, custom_id: str, exc: ActionError) -> None:
        self.write(custom_id, exc.status, exc.body())

    def respond(self, custom_id: str, model_name: str, result: dict[str, Any]) -> None:
        prefix, build = RESPONSES[BATCH_ENDPOINTS[self.endpoint]]
        self.write(
            custom_id,
            200,
            build(prefix + secrets.token_hex(12), int(self.job.created_at.timestamp()), model_name, result),
        )

    # --- the money -----------------------------------------------------------------------------------
    def cost(self) -> int:
        """What the lines run so far cost, as billing prices them (its records add up to this)."""
        return sum(cost_of(self.model_name, unit, quantity) for unit, quantity in self.usage.items())

    def bill(self) -> None:
        """Puts what the batch ran so far on the books, waiting out a short outage (the bill is of
        the running counts: one that committed before its answer was lost adds nothing when tried
        again, and one that did not is not lost); an attempt that lost the job stops."""
        usage, models = dict(self.usage), self.usage_models()
        billed = self.guard.ride_out(
            lambda: actions.bill_progress(self.job.pk, self.job.attempt, usage, models)
        )
        if not billed:
            self.guard.request_stop(FENCED)

    def usage_models(self) -> dict[str, str]:
        return dict.fromkeys(self.usage, self.model_name)

    def _affordable(self, lines: list[Line]) -> list[Line]:
        """The lines of a chunk the spend cap leaves room for, each at the most it can cost. When the
        cap leaves room for only some, the batch stops after them; the first line runs whenever any
        room is left (a bill can pass the cap by no more than one request)."""
        worst = [inference.largest_cost(model, request) for _, model, request in lines]
        spent = self.cost()
        # Ask for a few chunks' worth at once, so the organization's row is locked rarely.
        if self.guard.ride_out(lambda: self.share.allows(spent + sum(worst), ahead=3 * sum(worst))):
            return lines
        if self.guard.lost:
            return []
        if self.share.fenced:
            self.guard.request_stop(FENCED)
            return []
        fits: list[Line] = []
        total = spent
        for line, cost in zip(lines, worst, strict=True):
            if total + cost > self.share.limit and (fits or self.share.limit <= spent):
                break
            fits.append(line)
            total += cost
        if len(fits) < len(lines):
            self.stop_reason = SPEND_LIMIT
        return fits

    def _take_tokens(self, custom_id: str, request: dict[str, Any]) -> bool:
        """Counts the line's tokens against the organization's tokens per minute, waiting while they
        are used up (a batch runs no faster than the plan allows requests to). False, with the line
        failed, when the line alone needs more than a minute's tokens, or the batch must stop."""
        plan = self.subscription.plan
        tokens = max(inference.estimate_tokens(request), 1)
        if tokens > plan.tokens_per_minute:
            self.fail_line(
                custom_id,
                ActionError(
                    f"This request may use {tokens:,} tokens, more than the {plan.tokens_per_minute:,} tokens per "
                    f"minute of the {plan.name} plan. Lower its max_tokens or shorten it, or upgrade under Billing.",
                    code="rate_limit_exceeded",
                    param="max_tokens",
                    status=429,
                ),
            )
            return False
        scope = f"org:{self.job.organization_id}:tokens"
        while not ratelimit.take(scope, plan.tokens_per_minute, tokens).allowed:
            if self.guard.should_stop():
                return False
            time.sleep(RATE_WAIT_SECONDS)
        return True

    # --- running -------------------------------------------------------------------------------------
    def run_chunk(self, chunk: list[tuple[int, dict[str, Any]]]) -> None:
        self.call_lines(chunk)
        self.guard.set_progress(dict(self.counts))

    def call_lines(self, chunk: list[tuple[int, dict[str, Any]]]) -> None:
        """Each line's checks (its model, the plan, the spend cap, tokens per minute), then the
        admitted ones run and billed; every line ends in `write`."""
        parsed: list[Line] = []
        pinned = self.job.request.get("aliases") or {}
        for _, line in chunk:
            custom_id = str(line.get("custom_id"))
            body = line.get("body")
            if isinstance(body, dict) and body.get("model") in pinned:
                body = {
                    **body,
                    "model": pinned[body["model"]],
                }  # as the alias pointed when the batch was made
            try:
                model, request = inference.PARSERS[BATCH_ENDPOINTS[self.endpoint]](self.job.project, body)
                if self.model_name and model.name != self.model_name:
                    raise ActionError(
                        f"A batch calls one model; this line asks for {model.name}, "
                        f"the batch uses {self.model_name}.",
                        param="model",
                    )
                # The plan may have changed since the batch was submitted: each line is checked.
                quotas.check_model(self.subscription, model.name, param="body.model")
                self.model_name = model.name
            except ActionError as exc:
                self.fail_line(custom_id, exc)
                continue
            parsed.append((custom_id, model, request))
        parsed = self._affordable(parsed) if parsed else parsed
        admitted = [line for line in parsed if self._take_tokens(line[0], line[2])]
        if admitted and not self.guard.should_stop():
            self.execute(admitted)
            self.bill()

    def execute(self, parsed: list[Line]) -> None:
        from workers.runtime.models import default_cache

        model = parsed[0][1]
        if model.provider == Provider.OPENAI:
            self.proxy_all(parsed)
            return
        loaded = load_servable(model, default_cache(settings.SERVE_QUANTIZATION))
        if BATCH_ENDPOINTS[self.endpoint] == "classifications":
            for custom_id, _, request in parsed:
                result = classification_result(loaded, request)
                self.usage["classified_texts"] += len(request["texts"])
                self.usage["input_tokens"] += result["usage"]["prompt_tokens"]
                self.respond(custom_id, model.name, result)
            return
        if BATCH_ENDPOINTS[self.endpoint] == "embeddings":
            self.embed(loaded, model.name, parsed)
            return
        self.generate(loaded, model.name, parsed)

    def embed(self, loaded: Any, model_name: str, parsed: list[Line]) -> None:
        from workers.runtime.embed import EmbedInputError

        for custom_id, _, request in parsed:
            try:
                result = embedding_result(loaded, request)
            except EmbedInputError as exc:
                message = TOO_LONG.format(
                    index=exc.index, tokens=exc.tokens, model=model_name, limit=exc.limit
                )
                self.fail_line(custom_id, ActionError(message, param=f"input[{exc.index}]"))
                continue
            self.usage["input_tokens"] += result["usage"]["prompt_tokens"]
            self.respond(custom_id, model_name, result)

    def generate(self, loaded: Any, model_name: str, parsed: list[Line]) -> None:
        from workers.runtime.constrain import GrammarError
        from workers.runtime.generate import GenerateRequestError, generate_batch

        for custom_id, _, request in parsed:
            try:
                results = generate_batch(loaded, generate_requests(request))
            except GenerateRequestError as exc:
                self.fail_line(
                    custom_id, ActionError(exc.message, param=exc.param, code=exc.code or "invalid_request")
                )
                continue
            except GrammarError as exc:
                message = f"The response format cannot be followed: {exc}"
                self.fail_line(custom_id, ActionError(message, param="body.response_format"))
                continue
            result = generation_result(results, request)
            self.usage["input_tokens"] += result["usage"]["prompt_tokens"]
            self.usage["output_tokens"] += result["usage"]["completion_tokens"]
            self.respond(custom_id, model_name, result)

    def proxy_all(self, parsed: list[Line]) -> None:
        """The chunk's `openai:*` requests, in flight together (the worker waits on the network)."""
        from workers.runtime.openai_proxy import (
            ProxyError,
            make_client,
            proxy_chat,
            proxy_completion,
            proxy_embeddings,
        )

        if self._client is None:
            try:
                key = self.job.organization.openai_key_for_calls()
            except ActionError as exc:  # no key, or one that cannot be read: never the platform's instead
                for custom_id, _, _ in parsed:
                    self.fail_line(custom_id, ActionError(exc.message, code=exc.code, param="body.model"))
                return
            self._client = make_client(
                key, settings.OPENAI_BASE_URL, settings.OPENAI_TIMEOUT_SECONDS, settings.OPENAI_MAX_RETRIES
            )

        def call(request: dict[str, Any]) -> Any:
            send = {"chat": proxy_chat, "embeddings": proxy_embeddings}.get(
                request["endpoint"], proxy_completion
            )
            try:
                return send(self._client, request["body"])
            except ProxyError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=len(parsed)) as pool:
            results = list(pool.map(call, [request for _, _, request in parsed]))
        for (custom_id, _, _), result in zip(parsed, results, strict=True):
            if isinstance(result, ProxyError):
                self.fail_line(
                    custom_id,
                    ActionError(result.message, code=result.code, param=result.param, status=result.status),
                )
                continue
            self.usage["input_tokens"] += result.usage.prompt_tokens
            self.usage["output_tokens"] += result.usage.completion_tokens
            self.respond(custom_id, self.model_name, {"proxied": result.body})


def run_batch(job: Job) -> None:
    work = Path(settings.VAR_DIR) / "work"
    work.mkdir(parents=True, exist_ok=True)
    with (
        AttemptGuard(job.pk, job.attempt) as guard,
        tempfile.TemporaryFile("w+", dir=work) as out,
        tempfile.TemporaryFile("w+", dir=work) as errors,
    ):
        run = BatchRun(job, guard, out, errors)
        for chunk in _chunks(_lines(job), settings.INFERENCE_MAX_BATCH):
            if guard.should_stop() or run.stop_reason:
                break
            run.run_chunk(chunk)
        if guard.lost:
            return
        _finish(job, guard, run, out, errors)


def _finish(job: Job, guard: AttemptGuard, run: BatchRun, out: Any, errors: Any) -> None:
    result: dict[str, Any] = {"usage": {k: run.usage[k] for k in ("input_tokens", "output_tokens")}}
    files = []
    for handle, name, key in ((out, "output", "output_file_id"), (errors, "errors", "error_file_id")):
        handle.seek(0)
        data = handle.read().encode()
        if data:
            files.append(
                stored_result_file(
                    job.project, f"{job.public_id}_{name}.jsonl", FilePurpose.BATCH_OUTPUT, data
                )
            )
            result[key] = files[-1].public_id
    counts = run.counts
    error = None
    if guard.stop_reason == "cancel":
        status, message = (
            JobStatus.CANCELLED,
            f"Batch cancelled: {counts['completed']} completed, {counts['failed']} failed.",
        )
    elif run.stop_reason == SPEND_LIMIT:
        status = JobStatus.FAILED
        message = SPEND_LIMIT_MESSAGE.format(
            done=counts["completed"] + counts["failed"], total=counts["total"]
        )
        error = {"code": StopReason.SPEND_LIMIT_REACHED, "message": message, "param": None}
    else:
        status, message = (
            JobStatus.SUCCEEDED,
            f"Batch completed: {counts['completed']} completed, {counts['failed']} failed.",
        )

    def publish_files(_: Job) -> None:
        for file in files:
            file.save()

    finished = actions.finish(
        job.pk,
        job.attempt,
        status,
        result=result,
        error=error,
        usage=run.usage,
        usage_models=run.usage_models(),
        status_reason=StopReason.SPEND_LIMIT_REACHED if error else "",
        fields={"progress": counts, "model_name": run.model_name},
        message=message,
        on_finished=publish_files,
    )
    if finished is None:  # another attempt owns the batch now: its files are not ours to publish
        discard(files)
