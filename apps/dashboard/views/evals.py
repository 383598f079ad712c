"""Evals pages: the project's evals, each eval with its criteria and runs, a run's report (its pass
rate overall and per criterion, live while it runs, and its graded items) and two runs side by side.

Evals are created and run through the API (`/v1/evals`, docs/api.md "Evals"); these pages read them,
and cancel a run. Every lookup is scoped to the project, so another tenant's ids are 404s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Page, Paginator
from django.db.models import Count, QuerySet
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.dashboard.snippets import api_base_url
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.dashboard.views.playground import model_choices
from apps.evals import actions as eval_actions
from apps.evals.models import Eval, EvalOutputItem, EvalRun
from apps.jobs.models import STOP_CANCEL, Job
from apps.projects.models import Project
from apps.registry.models import Task

PAGE_SIZE = 50
ITEMS_PAGE_SIZE = 50
# Cells show the start of long text: a page of 50 items with whole prompts and answers would be
# megabytes. The whole item is in the API (`/v1/evals/{id}/runs/{id}/output_items/{id}`).
CLIP = 400
CLIP_REASON = 300
# The input cell shows a sample's last message (the question asked, what differs from item to item);
# the ones before it (a system prompt every item shares) fold under it, at most this many.
EARLIER_MESSAGES = 10
STATUS_LABELS = {
    "queued": "Queued",
    "in_progress": "In progress",
    "cancelling": "Cancelling",
    "completed": "Completed",
    "failed": "Failed",
    "canceled": "Cancelled",
}
# The API spells it "canceled"; the stylesheet's badge, like every other page, "cancelled".
STATUS_BADGES = {"canceled": "cancelled"}
ITEM_FILTERS = (("", "All"), ("fail", "Failures"), ("error", "Errors"), ("pass", "Passes"))
ITEM_LABELS = {"pass": "Pass", "fail": "Fail", "error": "Error"}


# --- Lookups, always scoped to the project -------------------------------------------------------
def _get_eval(project: Project, eval_id: str) -> Eval:
    found = Eval.objects.filter(project=project, public_id=eval_id).first()
    if found is None:
        raise Http404("No such eval")
    return found


def _get_run(eval: Eval, run_id: str | None) -> EvalRun:
    run = (
        EvalRun.objects.select_related("job", "job__created_by")
        .filter(eval=eval, job__public_id=run_id)
        .first()
        if run_id
        else None
    )
    if run is None:
        raise Http404("No such run of this eval")
    run.eval = eval  # already loaded, and scoped: spare the query
    return run


# --- What a run's figures say ---------------------------------------------------------------------
def _rate(passed: int, total: int) -> float | None:
    return 100.0 * passed / total if total else None


@dataclass
class CriterionResult:
    id: str
    name: str
    type: str
    passed: int
    failed: int

    @property
    def total(self) -> int:
        return self.passed + self.failed

    @property
    def rate(self) -> float | None:
        return _rate(self.passed, self.total)


@dataclass
class RunSummary:
    run: EvalRun
    job: Job
    status: str  # the API's, or "cancelling" between a cancel request and the worker's stop
    passed: int
    failed: int
    errored: int
    total: int  # items in the data source (known up front)
    criteria: list[CriterionResult] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.job.public_id

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)

    @property
    def badge(self) -> str:
        return STATUS_BADGES.get(self.status, self.status)

    @property
    def graded(self) -> int:
        return self.passed + self.failed + self.errored

    @property
    def pass_rate(self) -> float | None:
        """Of the items graded: an errored item counts against the rate, as it does in OpenAI's."""
        return _rate(self.passed, self.graded)

    @property
    def percent(self) -> float:
        if self.status == "completed":
            return 100.0
        return min(100.0, 100.0 * self.graded / self.total) if self.total else 0.0

    @property
    def running(self) -> bool:
        return not self.job.is_finished


