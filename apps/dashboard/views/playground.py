"""The playground: chat with a generation model, its answer streamed as server-sent events, and
classify texts with a classifier.

A request here is admitted exactly as the API admits it (`apps.jobs.admission.admit_inference`),
with the signed-in user in place of an API key, so it is billed, limited and shed the same way.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.accounts.models import Organization
from apps.billing import quotas
from apps.core.errors import ActionError
from apps.core.text import refuse_unstorable
from apps.dashboard.snippets import api_base_url
from apps.dashboard.views.common import get_project, member_required
from apps.jobs import admission, inference, serving
from apps.jobs.responses import server_sent_events
from apps.projects.models import Project
from apps.registry.models import Model, Task

DEFAULT_MAX_TOKENS = 256


# --- Models the organization may call --------------------------------------------------------------
def servable_models(organization: Organization, task: str) -> list[Model]:
    """Catalog and own models of `task` that can be called (bases that need a fine-tune cannot)."""
    models = Model.objects.visible_to(organization).in_service().filter(task=task).order_by("name")
    return [model for model in models if model.limit("servable", True)]


def model_choices(organization: Organization, task: str) -> list[dict[str, Any]]:
    """Select options; models the plan does not include are shown, disabled, with the reason."""
    plan = quotas.subscription_for(organization).plan
    return [
        {"name": model.name, "allowed": plan.allows(model.name), "plan": plan.name, "model": model}
        for model in servable_models(organization, task)
    ]


# --- Submitting: the API's checks, in the API's order ----------------------------------------------
def _submit(
    request: OrganizationRequest, project: Project, parse: admission.Parser, body: dict[str, Any]
) -> admission.Admitted:
    refuse_unstorable(body)  # as the API refuses it, before anything is looked up or stored
    return admission.admit_inference(project, parse, body, user=request.user)


def _error_json(exc: ActionError) -> JsonResponse:
    response = JsonResponse(exc.body(), status=exc.status)
    for name, value in getattr(exc, "headers", {}).items():  # retry-after on rate limits
        response[name] = value
    return response


# --- Pages ---------------------------------------------------------------------------------------
@member_required
@require_GET
def playground(request: OrganizationRequest, project_id: str) -> HttpResponse:
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
            # "Try in playground" on a model's page opens it chosen (its tab from the link's #fragment).
            "selected_model": request.GET.get("model", ""),
            "api_base_url": api_base_url(),
        },
    )


# --- Chat: POST the conversation as JSON, read the answer as server-sent events --------------------
@member_required
@require_POST
def chat(request: OrganizationRequest, project_id: str) -> HttpResponse | StreamingHttpResponse:
    project = get_project(request, project_id)
    try:
        body = _json_body(request)
        # Always streamed; usage comes in the last chunk so the page can show the token count.
        body.update(stream=True, stream_options={"include_usage": True})
        admitted = _submit(request, project, inference.parse_chat, body)
    except ActionError as exc:
        return _error_json(exc)
    chunks = serving.stream(admitted, "chat")
    response = StreamingHttpResponse(server_sent_events(chunks), content_type="text/event-stream")
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


# --- Classify: one text per line, a bar per label ----------------------------------------------------
@member_required
@require_POST
def classify(request: OrganizationRequest, project_id: str) -> HttpResponse:
    """The htmx partial under the classify form: each input's labels as bars, or why not."""
    project = get_project(request, project_id)
    texts = [line.strip() for line in request.POST.get("input", "").splitlines() if line.strip()]
    try:
        if not texts:
            raise ActionError("Enter at least one text, one per line.", param="input")
        body = {"model": request.POST.get("model", ""), "input": texts}
        admitted = _submit(request, project, inference.parse_classification, body)
        data = serving.answer(admitted)["data"]
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
        request, "dashboard/_playground_classify.html", {"results": results, "model": admitted.job.model_name}
    )
