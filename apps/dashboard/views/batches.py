"""Batches pages: "run on a file" (a model and a processed file → a batch), the project's batches,
and each batch live, with its results as JSONL and as CSV.

A batch started here is an API batch (`batches.parse` → `submit`): for a dataset file the page
first writes the batch input file the user would otherwise write by hand, one request a row.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from django.contrib import messages
from django.core.cache import cache
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import IntegerField
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.billing import quotas
from apps.core.errors import ActionError
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.dashboard.views.playground import model_choices
from apps.jobs import actions, batches, inference
from apps.jobs.models import Job, JobKind
from apps.projects.actions import create_result_file
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.projects.validation import validate_stream
from apps.registry.models import Model, Task

PAGE_SIZE = 50
MAX_ROWS = batches.MAX_REQUESTS
# A submitted form's token is remembered this long, so a double click starts one batch, not two.
FORM_TOKEN_SECONDS = 3600
# Dataset formats a batch can be built from; batch files run as they are.
DATASET_FORMATS = ("classification_csv", "classification_jsonl", "prompt_completion_jsonl", "chat_jsonl")
# A spreadsheet runs a cell starting with these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ENDPOINTS = {Task.CLASSIFICATION: "/v1/classifications", Task.GENERATION: "/v1/chat/completions"}
BATCH_STATUS_LABELS = {
    "validating": "Validating",
    "in_progress": "In progress",
    "finalizing": "Finalizing",
    "completed": "Completed",
    "failed": "Failed",
    "cancelling": "Cancelling",
    "cancelled": "Cancelled",
}


# --- Lookups, always scoped to the project ------------------------------------------------------
def _batches(project: Project) -> Any:
    return Job.objects.for_project(project).filter(kind=JobKind.BATCH)


def _get_batch(project: Project, batch_id: str) -> Job:
    job = _batches(project).select_related("training_file").filter(public_id=batch_id).first()
    if job is None:
        raise Http404("No such batch")
    return job


def _usable_files(project: Project) -> Any:
    return (
        File.objects.filter(
            project=project,
            status=FileStatus.PROCESSED,
            purpose__in=[FilePurpose.FINE_TUNE, FilePurpose.BATCH],
        )
        .defer("validation")
        .annotate(rows=Cast(KT("validation__rows"), IntegerField()))
    )


def _result_file(project: Project, job: Job, key: str) -> File:
    file_id = (job.result or {}).get(key)
    file = File.objects.filter(project=project, public_id=file_id).first() if file_id else None
    if file is None:
        raise Http404("This batch has no such file")
    return file


# --- Run on a file ------------------------------------------------------------------------------
def run_on_file(project: Project, model_name: str, file_id: str, *, user: Any) -> Job:
    """Starts a batch of `model_name` over a processed file: a batch file as it is, a dataset
    file (CSV text,label or JSONL) by first writing one request a row."""
    file = _usable_files(project).filter(public_id=file_id).first() if file_id else None
    if file is None:
        raise ActionError("Choose a processed file of this project.", param="file")
    rows = getattr(file, "rows", None) or 0  # annotated by _usable_files
    if rows > MAX_ROWS:
        raise _too_many_rows(rows)
    if file.purpose == FilePurpose.BATCH:
        if model_name:
            raise ActionError("A batch file names the model on each line: choose “As named in the file”, "
                              "or pick a dataset file to run this model on.", param="model")  # fmt: skip
        file.refresh_from_db(fields=["validation"])
        endpoints = list(((file.validation or {}).get("stats") or {}).get("endpoints") or {})
        endpoint = endpoints[0] if len(endpoints) == 1 else ""
        return batches.submit(project, batches.parse(project, _batch_body(file, endpoint)), user=user)
    model = _resolve_model(project, model_name)
    # Before writing up to 50,000 requests: an organization out of credit finds out at once.
    quotas.check_model(quotas.check_quota(project.organization), model.name)
    data = build_requests(file, model)
    return _submit_built(project, file, model, data, user)


def _resolve_model(project: Project, name: str) -> Model:
    if not name:
        raise ActionError("Choose a model to run on this file.", param="model")
    found = Model.objects.visible_to(project.organization).filter(name=name).first()
    # resolve_model words "not found" (another organization's model too) and "cannot be called".
    return inference.resolve_model(project, name, found.task if found else Task.GENERATION)


def _batch_body(file: File, endpoint: str, model: Model | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"input_file_id": file.public_id, "endpoint": endpoint, "completion_window": "24h"}
    if model is not None:
        body["metadata"] = {"model": model.name}
    return body


def _too_many_rows(rows: int | None = None) -> ActionError:
    counted = f"{rows:,} rows" if rows is not None else f"more than {MAX_ROWS:,} rows"
    return ActionError(
        f"The file has {counted}; a batch holds at most {MAX_ROWS:,}. Split it into smaller files.",
        param="file",
    )


def _submit_built(project: Project, source: File, model: Model, data: bytes, user: Any) -> Job:
    stem = source.filename.rsplit(".", 1)[0] or "dataset"
    report = validate_stream([data], "batch")
    if not report["valid"]:
        raise ActionError(f"The requests built from {source.filename} did not validate: {report['summary']}")
    batch_file: File | None = None
    try:
        with transaction.atomic():
            batch_file = create_result_file(project, f"{stem}.batch.jsonl", FilePurpose.BATCH, data)
            # Made `processed` at once; the report gives batches.parse the row count and endpoint.
            File.objects.filter(pk=batch_file.pk).update(
                validation=report, format=report["format"] or "", status_details=report["summary"][:500]
            )
            body = _batch_body(batch_file, ENDPOINTS[Task(model.task)], model)
            body["metadata"]["source_file_id"] = source.public_id
            return batches.submit(project, batches.parse(project, body), user=user)
    except ActionError:
        if batch_file is not None and batch_file.content.name:
            batch_file.content.storage.delete(batch_file.content.name)  # its row was rolled back
        raise


def build_requests(file: File, model: Model) -> bytes:
    """One batch request a row of the dataset, as JSON Lines with custom_id `row-N`."""
    if file.format not in DATASET_FORMATS:
        raise ActionError(f"{file.filename} is not a dataset a batch can be built from.", param="file")
    endpoint = ENDPOINTS[Task(model.task)]
    out = io.BytesIO()
    for number, prompt in enumerate(_prompts(file), start=1):
        if number > MAX_ROWS:
            raise _too_many_rows()
        if model.task == Task.CLASSIFICATION:
            if not isinstance(prompt, str):
                raise ActionError(
                    "Classifiers take text: pick a CSV or JSONL file with a text column.", param="file"
                )
            body: dict[str, Any] = {"model": model.name, "input": prompt}
        else:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            body = {"model": model.name, "messages": messages}
        line = {"custom_id": f"row-{number}", "method": "POST", "url": endpoint, "body": body}
        out.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
    return out.getvalue()


def _prompts(file: File) -> Iterator[str | list[dict[str, str]]]:
    """Each row's text (or, for chat files, the messages before the reply), read line by line."""
    mapping = file.column_mapping or {}
    with file.content.open("rb") as handle:
        if file.format == "classification_csv":
            yield from _csv_texts(file, handle, mapping.get("text", "text"))
            return
        for raw in handle:
            if not raw.strip():
                continue
            row = json.loads(raw.removeprefix(codecs.BOM_UTF8))  # the file passed validation
            if file.format == "classification_jsonl":
                yield row[mapping.get("text", "text")]
            elif file.format == "prompt_completion_jsonl":
                yield row[mapping.get("prompt", "prompt")]
            else:
                yield _chat_prompt(row[mapping.get("messages", "messages")])


