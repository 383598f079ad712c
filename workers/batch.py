"""The batch adapter: an input file of requests → runtime calls in chunks → output and error
files, with `request_counts` as progress. A cancelled batch keeps what it finished."""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings

from apps.core.errors import ActionError
from apps.jobs import actions, inference
from apps.jobs.models import Job, JobStatus
from apps.jobs.responses import RESPONSES
from apps.projects.actions import discard, stored_result_file
from apps.projects.models import FilePurpose
from apps.registry.models import Provider
from workers.artifacts import local_model_dir
from workers.attempt import AttemptGuard
from workers.inference import classification_result, generate_requests, generation_result

PARSERS = {
    "/v1/chat/completions": inference.parse_chat,
    "/v1/completions": inference.parse_completion,
    "/v1/classifications": inference.parse_classification,
}


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
    def __init__(self, job: Job, guard: AttemptGuard, out: Any, errors: Any) -> None:
        self.job, self.guard, self.out, self.errors = job, guard, out, errors
        self.endpoint = job.request["endpoint"]
        self.model_name = ""
        self.counts = {"total": int((job.progress or {}).get("total", 0)), "completed": 0, "failed": 0}
        self.usage = {"input_tokens": 0, "output_tokens": 0, "classified_texts": 0}

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
        body = {
            "error": {
                "message": exc.message,
                "type": "invalid_request_error",
                "param": exc.param,
                "code": exc.code,
            }
        }
        self.write(custom_id, exc.status, body)

    def run_chunk(self, chunk: list[tuple[int, dict[str, Any]]]) -> None:
        parsed: list[tuple[str, Any, dict[str, Any]]] = []
        for _, line in chunk:
            custom_id = str(line.get("custom_id"))
            try:
                model, request = PARSERS[self.endpoint](self.job.project, line.get("body"))
                if self.model_name and model.name != self.model_name:
                    raise ActionError(f"A batch calls one model; this line asks for {model.name}, "
                                      f"the batch uses {self.model_name}.", param="model")  # fmt: skip
                self.model_name = model.name
            except ActionError as exc:
                self.fail_line(custom_id, exc)
                continue
            parsed.append((custom_id, model, request))
        if parsed:
            self.execute(parsed)
        self.guard.set_progress(dict(self.counts))

    def execute(self, parsed: list[tuple[str, Any, dict[str, Any]]]) -> None:
        from workers.runtime.models import default_cache

        model = parsed[0][1]
        if model.provider == Provider.OPENAI:
            for custom_id, _, request in parsed:
                self.proxy(custom_id, request)
            return
        loaded = default_cache().get(str(local_model_dir(model.artifact_key)))
        if self.endpoint == "/v1/classifications":
            for custom_id, _, request in parsed:
                result = classification_result(loaded, request)
                self.usage["classified_texts"] += len(request["texts"])
                self.usage["input_tokens"] += result["usage"]["prompt_tokens"]
                self.respond(custom_id, model.name, result)
            return
        self.generate(loaded, model.name, parsed)

    def generate(self, loaded: Any, model_name: str, parsed: list[tuple[str, Any, dict[str, Any]]]) -> None:
        from workers.runtime.generate import GenerateRequestError, generate_batch

        for custom_id, _, request in parsed:
            try:
                results = generate_batch(loaded, generate_requests(request))
            except GenerateRequestError as exc:
                self.fail_line(
                    custom_id, ActionError(exc.message, param=exc.param, code=exc.code or "invalid_request")
                )
                continue
            result = generation_result(results)
            self.usage["input_tokens"] += result["usage"]["prompt_tokens"]
            self.usage["output_tokens"] += result["usage"]["completion_tokens"]
            self.respond(custom_id, model_name, result)

    def proxy(self, custom_id: str, request: dict[str, Any]) -> None:
        from workers.runtime.openai_proxy import ProxyError, make_client, proxy_chat, proxy_completion

        try:
            key = self.job.organization.openai_key_for_calls()
        except ActionError as exc:
            self.fail_line(custom_id, exc)
            return
        client = make_client(
            key, settings.OPENAI_BASE_URL, settings.OPENAI_TIMEOUT_SECONDS, settings.OPENAI_MAX_RETRIES
        )
        call = proxy_chat if request["endpoint"] == "chat" else proxy_completion
        try:
            result = call(client, request["body"])
        except ProxyError as exc:
            self.fail_line(
                custom_id, ActionError(exc.message, code=exc.code, param=exc.param, status=exc.status)
            )
            return
        self.usage["input_tokens"] += result.usage.prompt_tokens
        self.usage["output_tokens"] += result.usage.completion_tokens
        self.respond(custom_id, self.model_name, {"proxied": result.body})

    def respond(self, custom_id: str, model_name: str, result: dict[str, Any]) -> None:
        prefix, build = RESPONSES[ENDPOINT_KEYS[self.endpoint]]
        self.write(custom_id, 200, build(prefix + secrets.token_hex(12), int(self.job.created_at.timestamp()),
                                         model_name, result))  # fmt: skip


ENDPOINT_KEYS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/classifications": "classifications",
}


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
            if guard.should_stop():
                break
            run.run_chunk(chunk)
        if guard.lost:
            return
        result: dict[str, Any] = {"usage": {k: run.usage[k] for k in ("input_tokens", "output_tokens")}}
        files = []
        for handle, name, key in ((out, "output", "output_file_id"), (errors, "errors", "error_file_id")):
            handle.seek(0)
            data = handle.read().encode()
            if data:
                files.append(stored_result_file(
                    job.project, f"{job.public_id}_{name}.jsonl", FilePurpose.BATCH_OUTPUT, data
                ))  # fmt: skip
                result[key] = files[-1].public_id
        status = JobStatus.CANCELLED if guard.stop_reason == "cancel" else JobStatus.SUCCEEDED

        def publish_files(_: Job) -> None:
            for file in files:
                file.save()

        finished = actions.finish(
            job.pk, job.attempt, status, result=result, usage=run.usage,
            fields={"progress": run.counts, "model_name": run.model_name},
            message=f"Batch {status}: {run.counts['completed']} completed, {run.counts['failed']} failed.",
            on_finished=publish_files,
        )  # fmt: skip
        if finished is None:  # another attempt owns the batch now: its files are not ours to publish
            discard(files)
