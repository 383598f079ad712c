"""The playground: chat with a generation model, its answer streamed as server-sent events, and
classify texts with a classifier.

A request here is admitted exactly as the API admits it (`apps.jobs.admission.admit_inference`),
with the signed-in user in place of an API key, so it is billed, limited and shed the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.models import Organization
from apps.billing import quotas
from apps.core.errors import ActionError
from apps.core.text import refuse_unstorable
from apps.dashboard.views.common import get_project, member_required
from apps.jobs import actions, admission, inference, relay
from apps.jobs.models import Job
from apps.jobs.responses import job_response, response_id, usage_body
from apps.projects.models import Project
from apps.registry.models import Model, Task

TIMEOUT_MESSAGE = (
    "The model did not answer within {seconds:g} seconds. The request was cancelled; retry later."
)
DEFAULT_MAX_TOKENS = 256


# --- Models the organization may call --------------------------------------------------------------
def servable_models(organization: Organization, task: str) -> list[Model]:
    """Catalog and own models of `task` that can be called (bases that need a fine-tune cannot)."""
    models = Model.objects.visible_to(organization).filter(task=task).order_by("name")
    return [model for model in models if model.limit("servable", True)]


def model_choices(organization: Organization, task: str) -> list[dict[str, Any]]:
    """Select options; models the plan does not include are shown, disabled, with the reason."""
    plan = quotas.subscription_for(organization).plan
    return [
        {"name": model.name, "allowed": plan.allows(model.name), "plan": plan.name, "model": model}
        for model in servable_models(organization, task)
    ]


# --- Submitting: the API's checks, in the API's order ----------------------------------------------
def _submit(request: HttpRequest, project: Project, parse: Any, body: dict[str, Any]) -> admission.Admitted:
    refuse_unstorable(body)  # as the API refuses it, before anything is looked up or stored
    return admission.admit_inference(project, parse, body, user=request.user)


def _give_up(job: Job) -> None:
    relay.request_abort(job.public_id)
    actions.cancel(job)


def _timeout_message() -> str:
    return TIMEOUT_MESSAGE.format(seconds=settings.INFERENCE_TIMEOUT_SECONDS)


def _error_json(exc: ActionError) -> JsonResponse:
    error_type = "invalid_request_error" if exc.status < 500 else "server_error"
    response = JsonResponse(
        {"error": {"message": exc.message, "type": error_type, "param": exc.param, "code": exc.code}},
        status=exc.status,
    )
    for name, value in getattr(exc, "headers", {}).items():  # retry-after on rate limits
        response[name] = value
    return response


# --- Pages ---------------------------------------------------------------------------------------
@member_required
@require_GET
def playground(request: HttpRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    return render(
        request,
        "dashboard/playground.html",
        {
            "project": project,
            "current_project": project,
            "chat_models": model_choices(project.organization, Task.GENERATION),
            "classifiers": model_choices(project.organization, Task.CLASSIFICATION),
            "default_max_tokens": DEFAULT_MAX_TOKENS,
            "max_stop": inference.MAX_STOP,
        },
    )


# --- Chat: POST the conversation as JSON, read the answer as server-sent events --------------------
@member_required
@require_POST
def chat(request: HttpRequest, project_id: str) -> HttpResponse | StreamingHttpResponse:
    project = get_project(request, project_id)
    try:
        body = _json_body(request)
        # Always streamed; usage comes in the last chunk so the page can show the token count.
        body.update(stream=True, stream_options={"include_usage": True})
        admitted = _submit(request, project, inference.parse_chat, body)
    except ActionError as exc:
        return _error_json(exc)
    response = StreamingHttpResponse(_stream(admitted), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # let proxies pass each event on at once
    return response


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if request.content_type != "application/json":
        # A form body has been read as a form already (by the CSRF check): its raw bytes are gone.
        raise ActionError("The request body must be JSON.")
    try:
        body = json.loads(request.body or b"null")
    # ValueError: not JSON, not UTF-8, or an integer of more digits than int() takes; RecursionError:
    # nested deeper than the parser goes.
    except (ValueError, RecursionError):
        raise ActionError("The request body must be JSON.") from None
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    return body


def _stream(admitted: admission.Admitted) -> Iterator[bytes]:
    finished = False
    try:
        yield from _relay(admitted.job, admitted.request)
        finished = True
    finally:
        admitted.release()
        if not finished:  # the browser went away (Stop, or the tab closed): stop generating
            _give_up(admitted.job)


def _relay(job: Job, parsed: dict[str, Any]) -> Iterator[bytes]:
    """The worker's events as OpenAI `chat.completion.chunk`s, an in-band error, then [DONE]."""
    base = {
        "id": response_id(job, "chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(job.created_at.timestamp()),
        "model": job.model_name,
    }
    proxied = bool(parsed.get("proxy"))
    if not proxied:
        yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})  # fmt: skip
    for event in relay.listen(job.public_id, settings.INFERENCE_TIMEOUT_SECONDS):
        if event is None:
            _give_up(job)
            yield _sse({"error": {"message": _timeout_message(), "type": "server_error", "code": "timeout"}})
            break
        if event["type"] == "delta":
            choice = {"index": event["index"], "delta": {"content": event["text"]}, "finish_reason": None}
            yield _sse({**base, "choices": [choice]})
        elif event["type"] == "chunk":
            yield _sse({**event["chunk"], "model": job.model_name})
        elif event["type"] == "error":
            status = int(event.get("status") or 500)
            yield _sse({"error": {"message": event.get("message") or "The request failed.",
                                  "type": "invalid_request_error" if status < 500 else "server_error",
                                  "code": event.get("code"), "param": event.get("param")}})  # fmt: skip
            break
        elif event["type"] == "done":
            try:
                job = inference.answered(job)
            except ActionError as exc:
                yield _sse(
                    {"error": {"message": exc.message, "type": "invalid_request_error", "code": exc.code}}
                )
                break
            if not proxied:  # proxied streams end with the upstream's own final chunks
                result = job.result or {}
                choices = [{"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}
                           for c in result.get("choices", [])]  # fmt: skip
                yield _sse({**base, "choices": choices, "usage": usage_body(result)})
            break
    yield b"data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


# --- Classify: one text per line, a bar per label ----------------------------------------------------
@member_required
@require_POST
def classify(request: HttpRequest, project_id: str) -> HttpResponse:
    """The htmx partial under the classify form: each input's labels as bars, or why not."""
    project = get_project(request, project_id)
    texts = [line.strip() for line in request.POST.get("input", "").splitlines() if line.strip()]
    try:
        if not texts:
            raise ActionError("Enter at least one text, one per line.", param="input")
        body = {"model": request.POST.get("model", ""), "input": texts}
        admitted = _submit(request, project, inference.parse_classification, body)
        job = admitted.job
        try:
            data = _wait(job)["data"]
        finally:
            admitted.release()
    except ActionError as exc:
        response = render(
            request, "dashboard/_playground_classify.html", {"error": exc.message}, status=exc.status
        )
        for name, value in getattr(exc, "headers", {}).items():
            response[name] = value
        return response
    results = [
        {
            "text": texts[item["index"]],
            "labels": [
                {"label": score["label"], "score": score["score"], "percent": round(100 * score["score"], 1)}
                for score in sorted(item["labels"], key=lambda s: -s["score"])
            ],
        }
        for item in data
    ]
    return render(
        request, "dashboard/_playground_classify.html", {"results": results, "model": job.model_name}
    )


def _wait(job: Job) -> dict[str, Any]:
    """The job's OpenAI response body once the worker is done; its error as an ActionError."""
    for event in relay.listen(job.public_id, settings.INFERENCE_TIMEOUT_SECONDS):
        if event is None:
            _give_up(job)
            raise ActionError(_timeout_message(), code="timeout", status=504)
        if event["type"] == "error":
            raise ActionError(event.get("message") or "The request failed.", code=event.get("code") or "error",
                              param=event.get("param"), status=int(event.get("status") or 500))  # fmt: skip
        if event["type"] == "done":
            return job_response(inference.answered(job))
    raise ActionError("The worker stopped without an answer.", code="server_error", status=500)
