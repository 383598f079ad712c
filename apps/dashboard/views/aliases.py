"""Aliases pages: the project's model aliases (`support-bot@prod`) with a form to make one, and each
alias's page: where it points, its gate and protection, a form to move it (with the eval run that
allows the move when it is gated), rollback, its settings, deletion, and every move it made.

The rules are `apps.evals.aliases`' (the API's): these views read the forms, call the actions
inside `run_action` and redirect (POST-redirect-GET). A refusal, such as a gate the run does not
pass, comes back as a message on the page, with the form filled in as it was sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Max
from django.http import Http404, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.middleware import OrganizationRequest
from apps.core.errors import ActionError
from apps.dashboard.views.common import get_project, member_required, run_action
from apps.dashboard.views.playground import model_choices
from apps.evals import aliases
from apps.evals.models import Eval, EvalRun
from apps.jobs.models import JobStatus
from apps.projects.models import Project
from apps.registry.models import ModelAlias, Task

MOVES_PAGE_SIZE = 50
# The run select of a gated alias lists this many of the gate eval's newest completed runs.
RUN_CHOICES = 100
# The eval select of the gate forms lists this many of the project's newest evals.
EVAL_CHOICES = 200
DEFAULT_THRESHOLD_PERCENT = "80"


# --- Lookups, always scoped to the project --------------------------------------------------------
def _get_alias(project: Project, name: str) -> ModelAlias:
    alias = (
        ModelAlias.objects.filter(project=project, name=name)
        .select_related("model", "project__organization")
        .first()
    )
    if alias is None:
        raise Http404("No such alias")
    return alias


def _evals_by_id(project: Project, ids: set[str]) -> dict[str, Eval]:
    return {e.public_id: e for e in Eval.objects.filter(project=project, public_id__in=ids)} if ids else {}


# --- What a gate and a run say ---------------------------------------------------------------------
def percent(rate: float) -> str:
    """0.8 → "80%", 0.333 → "33.3%": a threshold as it was typed."""
    return f"{round(rate * 100, 2):g}%"


@dataclass
class Gate:
    eval_id: str
    eval: Eval | None  # None: the eval was deleted
    min_pass_rate: float
    not_worse: bool

    @property
    def eval_label(self) -> str:
        if self.eval is None:
            return f"{self.eval_id} (deleted)"
        return self.eval.name or self.eval_id

    @property
    def threshold(self) -> str:
        return percent(self.min_pass_rate)

    @property
    def percent_value(self) -> str:
        """The threshold for the form's number field, in percent."""
        return f"{round(self.min_pass_rate * 100, 2):g}"


def gate_of(alias: ModelAlias, evals: dict[str, Eval]) -> Gate | None:
    gate = alias.gate or {}
    if not gate:
        return None
    eval_id = str(gate.get("eval_id", ""))
    return Gate(
        eval_id=eval_id,
        eval=evals.get(eval_id),
        min_pass_rate=float(gate.get("min_pass_rate", 1.0)),
        not_worse=bool(gate.get("not_worse")),
    )


@dataclass
class RunChoice:
    id: str
    model: str
    rate: float
    passed: int
    total: int

    @property
    def figures(self) -> str:
        """As the gate's refusals say it: 90.0% (9 of 10)."""
        return f"{self.rate * 100:.1f}% ({self.passed} of {self.total})"

    @property
    def label(self) -> str:
        """An option of the run select: tiny-llama · 90.0% (9 of 10) · evalrun_…"""
        return f"{self.model} · {self.figures} · {self.id}"


def run_choice(run: EvalRun) -> RunChoice:
    rate, passed, total = aliases.pass_rate(run)
    return RunChoice(
        id=run.job.public_id,
        model=run.job.model_name or "no model (a jsonl run)",
        rate=rate,
        passed=passed,
        total=total,
    )


def _completed_runs(evaluation: Eval) -> list[RunChoice]:
    runs = (
        EvalRun.objects.filter(eval=evaluation, job__status=JobStatus.SUCCEEDED)
        .select_related("job")
        .order_by("-job__finished_at", "-id")[:RUN_CHOICES]
    )
    return [run_choice(run) for run in runs]