def summarize(run: EvalRun) -> RunSummary:
    """A run's counts: the final result once it has finished, its progress while it runs."""
    job = run.job
    result = job.result or {}
    progress = job.progress or {}
    counts = result.get("result_counts") or progress.get("result_counts") or {}
    status = eval_actions.run_status(job)
    if not job.is_finished and job.stop_requested == STOP_CANCEL:
        status = "cancelling"
    tallies: dict[str, dict[str, Any]] = {
        str(row.get("testing_criteria")): row for row in result.get("per_testing_criteria_results") or []
    } or dict(progress.get("criteria") or {})
    criteria = []
    for criterion in run.eval.testing_criteria:
        tally = tallies.get(criterion["id"]) or {}
        criteria.append(
            CriterionResult(
                id=criterion["id"],
                name=criterion["name"],
                type=criterion["type"],
                passed=int(tally.get("passed", 0)),
                failed=int(tally.get("failed", 0)),
            )
        )
    passed, failed, errored = (int(counts.get(key, 0)) for key in ("passed", "failed", "errored"))
    # A finished run's total is what it graded; a running one's, the rows it will read.
    total = int(counts.get("total") or 0) if job.is_finished else int(progress.get("total") or 0)
    return RunSummary(
        run=run,
        job=job,
        status=status,
        passed=passed,
        failed=failed,
        errored=errored,
        total=max(total, passed + failed + errored),
        criteria=criteria,
    )


