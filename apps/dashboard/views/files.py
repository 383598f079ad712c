"""Files pages: upload with a progress bar, the list, and each file's validation report."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import IntegerField, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.jobs import deletion
from apps.projects import actions
from apps.projects.formats import CLASSIFICATION_CSV, CLASSIFICATION_FORMATS, SUPERVISED_FORMATS
from apps.projects.models import UPLOAD_PURPOSES, File, FilePurpose, FileStatus, Project
from apps.projects.samples import SAMPLE_BASE_MODEL
from apps.projects.uploads import UploadTooLarge
from apps.registry.models import Model, Task

PAGE_SIZE = 50
PREVIEW_LINES = 20
# The preview never reads more than this, even when the file has no line breaks.
PREVIEW_BYTES = 1024 * 1024
CONTEXT_LINES = 3
# A longer line is cut in the page; the file itself is untouched.
SHOWN_LINE_BYTES = 2000
CHART_LABELS = 50
TASK_OF_FORMAT = {
    **{name: Task.CLASSIFICATION for name in CLASSIFICATION_FORMATS},
    **{name: Task.GENERATION for name in SUPERVISED_FORMATS},
}
# Control characters other than tab would garble the page; show them as U+FFFD.
_CONTROL = {code: "\ufffd" for code in (*range(0, 9), *range(10, 32), 127)}


@dataclass(frozen=True, slots=True)
class ShownLine:
    number: int
    text: str
    is_cut: bool


def uploads(project: Project) -> QuerySet[File]:
    """The files people uploaded. Results files (a fine-tune's metrics, a batch's output) are
    listed with the job that wrote them, on its page."""
    return File.objects.filter(project=project, purpose__in=UPLOAD_PURPOSES)


@member_required
def file_list(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    # Reports can hold thousands of issues: the list reads only their row count.
    files = uploads(project).defer("validation").annotate(rows=Cast(KT("validation__rows"), IntegerField()))
    page = Paginator(files, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "dashboard/files.html",
        {
            "project": project,
            "current_project": project,
            "page": page,
            "purposes": [(purpose.value, purpose.label) for purpose in UPLOAD_PURPOSES],
            "max_upload_bytes": settings.MAX_UPLOAD_BYTES,
        },
    )


@csrf_exempt
@member_required
@require_POST
def file_upload(request: OrganizationRequest, project_id: str) -> HttpResponse:
    # The CSRF check reads the multipart body, and reading it is where the size cap fires. So
    # this view is exempt from the middleware and runs the same check itself (`_upload` is
    # csrf_protect-ed), inside this try, so that an oversize upload still gets its 413 (the
    # pattern Django's docs give for custom upload handlers).
    try:
        return _upload(request, project_id)
    except UploadTooLarge as exc:
        return _refuse(request, project_id, str(exc), status=413)


@csrf_protect
def _upload(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    mapping = {field: request.POST.get(f"column_{field}", "").strip() for field in ("text", "label")}
    try:
        file = actions.upload_file(
            project,
            request.FILES.get("file"),
            request.POST.get("purpose"),
            user=request.user,
            column_mapping={field: name for field, name in mapping.items() if name} or None,
        )
    except ActionError as exc:
        return _refuse(request, project.public_id, exc.message, status=exc.status)
    url = reverse("dashboard:file", args=[project.public_id, file.public_id])
    if _wants_json(request):
        return JsonResponse({"id": file.public_id, "status": file.status, "url": url}, status=201)
    messages.success(request, f"Uploaded “{file.filename}”. Validating it now.")
    return redirect(url)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _refuse(request: HttpRequest, project_id: str, message: str, *, status: int) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": message}, status=status)
    messages.error(request, message)
    return redirect("dashboard:files", project_id)


def _get_file(project: Project, file_id: str) -> File:
    file = (
        File.objects.filter(project=project, public_id=file_id)
        .select_related("project__organization", "created_by")
        .first()
    )
    if file is None:
        raise Http404("No such file")
    return file


@member_required
def file_detail(request: OrganizationRequest, project_id: str, file_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    file = _get_file(project, file_id)
    report: dict[str, Any] = file.validation or {}
    # Most common first. PostgreSQL's jsonb does not keep the report's key order.
    labels = sorted(
        (report.get("stats", {}).get("labels") or {}).items(), key=lambda item: (-item[1], item[0])
    )
    context: dict[str, Any] = {
        "project": project,
        "current_project": project,
        "file": file,
        "can_delete": request.membership.can_destroy(file.created_by_id),
        "report": report,
        "label_count": len(labels),
        # Pairs, not an object: JavaScript would reorder numeric keys such as "1" and "5".
        "chart_labels": [[label, count] for label, count in labels[:CHART_LABELS]],
        "fine_tune_url": fine_tune_url(project, file),
    }
    line = _requested_line(request)
    if line is not None:
        first = max(1, line - CONTEXT_LINES)
        context.update(line=line, lines=read_lines(file, first, line + CONTEXT_LINES))
    else:
        lines = read_lines(file, 1, PREVIEW_LINES, max_bytes=PREVIEW_BYTES)
        context.update(lines=lines, table=_csv_table(lines) if file.format == CLASSIFICATION_CSV else None)
    return render(request, "dashboard/file_detail.html", context)


def fine_tune_url(project: Project, file: File) -> str | None:
    """The new fine-tune form with this file chosen (the user's own click), and a base model that
    learns from its format; None while the file cannot be trained on."""
    if file.purpose != FilePurpose.FINE_TUNE or file.status != FileStatus.PROCESSED:
        return None
    query = {"training_file": file.public_id}
    task = TASK_OF_FORMAT.get(file.format)
    if task is not None:
        bases = Model.objects.catalog().in_service().filter(is_fine_tunable=True, task=task).order_by("name")
        base = bases.filter(name=SAMPLE_BASE_MODEL).first() or bases.first()
        if base is not None:
            query["model"] = base.name
    return f"{reverse('dashboard:job_new', args=[project.public_id])}?{urlencode(query)}"


def _requested_line(request: HttpRequest) -> int | None:
    raw = request.GET.get("line", "")
    # ASCII digits only ("²" is a digit to isdigit(), not to int()), and few enough of them for int().
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        return None
    return int(raw) if int(raw) >= 1 else None


@member_required
def file_status(request: OrganizationRequest, project_id: str, file_id: str) -> HttpResponse:
    """The status fragment the detail page polls while validation runs."""
    project = get_project(request, project_id)
    file = _get_file(project, file_id)
    response = render(request, "dashboard/_file_status.html", {"project": project, "file": file})
    if file.status != FileStatus.UPLOADED and request.headers.get("HX-Request"):
        response["HX-Refresh"] = "true"  # the report is in: reload the page to show all of it
    return response


@member_required
def file_content(request: OrganizationRequest, project_id: str, file_id: str) -> FileResponse:
    project = get_project(request, project_id)
    file = _get_file(project, file_id)
    return FileResponse(
        file.content.open("rb"),
        as_attachment=True,
        filename=file.filename,
        content_type="application/octet-stream",
    )


@member_required
@require_POST
def file_delete(request: OrganizationRequest, project_id: str, file_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    file = _get_file(project, file_id)
    deleted = run_action(
        request,
        lambda: deletion.delete_file(request.user, file),
        f"“{file.filename}” was deleted.",
    )
    if not deleted:
        return redirect("dashboard:file", project.public_id, file.public_id)
    return redirect("dashboard:files", project.public_id)


# ---------------------------------------------------------------------------------------------
# Reading lines of a stored file
# ---------------------------------------------------------------------------------------------


def read_lines(file: File, first: int, last: int, *, max_bytes: int | None = None) -> list[ShownLine]:
    """Physical lines first..last (1-based, as in validation reports), read chunk by chunk.

    Stops at `last`; memory is one chunk plus SHOWN_LINE_BYTES, whatever the file holds.
    """
    shown: list[ShownLine] = []
    with file.content.open("rb") as handle:
        chunks: Iterable[bytes] = handle.chunks()
        if max_bytes is not None:
            chunks = _limit(chunks, max_bytes)
        for number, (data, is_cut) in enumerate(_split_lines(chunks, SHOWN_LINE_BYTES), start=1):
            if number > last:
                break
            if number >= first:
                shown.append(ShownLine(number, _display(data, number), is_cut))
    return shown


def _limit(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes]:
    read = 0
    for chunk in chunks:
        yield chunk[: max_bytes - read]
        read += len(chunk)
        if read >= max_bytes:
            return


def _split_lines(chunks: Iterable[bytes], keep: int) -> Iterator[tuple[bytes, bool]]:
    """Lines without their newline, each cut to `keep` bytes, and whether it was cut."""
    head = bytearray()
    is_cut = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end == -1 else chunk[start:end]
            room = max(keep - len(head), 0)
            head += piece[:room]
            is_cut = is_cut or len(piece) > room
            if end == -1:
                break
            yield bytes(head), is_cut
            head, is_cut, start = bytearray(), False, end + 1
    if head or is_cut:
        yield bytes(head), is_cut


def _display(data: bytes, number: int) -> str:
    if number == 1 and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.endswith(b"\r"):
        data = data[:-1]
    return data.decode("utf-8", "replace").translate(_CONTROL)


def _csv_table(lines: list[ShownLine]) -> list[tuple[int, list[str]]] | None:
    """The preview's CSV records with the line each starts on; None if they do not parse."""
    if not lines or any(line.is_cut for line in lines):
        return None
    delimiter = next((char for char in (",", "\t", ";") if char in lines[0].text), ",")
    where = {"line": 0}

    def feed() -> Iterator[str]:
        for line in lines:
            where["line"] = line.number
            yield line.text + "\n"  # the reader keeps newlines inside quoted fields

    reader = csv.reader(feed(), delimiter=delimiter)
    records: list[tuple[int, list[str]]] = []
    try:
        while True:
            start = where["line"] + 1
            values = next(reader, None)
            if values is None:
                return records
            if any(values):
                records.append((start, values))
    except csv.Error:
        return None