def _baseline(evaluation: Eval, model_name: str) -> RunChoice | None:
    """The latest completed run of the eval on the alias's current model: what `not_worse` compares with."""
    run = (
        EvalRun.objects.filter(eval=evaluation, job__model_name=model_name, job__status=JobStatus.SUCCEEDED)
        .select_related("job")
        .order_by("-job__finished_at", "-id")
        .first()
    )
    return run_choice(run) if run else None


# --- Reading the forms -----------------------------------------------------------------------------
def gate_body(form: QueryDict) -> dict[str, Any] | None:
    """The gate the form asks for: None (a free alias) when no eval is chosen. The pass rate is
    typed in percent; the action takes a fraction."""
    eval_id = form.get("gate_eval", "").strip()
    if not eval_id:
        return None
    raw = form.get("min_pass_rate", "").strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:  # also refuses nan
        raise ActionError("The minimum pass rate must be a number from 0 to 100 (percent).")
    return {"eval_id": eval_id, "min_pass_rate": round(value / 100, 6), "not_worse": "not_worse" in form}


def _eval_choices(project: Project) -> list[Eval]:
    return list(Eval.objects.filter(project=project).order_by("-id")[:EVAL_CHOICES])


def _model_choices(project: Project) -> dict[str, list[dict[str, Any]]]:
    organization = project.organization
    return {
        "generators": model_choices(organization, Task.GENERATION),
        "classifiers": model_choices(organization, Task.CLASSIFICATION),
    }


def _again(url_name: str, args: list[str], values: dict[str, str]) -> HttpResponse:
    """Back to the form's page, filled in as it was sent (after a refusal)."""
    query = urlencode({key: value for key, value in values.items() if value})
    return redirect(reverse(url_name, args=args) + (f"?{query}" if query else ""))