def _csv_texts(file: File, handle: Iterable[bytes], text_column: str) -> Iterator[str]:
    lines = codecs.iterdecode(handle, "utf-8-sig")
    first = next((line for line in lines if line.strip()), "")
    # The validator's choice: by extension, else the first delimiter found in the header line.
    if file.filename.lower().endswith(".tsv"):
        delimiter = "\t"
    else:
        delimiter = next((char for char in (",", "\t", ";") if char in first), ",")
    reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
    header = [name.strip().casefold() for name in next(reader, [])]
    if text_column.casefold() not in header:
        raise ActionError(f"{file.filename} has no column {text_column!r}.", param="file")
    column = header.index(text_column.casefold())
    for values in reader:
        if any(values) and len(values) > column:
            yield values[column]


def _chat_prompt(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The conversation up to its last assistant reply: what the model is asked to answer."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    return [
        {"role": m["role"], "content": m["content"]}
        for m in messages[:last]
        if m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
    ] or [{"role": "user", "content": ""}]


# --- Pages --------------------------------------------------------------------------------------
def _progress(job: Job) -> dict[str, Any]:
    batch = batches.batch_object(job)
    counts = batch["request_counts"]
    done = counts["completed"] + counts["failed"]
    percent = (
        100.0
        if batch["status"] == "completed"
        else (100.0 * done / counts["total"] if counts["total"] else 0.0)
    )
    metadata = job.metadata or {}
    return {
        "job": job,
        "batch": batch,
        "status": batch["status"],
        "status_label": BATCH_STATUS_LABELS.get(batch["status"], batch["status"]),
        "counts": counts,
        "done": done,
        "percent": min(percent, 100.0),
        "model": job.model_name or metadata.get("model", ""),
        "source_file_id": metadata.get("source_file_id", ""),
    }


