"""Model aliases that move only when an eval passes (docs/api.md, "Model aliases").

An alias (`support-bot@prod`) names one of the project's callable models; every inference route,
batch and eval run resolves it when the request is made (`apps.jobs.inference.find_model`). An alias
with a gate moves only to a model that a completed run of the gate's eval passed well enough, and,
with `not_worse`, no worse than the alias's current model on the same eval. Every change is an
`AliasMove`; a rollback moves back to where the last move came from.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction

from apps.accounts.actions import get_membership
from apps.accounts.models import User
from apps.core.errors import ActionError, PermissionDenied
from apps.evals.models import Eval, EvalRun
from apps.jobs.inference import find_model
from apps.jobs.models import JobStatus
from apps.projects.models import Project
from apps.registry.models import AliasMove, ModelAlias

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,30}@[a-z0-9][a-z0-9._-]{0,30}")
PROTECTED_REFUSAL = "Only owners and admins can {verb} the protected alias '{name}'."
MAX_ALIASES = 100


def _keys(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    for key in body:
        if key not in allowed:
            raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
    return body


def parse_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ActionError(
            "name must be a name and a label joined by @, such as 'support-bot@prod': lowercase letters, "
            "digits, '.', '_' and '-', at most 31 characters each.",
            param="name",
        )
    return value


def parse_gate(project: Project, value: Any) -> dict[str, Any]:
    """`{"eval_id", "min_pass_rate", "not_worse"}`; null or absent: a free alias."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ActionError("gate must be an object: {eval_id, min_pass_rate, not_worse}.", param="gate")
    for key in value:
        if key not in ("eval_id", "min_pass_rate", "not_worse"):
            raise ActionError(f"Unrecognized request argument supplied: gate.{key}", param=f"gate.{key}")
    eval_id = value.get("eval_id")
    if not isinstance(eval_id, str) or not Eval.objects.filter(project=project, public_id=eval_id).exists():
        raise ActionError(f"gate.eval_id: no such eval in this project: '{eval_id}'.", param="gate.eval_id")
    rate = value.get("min_pass_rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ActionError("gate.min_pass_rate must be a number from 0 to 1.", param="gate.min_pass_rate")
    not_worse = value.get("not_worse", False)
    if not isinstance(not_worse, bool):
        raise ActionError("gate.not_worse must be true or false.", param="gate.not_worse")
    return {"eval_id": eval_id, "min_pass_rate": float(rate), "not_worse": not_worse}


def _target(project: Project, value: Any, param: str = "model") -> str:
    """The model an alias may point to: one the project may call (never another alias)."""
    if isinstance(value, str) and "@" in value:
        raise ActionError("An alias points to a model, not to another alias.", param=param)
    try:
        return find_model(project, value).name
    except ActionError as exc:
        raise ActionError(exc.message, code=exc.code, param=param, status=exc.status) from None


def _require_may_change(alias: ModelAlias, user: User | None, verb: str) -> None:
    """Anyone in the project moves a free alias; a protected one is for owners and admins."""
    if not alias.protected:
        return
    membership = get_membership(user, alias.project.organization) if user is not None else None
    if membership is None or not membership.can_manage:
        raise PermissionDenied(PROTECTED_REFUSAL.format(verb=verb, name=alias.name))


def create(project: Project, body: Any, user: User | None) -> ModelAlias:
    body = _keys(body, ("name", "model", "protected", "gate"))
    name = parse_name(body.get("name"))
    model_name = _target(project, body.get("model"))
    protected = body.get("protected", False)
    if not isinstance(protected, bool):
        raise ActionError("protected must be true or false.", param="protected")
    if protected:
        membership = get_membership(user, project.organization) if user is not None else None
        if membership is None or not membership.can_manage:
            raise PermissionDenied("Only owners and admins can create a protected alias.")
    gate = parse_gate(project, body.get("gate"))
    if ModelAlias.objects.filter(project=project).count() >= MAX_ALIASES:
        raise ActionError(f"A project has at most {MAX_ALIASES} aliases; delete one first.", param="name")
    try:
        with transaction.atomic():
            alias = ModelAlias.objects.create(
                project=project,
                name=name,
                model=find_model(project, model_name),
                protected=protected,
                gate=gate,
                created_by=user,
            )
            AliasMove.objects.create(alias=alias, kind="create", to_model=model_name, moved_by=user)
    except IntegrityError:
        raise ActionError(
            f"The alias '{name}' already exists in this project.", param="name", status=400
        ) from None
    return alias


def update(alias: ModelAlias, body: Any, user: User | None) -> ModelAlias:
    """Changes whether it is protected and its gate (owners and admins when protected, before or after)."""
    body = _keys(body, ("protected", "gate"))
    _require_may_change(alias, user, "change")
    if "protected" in body:
        if not isinstance(body["protected"], bool):
            raise ActionError("protected must be true or false.", param="protected")
        if body["protected"] and not alias.protected:
            membership = get_membership(user, alias.project.organization) if user is not None else None
            if membership is None or not membership.can_manage:
                raise PermissionDenied("Only owners and admins can protect an alias.")
        alias.protected = body["protected"]
    if "gate" in body:
        alias.gate = parse_gate(alias.project, body["gate"])
    alias.save(update_fields=["protected", "gate", "updated_at"])
    return alias


def delete(alias: ModelAlias, user: User | None) -> None:
    _require_may_change(alias, user, "delete")
    alias.delete()


def pass_rate(run: EvalRun) -> tuple[float, int, int]:
    counts = (run.job.result or {}).get("result_counts") or {}
    total, passed = int(counts.get("total", 0)), int(counts.get("passed", 0))
    return (passed / total if total else 0.0), passed, total


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _latest_run(eval: Eval, model_name: str) -> EvalRun | None:
    return (
        EvalRun.objects.filter(eval=eval, job__model_name=model_name, job__status=JobStatus.SUCCEEDED)
        .select_related("job")
        .order_by("-job__finished_at", "-id")
        .first()
    )


def check_gate(alias: ModelAlias, candidate: str, run_id: Any) -> EvalRun | None:
    """The run that allows moving `alias` to `candidate`; None for a free alias. ActionError (400
    `eval_gate_failed`, not 409: the SDK retries a 409, and this refusal stands) saying why when it
    does not."""
    gate = alias.gate or {}
    if not gate:
        return None
    eval = Eval.objects.filter(project=alias.project, public_id=gate["eval_id"]).first()
    if eval is None:
        raise ActionError(
            f"The alias '{alias.name}' is gated on eval {gate['eval_id']}, which was deleted; change its gate.",
            code="eval_gate_failed",
            param="gate",
            status=400,
        )
    if not isinstance(run_id, str) or not run_id:
        raise ActionError(
            f"The alias '{alias.name}' moves only with a run of eval {eval.public_id} that {candidate} passed: "
            "give its run_id.",
            param="run_id",
        )
    run = EvalRun.objects.filter(eval=eval, job__public_id=run_id).select_related("job").first()
    if run is None:
        raise ActionError(
            f"No run '{run_id}' of eval {eval.public_id} in this project.", param="run_id", status=404
        )

    def refuse(message: str) -> ActionError:
        return ActionError(message, code="eval_gate_failed", param="run_id", status=400)

    if run.job.status != JobStatus.SUCCEEDED:
        raise refuse(f"Run {run_id} has not completed; an alias moves only on a completed run.")
    if run.job.model_name != candidate:
        sampled = run.job.model_name or "no model (a jsonl run)"
        raise refuse(f"Run {run_id} sampled {sampled}, not {candidate}.")
    rate, passed, total = pass_rate(run)
    needed = float(gate["min_pass_rate"])
    if rate < needed:
        raise refuse(
            f"Run {run_id} passed {_percent(rate)} of its items ({passed} of {total}); '{alias.name}' needs "
            f"{_percent(needed)}."
        )
    current = alias.model.name if alias.model else ""
    if gate.get("not_worse") and current and current != candidate:
        baseline = _latest_run(eval, current)
        if baseline is None:
            raise refuse(
                f"'{alias.name}' moves only to a model no worse than {current} on eval {eval.public_id}, and "
                f"{current} has no completed run of it: run the eval on {current} first."
            )
        base_rate, base_passed, base_total = pass_rate(baseline)
        if rate < base_rate:
            raise refuse(
                f"Run {run_id} passed {_percent(rate)} ({passed} of {total}), worse than {current}'s "
                f"{_percent(base_rate)} ({base_passed} of {base_total}) in run {baseline.job.public_id}."
            )
    return run


def move(alias: ModelAlias, body: Any, user: User | None) -> ModelAlias:
    body = _keys(body, ("model", "run_id"))
    _require_may_change(alias, user, "move")
    candidate = _target(alias.project, body.get("model"))
    with transaction.atomic():
        # The gate is checked against the alias as it is under the lock: two moves at once cannot
        # both compare with the model the other replaced.
        locked = _lock(alias)
        run = check_gate(locked, candidate, body.get("run_id"))
        return _point(locked, candidate, "move", user, run.job.public_id if run else "")


def rollback(alias: ModelAlias, user: User | None) -> ModelAlias:
    """Back to the model the last move or rollback came from, without a gate: undoing a bad move
    cannot wait for an eval. Two rollbacks in a row go back and forth."""
    _require_may_change(alias, user, "roll back")
    with transaction.atomic():
        locked = _lock(alias)
        last = locked.moves.exclude(kind="create").first()
        if last is None or not last.from_model:
            raise ActionError(
                f"The alias '{alias.name}' has never moved: there is nothing to roll back.", status=400
            )
        return _point(locked, _target(alias.project, last.from_model), "rollback", user, "")


def _lock(alias: ModelAlias) -> ModelAlias:
    return (
        ModelAlias.objects.select_for_update(of=("self",))
        .select_related("model", "project__organization")
        .get(pk=alias.pk)
    )


def _point(alias: ModelAlias, model_name: str, kind: str, user: User | None, run_id: str) -> ModelAlias:
    """Inside the caller's transaction, with the alias locked."""
    previous = alias.model.name if alias.model else ""
    alias.model = find_model(alias.project, model_name)
    alias.save(update_fields=["model", "updated_at"])
    AliasMove.objects.create(
        alias=alias, kind=kind, from_model=previous, to_model=model_name, run_id=run_id, moved_by=user
    )
    return alias


def alias_object(alias: ModelAlias) -> dict[str, Any]:
    return {
        "object": "model.alias",
        "name": alias.name,
        "model": alias.model.name if alias.model else None,
        "protected": alias.protected,
        "gate": alias.gate or None,
        "created_at": int(alias.created_at.timestamp()),
        "updated_at": int(alias.updated_at.timestamp()),
    }


def move_object(move: AliasMove) -> dict[str, Any]:
    return {
        "object": "model.alias.move",
        "kind": move.kind,
        "from_model": move.from_model or None,
        "to_model": move.to_model,
        "run_id": move.run_id or None,
        "moved_by": move.moved_by.email if move.moved_by else None,
        "created_at": int(move.created_at.timestamp()),
    }