def criterion_settings(criterion: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings that tell a criterion apart, as (label, value) pairs; templates stay out."""
    kind = criterion.get("type")
    shown: list[tuple[str, str]] = []
    if kind == "string_check":
        shown = [
            ("operation", str(criterion.get("operation", ""))),
            ("input", _clip(str(criterion.get("input", "")), 120)),
            ("reference", _clip(str(criterion.get("reference", "")), 120)),
        ]
    elif kind == "text_similarity":
        shown = [
            ("metric", str(criterion.get("evaluation_metric", ""))),
            ("pass threshold", _number(criterion.get("pass_threshold"))),
        ]
    elif kind == "score_model":
        low, high = criterion.get("range") or [0, 1]
        threshold = criterion.get("pass_threshold")
        shown = [
            ("judge", str(criterion.get("model", ""))),
            ("range", f"{_number(low)} to {_number(high)}"),
            # The grader's own default: the middle of the range.
            ("pass threshold", _number((low + high) / 2 if threshold is None else threshold)),
        ]
    elif kind == "label_model":
        shown = [
            ("judge", str(criterion.get("model", ""))),
            ("labels", ", ".join(map(str, criterion.get("labels") or []))),
            ("passing", ", ".join(map(str, criterion.get("passing_labels") or []))),
        ]
    return shown


def _number(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return "—" if value is None else str(value)


def _clip(text: str, limit: int = CLIP) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _text(value: Any, depth: int = 0) -> str:
    """Message content as text: a string, or the text of its content parts. A jsonl run shows its
    rows' samples as they were given, so nesting is bounded here rather than trusted."""
    if isinstance(value, str):
        return value
    if depth > MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return str(value.get("text", "")) if "text" in value else _json(value)
    if isinstance(value, list):
        return "".join(_text(part, depth + 1) for part in value)
    return "" if value is None else _json(value)


MAX_DEPTH = 20


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        return "(nested too deeply to show)"


# --- An item as a row ------------------------------------------------------------------------------
@dataclass
class Message:
    role: str
    content: str


@dataclass
class Grade:
    name: str
    score: str
    passed: bool | None  # None: the item has no result for this criterion (it errored before)
    reason: str = ""
    reason_full: str = ""
    error: bool = False


@dataclass
class ItemRow:
    item: EvalOutputItem
    last: Message | None  # None: nothing was sent (a jsonl run, or an item refused before)
    earlier: list[Message]
    left_out: int  # messages before `earlier`, not shown
    item_json: str
    output: str
    output_error: str
    grades: list[Grade]

    @property
    def status_label(self) -> str:
        return ITEM_LABELS.get(self.item.status, self.item.status)


def judge_reason(text: str) -> str:
    """A judge's answer, readably: the conclusions of its steps and its result when it answered in
    the grader's format ({"steps": [{description, conclusion}], "result": …}), else as it is."""
    try:
        answer = json.loads(text)
    except ValueError:
        return text
    if not isinstance(answer, dict) or not isinstance(answer.get("steps"), list):
        return text
    parts = [
        str(step.get("conclusion") or step.get("description") or "")
        for step in answer["steps"]
        if isinstance(step, dict)
    ]
    if "result" in answer:
        result = answer["result"]
        parts.append(f"Result: {result if isinstance(result, str) else _json(result)}")
    return " ".join(part for part in parts if part) or text


def _reason(result: dict[str, Any]) -> str:
    if result.get("error"):
        return str(result["error"])
    sample = result.get("sample")
    output = sample.get("output") if isinstance(sample, dict) else None
    if isinstance(output, list) and output and isinstance(output[0], dict):
        return judge_reason(_text(output[0].get("content")))
    return ""


def _grades(item: EvalOutputItem, criteria: list[dict[str, Any]]) -> list[Grade]:
    by_id = {str(r.get("id")): r for r in item.results if isinstance(r, dict)}
    by_name = {str(r.get("name")): r for r in item.results if isinstance(r, dict)}
    grades = []
    for criterion in criteria:
        result = by_id.get(criterion["id"]) or by_name.get(criterion["name"])
        if result is None:
            grades.append(Grade(name=criterion["name"], score="—", passed=None))
            continue
        reason = _reason(result)
        grades.append(
            Grade(
                name=criterion["name"],
                score=_number(round(float(result.get("score") or 0), 3)),
                passed=bool(result.get("passed")),
                reason=_clip(reason, CLIP_REASON),
                reason_full=_clip(reason, 4000) if len(reason) > CLIP_REASON else "",
                error=bool(result.get("error")),
            )
        )
    return grades


def _output(sample: dict[str, Any] | None) -> tuple[str, str]:
    """(the model's answer, the sampling error) of an item's sample: a completions run's, or the
    sample a jsonl row brought (output_text, or the chat choices)."""
    if not isinstance(sample, dict):
        return "", ""
    error = sample.get("error")
    message = str(error.get("message") or error.get("code") or "") if isinstance(error, dict) else ""
    output = sample.get("output")
    if isinstance(output, list):  # a completions run's sample: empty when the model failed
        first = output[0] if output else None
        return _text(first.get("content") if isinstance(first, dict) else first), message
    if isinstance(sample.get("output_text"), str):
        return sample["output_text"], message
    choices = sample.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return _text((choices[0].get("message") or {}).get("content")), message
    rest = {key: value for key, value in sample.items() if key not in ("error", "input", "output")}
    return (_json(rest) if rest else ""), message


def item_row(item: EvalOutputItem, criteria: list[dict[str, Any]]) -> ItemRow:
    sample = item.sample if isinstance(item.sample, dict) else None
    sent = sample.get("input") if sample else None
    messages = [
        Message(role=str(m.get("role", "")), content=_clip(_text(m.get("content"))))
        for m in (sent if isinstance(sent, list) else [])
        if isinstance(m, dict)
    ]
    output, error = _output(sample)
    return ItemRow(
        item=item,
        last=messages[-1] if messages else None,
        earlier=messages[-1 - EARLIER_MESSAGES : -1],
        left_out=max(0, len(messages) - 1 - EARLIER_MESSAGES),
        # A jsonl run sends nothing: its input is the item itself.
        item_json=_clip(_json(item.datasource_item)),
        output=_clip(output),
        output_error=_clip(error, CLIP_REASON),
        grades=_grades(item, criteria),
    )


# --- The evals list ------------------------------------------------------------------------------------
@member_required
@require_GET
def eval_list(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    evals = Eval.objects.filter(project=project).annotate(run_count=Count("runs")).order_by("-id")
    page = Paginator(evals, PAGE_SIZE).get_page(request.GET.get("page"))
    latest = _latest_runs(list(page))
    rows = [{"eval": e, "latest": latest.get(e.pk)} for e in page]
    context = {
        "project": project,
        "current_project": project,
        "page": page,
        "rows": rows,
        "api_base_url": api_base_url(),
        "example_model": _example_model(project) if not rows else "",
    }
    return render(request, "dashboard/evals.html", context)


def _example_model(project: Project) -> str:
    """A chat model the project may call, for the empty page's example to run as it is."""
    choices = model_choices(project.organization, Task.GENERATION)
    return next((choice["name"] for choice in choices if choice["allowed"]), "MODEL")


def _latest_runs(evals: list[Eval]) -> dict[int, RunSummary]:
    """Each eval's newest run, in one query (PostgreSQL's DISTINCT ON)."""
    runs = (
        EvalRun.objects.filter(eval__in=evals)
        .select_related("job")
        .order_by("eval_id", "-id")
        .distinct("eval_id")
    )
    by_pk = {e.pk: e for e in evals}
    latest = {}
    for run in runs:
        run.eval = by_pk[run.eval_id]
        latest[run.eval_id] = summarize(run)
    return latest


# --- An eval ---------------------------------------------------------------------------------------------
@member_required
@require_GET
def eval_detail(request: OrganizationRequest, project_id: str, eval_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    evaluation = _get_eval(project, eval_id)
    runs = EvalRun.objects.filter(eval=evaluation).select_related("job").order_by("-id")
    page = Paginator(runs, PAGE_SIZE).get_page(request.GET.get("page"))
    summaries = []
    for run in page:
        run.eval = evaluation
        summaries.append(summarize(run))
    context = {
        "project": project,
        "current_project": project,
        "eval": evaluation,
        "criteria": [{**c, "settings": criterion_settings(c)} for c in evaluation.testing_criteria],
        "page": page,
        "runs": summaries,
        # The newest run against the one before it: what one usually wants to compare.
        "default_a": summaries[1].id if len(summaries) > 1 else "",
        "default_b": summaries[0].id if summaries else "",
        "item_schema": json.dumps(evaluation.data_source_config.get("item_schema") or {}, indent=2),
    }
    return render(request, "dashboard/eval_detail.html", context)


# --- A run ----------------------------------------------------------------------------------------------
def _run_context(
    request: OrganizationRequest, project: Project, evaluation: Eval, run: EvalRun
) -> dict[str, Any]:
    summary = summarize(run)
    job = run.job
    data_source = job.request.get("data_source") or {}
    source = data_source.get("source") or {}
    return {
        "project": project,
        "current_project": project,
        "eval": evaluation,
        "run": run,
        "job": job,
        "summary": summary,
        "can_cancel": summary.running
        and summary.status != "cancelling"
        and request.membership.can_destroy(job.created_by_id),
        "source_type": data_source.get("type", ""),
        "source_rows": len(source.get("content") or []) if source.get("type") == "file_content" else None,
        "source_file_id": source.get("id") if source.get("type") == "file_id" else "",
        "sampling_params": data_source.get("sampling_params") or {},
        "per_model_usage": (job.result or {}).get("per_model_usage") or [],
    }


def _page_links(page: Page[Any], params: dict[str, str]) -> dict[str, str]:
    """The pager's query strings, keeping the page's filters."""
    kept = {key: value for key, value in params.items() if value}
    links = {}
    if page.has_previous():
        links["previous"] = urlencode({**kept, "page": page.previous_page_number()})
    if page.has_next():
        links["next"] = urlencode({**kept, "page": page.next_page_number()})
    return links


@member_required
@require_GET
def eval_run(request: OrganizationRequest, project_id: str, eval_id: str, run_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    evaluation = _get_eval(project, eval_id)
    run = _get_run(evaluation, run_id)
    status = request.GET.get("status", "")
    if status not in ITEM_LABELS:
        status = ""
    items: QuerySet[EvalOutputItem] = EvalOutputItem.objects.filter(run=run).order_by("datasource_item_id")
    counts = dict(items.values_list("status").annotate(n=Count("id")).order_by())
    if status:
        items = items.filter(status=status)
    page = Paginator(items, ITEMS_PAGE_SIZE).get_page(request.GET.get("page"))
    criteria = evaluation.testing_criteria
    context = _run_context(request, project, evaluation, run)
    context.update(
        {
            "status_filter": status,
            "filters": [
                {
                    "value": value,
                    "label": label,
                    "count": sum(counts.values()) if not value else counts.get(value, 0),
                    "query": urlencode({"status": value}) if value else "",
                }
                for value, label in ITEM_FILTERS
            ],
            "page": page,
            "page_links": _page_links(page, {"status": status}),
            "rows": [item_row(item, criteria) for item in page],
            "criteria_names": [c["name"] for c in criteria],
            "recorded": sum(counts.values()),
        }
    )
    return render(request, "dashboard/eval_run.html", context)


@member_required
@require_GET
def eval_run_status(request: OrganizationRequest, project_id: str, eval_id: str, run_id: str) -> HttpResponse:
    """The fragment the run page polls every 2 s while the run goes on. When it has just finished,
    the whole page is reloaded instead, for the final items table under the final figures."""
    project = get_project(request, project_id)
    evaluation = _get_eval(project, eval_id)
    run = _get_run(evaluation, run_id)
    response = render(
        request, "dashboard/_eval_run_status.html", _run_context(request, project, evaluation, run)
    )
    if run.job.is_finished and request.headers.get("HX-Request"):
        response["HX-Refresh"] = "true"
    return response


@member_required
@require_POST
def eval_run_cancel(request: OrganizationRequest, project_id: str, eval_id: str, run_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    evaluation = _get_eval(project, eval_id)
    run = _get_run(evaluation, run_id)
    stopped: list[Job] = []
    if run_action(request, lambda: stopped.append(eval_actions.cancel_run(run, request.user))):
        if stopped[0].is_finished:
            messages.success(request, "Run cancelled.")
        else:
            messages.success(
                request, "Cancelling: the run stops after the item it is grading; the items graded are kept."
            )
    return redirect("dashboard:eval_run", project.public_id, evaluation.public_id, run.job.public_id)


# --- Two runs side by side -------------------------------------------------------------------------------
@dataclass
class ComparedCriterion:
    name: str
    type: str
    a: CriterionResult
    b: CriterionResult

    @property
    def difference(self) -> float | None:
        return _difference(self.a.rate, self.b.rate)


@dataclass
class ComparedItem:
    index: int
    a: ItemRow | None
    b: ItemRow | None

    @property
    def input(self) -> ItemRow:
        # Both runs read the same row; take either's for the input cell.
        row = self.a or self.b
        assert row is not None
        return row

    @property
    def sides(self) -> list[tuple[str, ItemRow | None]]:
        return [("A", self.a), ("B", self.b)]

    @property
    def differs(self) -> bool:
        return (self.a.item.status if self.a else None) != (self.b.item.status if self.b else None)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _statuses(run: EvalRun) -> dict[int, str]:
    return dict(EvalOutputItem.objects.filter(run=run).values_list("datasource_item_id", "status"))


def _changes(a: dict[int, str], b: dict[int, str]) -> dict[str, int]:
    both = a.keys() & b.keys()
    return {
        "fixed": sum(1 for i in both if a[i] != "pass" and b[i] == "pass"),
        "broken": sum(1 for i in both if a[i] == "pass" and b[i] != "pass"),
        "only_a": len(a.keys() - b.keys()),
        "only_b": len(b.keys() - a.keys()),
    }


def _rows(run: EvalRun, indexes: Iterable[int], criteria: list[dict[str, Any]]) -> dict[int, ItemRow]:
    items = EvalOutputItem.objects.filter(run=run, datasource_item_id__in=list(indexes))
    return {item.datasource_item_id: item_row(item, criteria) for item in items}


@member_required
@require_GET
def eval_compare(request: OrganizationRequest, project_id: str, eval_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    evaluation = _get_eval(project, eval_id)
    if not request.GET.get("a") or not request.GET.get("b"):
        # Two runs are picked on the eval's page; a bare link (or one missing a run) goes there.
        messages.info(request, "Pick two runs to compare.")
        return redirect("dashboard:eval", project.public_id, evaluation.public_id)
    run_a = _get_run(evaluation, request.GET.get("a"))
    run_b = _get_run(evaluation, request.GET.get("b"))
    a, b = summarize(run_a), summarize(run_b)
    only_differences = request.GET.get("differ") == "1"
    # Joined by the row each item was graded on. Statuses only, for every item: the page's rows are
    # read in full below, 50 at a time.
    statuses_a, statuses_b = _statuses(run_a), _statuses(run_b)
    indexes = sorted(statuses_a.keys() | statuses_b.keys())
    differing = [i for i in indexes if statuses_a.get(i) != statuses_b.get(i)]
    page = Paginator(differing if only_differences else indexes, ITEMS_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    criteria = evaluation.testing_criteria
    rows_a, rows_b = _rows(run_a, page, criteria), _rows(run_b, page, criteria)
    context = {
        "project": project,
        "current_project": project,
        "eval": evaluation,
        "a": a,
        "b": b,
        "sides": [("A", a), ("B", b)],
        "difference": _difference(a.pass_rate, b.pass_rate),
        "criteria": [
            ComparedCriterion(name=ca.name, type=ca.type, a=ca, b=cb)
            for ca, cb in zip(a.criteria, b.criteria, strict=True)
        ],
        "items": [ComparedItem(index=i, a=rows_a.get(i), b=rows_b.get(i)) for i in page],
        "page": page,
        "page_links": _page_links(page, {"a": a.id, "b": b.id, "differ": "1" if only_differences else ""}),
        "only_differences": only_differences,
        "all_query": urlencode({"a": a.id, "b": b.id}),
        "differ_query": urlencode({"a": a.id, "b": b.id, "differ": "1"}),
        "item_count": len(indexes),
        "differ_count": len(differing),
        "changes": _changes(statuses_a, statuses_b),
        "criteria_names": [c["name"] for c in criteria],
    }
    return render(request, "dashboard/eval_compare.html", context)