def _list_context(
    project: Project, request: HttpRequest, values: dict[str, str], error: ActionError | None = None
) -> dict[str, Any]:
    page = Paginator(_batches(project).select_related("training_file"), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    organization = project.organization
    return {
        "project": project,
        "current_project": project,
        "page": page,
        "rows": [_progress(job) for job in page],
        "files": [_file_choice(file) for file in _usable_files(project)],
        "classifiers": model_choices(organization, Task.CLASSIFICATION),
        "generators": model_choices(organization, Task.GENERATION),
        "values": values,
        "error": error,
        "form_token": secrets.token_urlsafe(16),
        "max_rows": MAX_ROWS,
    }


def _file_choice(file: File) -> dict[str, str]:
    kind = "batch file" if file.purpose == FilePurpose.BATCH else file.format.replace("_", " ")
    count = getattr(file, "rows", None)  # annotated by _usable_files
    rows = f"{count:,} rows" if isinstance(count, int) else ""
    return {"id": file.public_id, "label": " · ".join(filter(None, [file.filename, rows, kind]))}


@member_required
@require_GET
def batch_list(request: HttpRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    values = {"model": request.GET.get("model", ""), "file": request.GET.get("file", "")}
    return render(request, "dashboard/batches.html", _list_context(project, request, values))


@member_required
@require_POST
def batch_create(request: HttpRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    values = {"model": request.POST.get("model", "").strip(), "file": request.POST.get("file", "").strip()}
    # cache.add is atomic: of two submissions of one form, only the first gets past here.
    token = request.POST.get("form_token", "")[:64]
    token_key = f"dashboard:batch-form:{request.user.pk}:{token}"
    if token and not cache.add(token_key, "", FORM_TOKEN_SECONDS):
        batch_id = cache.get(token_key)
        if batch_id:
            return redirect("dashboard:batch", project.public_id, batch_id)
        messages.info(request, "This form was already submitted.")
        return redirect("dashboard:batches", project.public_id)
    try:
        job = run_on_file(project, values["model"], values["file"], user=request.user)
    except ActionError as exc:
        cache.delete(token_key)
        context = _list_context(project, request, values, exc)
        # The page exists: a model or file that is not found is a bad choice in the form.
        return render(
            request, "dashboard/batches.html", context, status=400 if exc.status == 404 else exc.status
        )
    cache.set(token_key, job.public_id, FORM_TOKEN_SECONDS)
    messages.success(request, f"Batch {job.public_id} created: {job.progress.get('total', 0):,} requests.")
    return redirect("dashboard:batch", project.public_id, job.public_id)


def _detail_context(request: HttpRequest, project: Project, job: Job) -> dict[str, Any]:
    progress = _progress(job)
    result = job.result or {}
    return {
        "project": project,
        "current_project": project,
        **progress,
        "can_cancel": progress["status"] in ("validating", "in_progress")
        and request.membership.can_destroy(job.created_by_id),  # type: ignore[attr-defined]
        "output_file_id": result.get("output_file_id"),
        "error_file_id": result.get("error_file_id"),
    }


@member_required
@require_GET
def batch_detail(request: HttpRequest, project_id: str, batch_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    return render(
        request,
        "dashboard/batch_detail.html",
        _detail_context(request, project, _get_batch(project, batch_id)),
    )


@member_required
@require_GET
def batch_status(request: HttpRequest, project_id: str, batch_id: str) -> HttpResponse:
    """The fragment the batch page polls every 2 s; once the batch has finished it stops polling."""
    project = get_project(request, project_id)
    context = _detail_context(request, project, _get_batch(project, batch_id))
    return render(request, "dashboard/_batch_status.html", context)


@member_required
@require_POST
def batch_cancel(request: HttpRequest, project_id: str, batch_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    job = _get_batch(project, batch_id)
    if job.is_finished:
        messages.error(request, f"Batch {job.public_id} has already finished; it cannot be cancelled.")
    elif run_action(request, lambda: actions.require_may_stop(request.user, job, "cancel")):
        job = actions.cancel(job)
        if job.is_finished:
            messages.success(request, "Batch cancelled.")
        else:
            messages.success(
                request, "Cancelling: the batch stops after its current requests; results so far are kept."
            )
    return redirect("dashboard:batch", project.public_id, job.public_id)


# --- Downloads ----------------------------------------------------------------------------------
def _jsonl_download(file: File, filename: str) -> FileResponse:
    return FileResponse(
        file.content.open("rb"), as_attachment=True, filename=filename, content_type="application/jsonl"
    )


@member_required
@require_GET
def batch_output(request: HttpRequest, project_id: str, batch_id: str) -> FileResponse:
    project = get_project(request, project_id)
    job = _get_batch(project, batch_id)
    return _jsonl_download(_result_file(project, job, "output_file_id"), f"{job.public_id}_output.jsonl")


@member_required
@require_GET
def batch_errors(request: HttpRequest, project_id: str, batch_id: str) -> FileResponse:
    project = get_project(request, project_id)
    job = _get_batch(project, batch_id)
    return _jsonl_download(_result_file(project, job, "error_file_id"), f"{job.public_id}_errors.jsonl")


@member_required
@require_GET
def batch_results_csv(
    request: HttpRequest, project_id: str, batch_id: str
) -> HttpResponse | StreamingHttpResponse:
    project = get_project(request, project_id)
    job = _get_batch(project, batch_id)
    if not job.is_finished:
        return HttpResponse("The batch has not finished yet.", status=409, content_type="text/plain")
    result = job.result or {}
    files = {
        key: File.objects.filter(project=project, public_id=result[key]).first() if result.get(key) else None
        for key in ("output_file_id", "error_file_id")
    }
    rows = result_rows(job.request.get("endpoint", ""), job.training_file, files["output_file_id"],
                       files["error_file_id"])  # fmt: skip
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow([_cell(value) for value in row]) for row in rows),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="{job.public_id}_results.csv"'
    return response


class _Echo:
    """A file-like object whose write returns the line: csv.writer rows straight into a stream."""

    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def result_rows(
    endpoint: str, source: File | None, output: File | None, errors: File | None
) -> Iterator[list[Any]]:
    """The CSV's header, then a row per result in input order; requests a cancelled batch never
    ran are listed as `not_run`.

    The worker writes each of the output and error files in input order, so three cursors
    walking the files side by side pair them up with memory for one line each.
    """
    classify = endpoint == "/v1/classifications"
    yield ["custom_id", "input", "label", "score", "status", "error"] if classify else [
        "custom_id", "input", "output", "finish_reason", "status", "error"
    ]  # fmt: skip
    outputs, failures = _Peekable(_jsonl(output)), _Peekable(_jsonl(errors))
    for custom_id, inputs in _requests(source):
        if outputs.head is not None and outputs.head.get("custom_id") == custom_id:
            yield from _success_rows(custom_id, inputs, next(outputs), classify)
        elif failures.head is not None and failures.head.get("custom_id") == custom_id:
            yield _failure_row(custom_id, inputs, next(failures))
        else:
            yield [custom_id, inputs[0] if inputs else "", "", "", "not_run", ""]
    # Lines whose input was not found (the input file was deleted): without their input.
    for line in outputs:
        yield from _success_rows(str(line.get("custom_id")), [], line, classify)
    for line in failures:
        yield _failure_row(str(line.get("custom_id")), [], line)


def _success_rows(
    custom_id: str, inputs: list[str], line: dict[str, Any], classify: bool
) -> Iterator[list[Any]]:
    body = (line.get("response") or {}).get("body") or {}
    if classify:
        for item in body.get("data") or []:
            top = max(item.get("labels") or [{}], key=lambda s: s.get("score", 0))
            yield [custom_id, _at(inputs, item.get("index", 0)), top.get("label", ""), top.get("score", ""),
                   "completed", ""]  # fmt: skip
        return
    for choice in body.get("choices") or []:
        text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
        yield [custom_id, _at(inputs, choice.get("index", 0)), text or "", choice.get("finish_reason") or "",
               "completed", ""]  # fmt: skip


def _failure_row(custom_id: str, inputs: list[str], line: dict[str, Any]) -> list[Any]:
    body = (line.get("response") or {}).get("body") or {}
    message = (body.get("error") or {}).get("message") or (line.get("error") or {}).get("message", "")
    return [custom_id, inputs[0] if inputs else "", "", "", "failed", message]


def _at(inputs: list[str], index: int) -> str:
    if not inputs:
        return ""
    return inputs[index] if 0 <= index < len(inputs) else inputs[0]


def _requests(source: File | None) -> Iterator[tuple[str, list[str]]]:
    """Each request of a batch input file: its custom_id and its input texts."""
    for line in _jsonl(source):
        body = line.get("body")
        yield str(line.get("custom_id")), _input_texts(body if isinstance(body, dict) else {})


def _input_texts(body: dict[str, Any]) -> list[str]:
    if isinstance(body.get("messages"), list):
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        if isinstance(content, list):  # content parts, as the customer wrote them: not always text
            content = "".join(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        return [content if isinstance(content, str) else ""]
    value = body.get("input", body.get("prompt"))
    values = value if isinstance(value, list) else [value]
    return [v if isinstance(v, str) else json.dumps(v) for v in values if v is not None]


def _jsonl(file: File | None) -> Iterator[dict[str, Any]]:
    if file is None:
        return
    with file.content.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    line = json.loads(raw.removeprefix(codecs.BOM_UTF8))
                except json.JSONDecodeError:
                    continue  # an unreadable line of an input file: its results pair with no input
                if isinstance(line, dict):
                    yield line


class _Peekable:
    """An iterator with its next item visible as `head` (None at the end)."""

    def __init__(self, items: Iterator[dict[str, Any]]) -> None:
        self._items = items
        self.head: dict[str, Any] | None = next(items, None)

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.head is None:
            raise StopIteration
        item, self.head = self.head, next(self._items, None)
        return item
