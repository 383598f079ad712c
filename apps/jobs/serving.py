"""The one path of an inference request, for every caller (the API's three endpoints and the
dashboard's playground): admitted (`apps.jobs.admission`), queued as a job, then waited for, or
relayed token by token as OpenAI's stream chunks. The callers only parse their input and format
what comes out (JSON, or server-sent events).

A request that waits longer than INFERENCE_TIMEOUT_SECONDS is given up: its worker is told to
stop and its job is cancelled. The request's in-flight slot is released when it stops waiting,
whichever way it ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from apps.core.errors import ActionError, error_body
from apps.jobs import actions, inference, relay
from apps.jobs.admission import Admitted
from apps.jobs.models import ACTIVE_STATUSES, Job
from apps.jobs.responses import Chunker, job_response

TIMEOUT_MESSAGE = (
    "The model did not answer within {seconds:g} seconds. The request was cancelled; retry later."
)
CUT_OFF_MESSAGE = (
    "The upstream provider's stream was cut off before the answer was complete. Retry the request."
)
NO_ANSWER_MESSAGE = "The worker stopped without an answer."


def timeout_error() -> ActionError:
    return ActionError(
        TIMEOUT_MESSAGE.format(seconds=settings.INFERENCE_TIMEOUT_SECONDS), code="timeout", status=504
    )


def give_up(job: Job) -> None:
    """The caller stopped waiting (a timeout, a client that left): the worker stops generating."""
    relay.request_abort(job.public_id)
    actions.cancel(job)


def _event_error(event: dict[str, Any]) -> ActionError:
    """A worker's error event as the refusal the caller reports."""
    return ActionError(
        event.get("message") or "The request failed.",
        code=event.get("code") or "server_error",
        param=event.get("param"),
        status=int(event.get("status") or 500),
    )


def answer(admitted: Admitted) -> dict[str, Any]:
    """Waits for the job's result: its OpenAI response body. Its failure, or a timeout (504), as an
    ActionError."""
    job = admitted.job
    deadline = time.monotonic() + settings.INFERENCE_TIMEOUT_SECONDS
    try:
        while True:
            found = _answered(job, deadline)
            if found is not None:
                return found
    finally:
        admitted.release()


def _answered(job: Job, deadline: float) -> dict[str, Any] | None:
    """The response once the job's final event comes; None when an attempt that had lost the job
    said it was done (the attempt that owns it answers later: listen again)."""
    for event in relay.listen(job.public_id, deadline - time.monotonic()):
        if event is None:
            give_up(job)
            raise timeout_error()
        if event["type"] == "error":
            raise _event_error(event)
        if event["type"] == "done":
            if "result" in event:  # the worker stored it and sent it along: no need to read it back
                job.result = event["result"]
                return job_response(job)
            found = inference.answered(job)
            if found.status in ACTIVE_STATUSES:
                return None
            return job_response(found)
    raise ActionError(NO_ANSWER_MESSAGE, code="server_error", status=500)


def stream(admitted: Admitted, endpoint: str) -> Iterator[dict[str, Any]]:
    """The job's answer as OpenAI stream chunks (`chat.completion.chunk` or `text_completion`), an
    in-band error object if it fails, as it comes. A caller that stops reading (the client left)
    gives the job up."""
    job, parsed = admitted.job, admitted.request
    finished = False
    try:
        yield from _chunks(job, parsed, endpoint)
        finished = True
    finally:
        admitted.release()
        if not finished:
            give_up(job)


def _chunks(job: Job, parsed: dict[str, Any], endpoint: str) -> Iterator[dict[str, Any]]:
    chunker = Chunker(endpoint, job, parsed)
    proxied = bool(parsed.get("proxy"))
    if endpoint == "chat" and not proxied:
        for index in range(parsed["n"]):
            yield chunker.role_chunk(index)
    for event in relay.listen(job.public_id, settings.INFERENCE_TIMEOUT_SECONDS):
        if event is None:
            give_up(job)
            yield timeout_error().body()
            return
        if event["type"] == "delta":
            yield chunker.delta(event["index"], event["text"])
        elif event["type"] == "tool_call":
            yield chunker.tool_call(event["index"], event["call"])
        elif event["type"] == "chunk":
            if not event["chunk"].get("choices") and not parsed.get("include_usage"):
                continue  # upstream's usage-only chunk: we asked for it (to bill), the client did not
            yield {**event["chunk"], "model": job.model_name}
        elif event["type"] == "error":
            yield _event_error(event).body()
            return
        elif event["type"] == "done":
            try:
                job = inference.answered(job)
            except ActionError as exc:  # gone with its project while it ran
                yield exc.body()
                return
            if not proxied:
                yield from chunker.final(job.result or {})
            elif not _proxied_finished(job.result or {}):  # upstream's stream was cut off half-way
                yield error_body(CUT_OFF_MESSAGE, "server_error", "upstream_error")
            return


def _proxied_finished(result: dict[str, Any]) -> bool:
    choices = (result.get("proxied") or {}).get("choices") or []
    return bool(choices) and all(choice.get("finish_reason") for choice in choices)