# --- The list --------------------------------------------------------------------------------------
@member_required
@require_GET
def alias_list(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    rows = list(
        ModelAlias.objects.filter(project=project)
        .select_related("model")
        .annotate(last_moved_at=Max("moves__created_at"))
        .order_by("name")
    )
    evals = _evals_by_id(project, {str(a.gate.get("eval_id")) for a in rows if a.gate})
    get = request.GET
    values = {
        "name": get.get("name", ""),
        "model": get.get("model", ""),
        "protected": get.get("protected", ""),
        "gate_eval": get.get("gate_eval", ""),
        "min_pass_rate": get.get("min_pass_rate", DEFAULT_THRESHOLD_PERCENT),
        "not_worse": get.get("not_worse", ""),
    }
    context = {
        "project": project,
        "current_project": project,
        "rows": [{"alias": a, "gate": gate_of(a, evals)} for a in rows],
        "evals": _eval_choices(project),
        **_model_choices(project),
        "values": values,
        "can_manage": request.membership.can_manage,
        "max_aliases": aliases.MAX_ALIASES,
    }
    return render(request, "dashboard/aliases.html", context)


@member_required
@require_POST
def alias_create(request: OrganizationRequest, project_id: str) -> HttpResponse:
    project = get_project(request, project_id)
    post = request.POST
    values = {
        "name": post.get("name", "").strip(),
        "model": post.get("model", "").strip(),
        "protected": "on" if "protected" in post else "",
        "gate_eval": post.get("gate_eval", "").strip(),
        "min_pass_rate": post.get("min_pass_rate", "").strip(),
        "not_worse": "on" if "not_worse" in post else "",
    }
    created: list[ModelAlias] = []

    def create() -> None:
        body = {
            "name": values["name"],
            "model": values["model"],
            "protected": bool(values["protected"]),
            "gate": gate_body(post),
        }
        created.append(aliases.create(project, body, request.user))

    if run_action(request, create):
        alias = created[0]
        model = alias.model.name if alias.model else values["model"]
        messages.success(request, f"Alias “{alias.name}” created: it points to {model}.")
        return redirect("dashboard:alias", project.public_id, alias.name)
    return _again("dashboard:aliases", [project.public_id], values)


# --- An alias --------------------------------------------------------------------------------------
@member_required
@require_GET
def alias_detail(request: OrganizationRequest, project_id: str, name: str) -> HttpResponse:
    project = get_project(request, project_id)
    alias = _get_alias(project, name)
    gate_eval_id = str((alias.gate or {}).get("eval_id", ""))
    gate = gate_of(alias, _evals_by_id(project, {gate_eval_id} if gate_eval_id else set()))
    current = alias.model.name if alias.model else ""
    moves = Paginator(alias.moves.select_related("moved_by"), MOVES_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    run_ids = {move.run_id for move in moves if move.run_id}
    run_evals = dict(
        EvalRun.objects.filter(eval__project=project, job__public_id__in=run_ids).values_list(
            "job__public_id", "eval__public_id"
        )
    )
    last = alias.moves.exclude(kind="create").first()
    membership = request.membership
    context = {
        "project": project,
        "current_project": project,
        "alias": alias,
        "gate": gate,
        "runs": _completed_runs(gate.eval) if gate and gate.eval else [],
        "baseline": _baseline(gate.eval, current) if gate and gate.eval and current else None,
        **_model_choices(project),
        "evals": _eval_choices(project),
        # A protected alias is moved, rolled back, changed and deleted by owners and admins only.
        "can_change": not alias.protected or membership.can_manage,
        "can_manage": membership.can_manage,
        "rollback_to": last.from_model if last else "",
        "moves": moves,
        "history": [{"move": m, "run_eval": run_evals.get(m.run_id, "")} for m in moves],
        "selected": {"model": request.GET.get("model", ""), "run_id": request.GET.get("run_id", "")},
        "api_example": f'model="{alias.name}"',
    }
    return render(request, "dashboard/alias_detail.html", context)


@member_required
@require_POST
def alias_move(request: OrganizationRequest, project_id: str, name: str) -> HttpResponse:
    project = get_project(request, project_id)
    alias = _get_alias(project, name)
    values = {
        "model": request.POST.get("model", "").strip(),
        "run_id": request.POST.get("run_id", "").strip(),
    }
    body: dict[str, Any] = {"model": values["model"]}
    if alias.gate:
        body["run_id"] = values["run_id"] or None
    moved: list[ModelAlias] = []
    if run_action(request, lambda: moved.append(aliases.move(alias, body, request.user))):
        target = moved[0].model.name if moved[0].model else values["model"]
        allowed = f", allowed by run {values['run_id']}" if alias.gate else ""
        messages.success(request, f"“{alias.name}” now points to {target}{allowed}.")
        return redirect("dashboard:alias", project.public_id, alias.name)
    return _again("dashboard:alias", [project.public_id, alias.name], values)


@member_required
@require_POST
def alias_rollback(request: OrganizationRequest, project_id: str, name: str) -> HttpResponse:
    project = get_project(request, project_id)
    alias = _get_alias(project, name)
    rolled: list[ModelAlias] = []
    if run_action(request, lambda: rolled.append(aliases.rollback(alias, request.user))):
        target = rolled[0].model.name if rolled[0].model else ""
        messages.success(request, f"“{alias.name}” rolled back: it points to {target} again.")
    return redirect("dashboard:alias", project.public_id, alias.name)


@member_required
@require_POST
def alias_update(request: OrganizationRequest, project_id: str, name: str) -> HttpResponse:
    project = get_project(request, project_id)
    alias = _get_alias(project, name)
    post = request.POST

    def update() -> None:
        body: dict[str, Any] = {"gate": gate_body(post)}
        # The checkbox is on the form for owners and admins only; a form without it leaves it be.
        if "protected_field" in post:
            body["protected"] = "protected" in post
        aliases.update(alias, body, request.user)

    run_action(request, update, f"Settings of “{alias.name}” saved.")
    return redirect("dashboard:alias", project.public_id, alias.name)


@member_required
@require_POST
def alias_delete(request: OrganizationRequest, project_id: str, name: str) -> HttpResponse:
    project = get_project(request, project_id)
    alias = _get_alias(project, name)
    if run_action(
        request,
        lambda: aliases.delete(alias, request.user),
        f"Alias “{alias.name}” deleted. Requests that name it now fail with model_not_found.",
    ):
        return redirect("dashboard:aliases", project.public_id)
    return redirect("dashboard:alias", project.public_id, alias.name)
