"""Batches built from the project's files, and their results joined back to their inputs: the
work behind "run on a file" and the results CSV (the dashboard's batch pages only take the form and
send the response).

A batch started from a dataset file is an API batch: the file's rows are first written as the
batch input file the customer would otherwise write by hand, one request a row, validated like any
upload, then parsed and submitted exactly as `POST /v1/batches` submits it.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import transaction
from django.db.models import IntegerField, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Cast

from apps.accounts.models import User
from apps.billing import quotas
from apps.core.errors import ActionError
from apps.jobs import batches, inference
from apps.jobs.models import Job
from apps.projects import formats
from apps.projects.actions import create_processed_file
from apps.projects.formats import BATCH_ENDPOINTS
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.projects.validation import sniff_delimiter, validate_stream
from apps.registry.models import Model, Task

MAX_ROWS = batches.MAX_REQUESTS


def usable_files(project: Project) -> QuerySet[File]:
    """The project's processed files a batch can run on, each with its row count as `rows`."""
    return (
        File.objects.filter(
            project=project,
            status=FileStatus.PROCESSED,
            purpose__in=[FilePurpose.FINE_TUNE, FilePurpose.BATCH],
        )
        .defer("validation")
        .annotate(rows=Cast(KT("validation__rows"), IntegerField()))
    )


# --- Run on a file ------------------------------------------------------------------------------
def run_on_file(project: Project, model_name: str, file_id: str, *, user: User) -> Job:
    """Starts a batch of `model_name` over a processed file: a batch file as it is, a dataset
    file (CSV text,label or JSONL) by first writing one request a row."""
    file = usable_files(project).filter(public_id=file_id).first() if file_id else None
    if file is None:
        raise ActionError("Choose a processed file of this project.", param="file")
    rows = getattr(file, "rows", None) or 0  # annotated by usable_files
    if rows > MAX_ROWS:
        raise _too_many_rows(rows)
    if file.purpose == FilePurpose.BATCH:
        if model_name:
            raise ActionError(
                "A batch file names the model on each line: choose “As named in the file”, "
                "or pick a dataset file to run this model on.",
                param="model",
            )
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


def _submit_built(project: Project, source: File, model: Model, data: bytes, user: User) -> Job:
    stem = source.filename.rsplit(".", 1)[0] or "dataset"
    report = validate_stream([data], "batch")
    if not report["valid"]:
        raise ActionError(f"The requests built from {source.filename} did not validate: {report['summary']}")
    batch_file: File | None = None
    try:
        with transaction.atomic():
            # Processed at once, with its report: batches.parse reads the row count, endpoint and models.
            batch_file = create_processed_file(
                project, f"{stem}.batch.jsonl", FilePurpose.BATCH, data, report
            )
            body = _batch_body(batch_file, inference.TASK_ENDPOINTS[Task(model.task)], model)
            body["metadata"]["source_file_id"] = source.public_id
            return batches.submit(project, batches.parse(project, body), user=user)
    except ActionError:
        if batch_file is not None and batch_file.content.name:
            batch_file.content.storage.delete(batch_file.content.name)  # its row was rolled back
        raise


def build_requests(file: File, model: Model) -> bytes:
    """One batch request a row of the dataset, as JSON Lines with custom_id `row-N`."""
    if file.format not in formats.DATASET_FORMATS:
        raise ActionError(f"{file.filename} is not a dataset a batch can be built from.", param="file")
    endpoint = inference.TASK_ENDPOINTS[Task(model.task)]
    out = io.BytesIO()
    for number, prompt in enumerate(_prompts(file), start=1):
        if number > MAX_ROWS:
            raise _too_many_rows()
        if model.task in (Task.CLASSIFICATION, Task.EMBEDDING):
            if not isinstance(prompt, str):
                raise ActionError(
                    f"{'Classifiers' if model.task == Task.CLASSIFICATION else 'Embedding models'} take text: "
                    "pick a CSV or JSONL file with a text column.",
                    param="file",
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
        if file.format == formats.CLASSIFICATION_CSV:
            yield from _csv_texts(file, handle, mapping.get("text", "text"))
            return
        for raw in handle:
            if not raw.strip():
                continue
            row = json.loads(raw.removeprefix(codecs.BOM_UTF8))  # the file passed validation
            if file.format == formats.CLASSIFICATION_JSONL:
                yield row[mapping.get("text", "text")]
            elif file.format == formats.PROMPT_COMPLETION_JSONL:
                yield row[mapping.get("prompt", "prompt")]
            else:
                yield _chat_prompt(row[mapping.get("messages", "messages")])


def _csv_texts(file: File, handle: Iterable[bytes], text_column: str) -> Iterator[str]:
    lines = codecs.iterdecode(handle, "utf-8-sig")
    first = next((line for line in lines if line.strip()), "")
    delimiter = sniff_delimiter(first.encode(), file.filename)  # as the validator read the file
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


# --- Results joined to their inputs ------------------------------------------------------------
def result_rows(
    endpoint: str, source: File | None, output: File | None, errors: File | None
) -> Iterator[list[Any]]:
    """The CSV's header, then a row per result in input order; requests a cancelled batch never
    ran are listed as `not_run`.

    The worker writes each of the output and error files in input order, so three cursors
    walking the files side by side pair them up with memory for one line each.
    """
    classify = BATCH_ENDPOINTS.get(endpoint) == "classifications"
    yield (
        ["custom_id", "input", "label", "score", "status", "error"]
        if classify
        else ["custom_id", "input", "output", "finish_reason", "status", "error"]
    )
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
            yield [
                custom_id,
                _at(inputs, item.get("index", 0)),
                top.get("label", ""),
                top.get("score", ""),
                "completed",
                "",
            ]
        return
    if body.get("object") == "list":  # embeddings: the vector as JSON (floats, or a base64 string)
        for item in body.get("data") or []:
            yield [
                custom_id,
                _at(inputs, item.get("index", 0)),
                json.dumps(item.get("embedding")),
                "",
                "completed",
                "",
            ]
        return
    for choice in body.get("choices") or []:
        text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
        yield [
            custom_id,
            _at(inputs, choice.get("index", 0)),
            text or "",
            choice.get("finish_reason") or "",
            "completed",
            "",
        ]


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
