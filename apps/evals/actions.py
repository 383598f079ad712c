"""Every change to evals, runs and output items (docs/api.md, "Evals").

A run is admitted as a batch is (entitlement, the spend cap, the plan's models, the plan's batches
at once) and becomes a `jobs.Job` of kind `eval_run`; its worker (`workers/runners/evals.py`) writes
the output items chunk by chunk with `record_items`, in the transaction that bills the chunk.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from apps.accounts.actions import require_manager_or_creator
from apps.accounts.models import ApiKey, User
from apps.core.errors import ActionError
from apps.evals.models import Eval, EvalOutputItem, EvalRun
from apps.evals.parsing import uses_embeddings
from apps.jobs import actions, graders
from apps.jobs.fine_tuning import _max_cost
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.models import File, Project

DELETE_REFUSAL = "Only owners and admins, and the member who created it, can delete this {noun}."


def create_eval(project: Project, parsed: dict[str, Any], user: User | None) -> Eval:
    return Eval.objects.create(project=project, created_by=user, **parsed)


def update_eval(eval: Eval, changes: dict[str, Any]) -> Eval:
    for name, value in changes.items():
        setattr(eval, name, value)
    if changes:
        eval.save(update_fields=list(changes))
    return eval


def delete_eval(eval: Eval, user: User | None) -> None:
    """Deletes the eval with its runs and their items (what the runs billed stays billed). Its
    runs must have stopped, and deleting another member's runs with it is for owners and admins."""
    organization = eval.project.organization
    require_manager_or_creator(user, organization, eval.created_by_id, DELETE_REFUSAL.format(noun="eval"))
    runs = list(eval.runs.select_related("job"))
    going = [run.job.public_id for run in runs if not run.job.is_finished]
    if going:
        raise ActionError(
            f"Eval {eval.public_id} has runs still going ({', '.join(going[:3])}); cancel them, and delete "
            "the eval once they have stopped.",
            status=400,
        )
    for run in runs:
        require_manager_or_creator(
            user, organization, run.job.created_by_id, DELETE_REFUSAL.format(noun="eval: it has others' runs")
        )
    eval.delete()


def delete_run(run: EvalRun, user: User | None) -> None:
    """A run is deleted once it has stopped: its worker writes items, and their bill, until then."""
    job = run.job
    require_manager_or_creator(user, job.organization, job.created_by_id, DELETE_REFUSAL.format(noun="run"))
    if not job.is_finished:
        raise ActionError(
            f"Run {job.public_id} is still {run_status(job)}; cancel it, and delete it once it has stopped.",
            param="run_id",
            status=400,
        )
    run.delete()


def cancel_run(run: EvalRun, user: User | None) -> Job:
    job = run.job
    if job.is_finished:
        raise ActionError(f"Run {job.public_id} is already {run_status(job)}.", param="run_id")
    actions.require_may_stop(user, job, "cancel")
    return actions.cancel(job)


def run_status(job: Job) -> str:
    return {
        JobStatus.QUEUED: "queued",
        JobStatus.VALIDATING_FILES: "queued",
        JobStatus.RUNNING: "in_progress",
        JobStatus.SUCCEEDED: "completed",
        JobStatus.FAILED: "failed",
        JobStatus.CANCELLED: "canceled",
    }.get(JobStatus(job.status), "in_progress")


def judges(eval: Eval) -> list[str]:
    names: list[str] = []
    for criterion in eval.testing_criteria:
        names.extend(name for name in graders.referenced_models(criterion) if name not in names)
    return names


def needs_local_worker(eval: Eval, model_name: str) -> bool:
    """Whether a run calls any model of ours (so runs on a gpu worker), rather than only `openai:*`
    ones or none (a jsonl run graded by string checks waits on nothing heavy)."""
    from django.conf import settings

    names = [*judges(eval), *([model_name] if model_name else [])]
    if any(uses_embeddings(criterion) for criterion in eval.testing_criteria):
        names.append(settings.EVAL_EMBEDDING_MODEL)
    return any(not name.startswith("openai:") for name in names)


def submit_run(
    eval: Eval,
    parsed: dict[str, Any],
    body: dict[str, Any],
    *,
    api_key: ApiKey | None = None,
    user: User | None = None,
    takes_place: bool = True,
) -> EvalRun:
    """Admits and queues a run: the checks a batch passes, for the model it samples and every judge
    its criteria call (the worker checks each call again, as the plan may change while it runs).
    `takes_place=False` is for a run that calls no model (a parity eval's recorded answers graded
    by text similarity): it waits for none of the plan's places for batches and eval runs."""
    from apps.billing import quotas
    from apps.jobs import admission

    project = eval.project
    source = parsed["data_source"]["source"]
    file = None
    if source["type"] == "file_id":
        file = File.objects.get(project=project, public_id=source["id"])
        total = int((file.validation or {}).get("rows") or 0)
    else:
        total = len(source["content"])
    max_cost = _max_cost(body.get("max_cost"))
    models = [*([parsed["model"]] if parsed["model"] else []), *judges(eval)]
    with transaction.atomic():
        organization = admission.lock_organization(project.organization_id)
        subscription = quotas.check_quota(organization)
        for name in models:
            quotas.check_model(subscription, name, param="data_source.model")
        if takes_place:
            admission.check_batch_concurrency(subscription)
        admission.reserve(subscription, 0)
        job = actions.create_job(
            kind=JobKind.EVAL_RUN,
            project=project,
            model_name=parsed["model"],
            request={
                "eval_id": eval.public_id,
                "data_source": parsed["data_source"],
                "local": needs_local_worker(eval, parsed["model"]),
            },
            api_key=api_key,
            user=user,
            metadata=parsed["metadata"],
            training_file=file,
            max_cost=max_cost,
            progress={"total": total, "completed": 0},
            message="Eval run created.",
        )
        return EvalRun.objects.create(eval=eval, job=job, name=parsed["name"] or default_run_name(parsed))


def default_run_name(parsed: dict[str, Any]) -> str:
    model = parsed["model"]
    return f"{model} run" if model else "jsonl run"


def record_items(
    job_pk: int,
    attempt: int,
    run_pk: int,
    items: list[dict[str, Any]],
    usage: dict[str, int],
    progress: dict[str, Any],
) -> bool:
    """The worker's write of a chunk of output items, its bill and the run's progress, in one
    transaction fenced on the attempt: an item is never kept without its bill, nor billed twice.
    False when this attempt no longer owns the job."""
    with transaction.atomic():
        job = actions.lock_fenced(job_pk, attempt)
        if job is None:
            return False
        EvalOutputItem.objects.bulk_create(
            [EvalOutputItem(run_id=run_pk, **item) for item in items], ignore_conflicts=True
        )
        changed = actions.bill(job, usage)
        job.progress = progress
        job.save(update_fields=[*changed, "progress"])
    return True
