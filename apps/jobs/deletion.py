"""Deleting what jobs may still use: a file a job reads, a model a job resumes from, a project with
jobs still writing to storage. The refusals need to know about jobs, so the deletions live here,
above projects and registry, and the pages and the API call them."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q

from apps.accounts.actions import require_manager, require_manager_or_creator
from apps.accounts.models import Organization, User
from apps.core.errors import ActionError
from apps.core.storage import JOB_AREAS, delete_prefix, delete_stored, job_prefix
from apps.jobs.models import ACTIVE_STATUSES, FINISHED_STATUSES, Job, JobKind, JobStatus
from apps.projects.models import File, Project
from apps.registry.models import Model

DELETE_FILE_REFUSAL = "Only owners and admins, and the member who uploaded it, can delete this file."
# A job in one of these is not over: it still reads its files (a paused fine-tune again when it
# resumes), and a fine-tune or batch still writes to storage.
UNFINISHED_STATUSES = (*ACTIVE_STATUSES, JobStatus.PAUSED)
JOB_NOUNS = {JobKind.FINE_TUNE: "fine-tuning job", JobKind.BATCH: "batch"}


def job_using(file: File) -> Job | None:
    """The oldest unfinished job that reads `file` (as training, validation or batch input file)."""
    return (
        Job.objects.filter(Q(training_file=file) | Q(validation_file=file), status__in=UNFINISHED_STATUSES)
        .order_by("id")
        .first()
    )


@transaction.atomic
def delete_file(actor: User | None, file: File) -> None:
    """For owners and admins of the file's organization and for its uploader (files we produce,
    results and batch output, have no uploader: only owners and admins delete them). Refused (409)
    while an unfinished job reads the file: deleting it would fail that job."""
    require_manager_or_creator(actor, file.project.organization, file.created_by_id, DELETE_FILE_REFUSAL)
    # A job created on this file takes a share lock on its row when it commits (the foreign-key
    # check): with this lock held, such a job is either committed already, and found below, or its
    # commit waits and then fails because the file is gone. Never a job without its file.
    if not File.objects.select_for_update().filter(pk=file.pk).exists():
        return  # already deleted
    job = job_using(file)
    if job is not None:
        raise ActionError(
            f"File {file.public_id} is used by {JOB_NOUNS.get(JobKind(job.kind), 'job')} {job.public_id}, "
            f"which is {JobStatus(job.status).label.lower()}. Cancel the job or wait for it to finish, "
            "then delete the file.",
            code="file_in_use",
            status=409,
        )
    name = file.content.name
    storage = file.content.storage
    file.delete()
    if name:
        # After the row is gone, so a failure here leaves an orphan blob, never a broken row.
        transaction.on_commit(lambda: storage.delete(name))


# Long work whose worker writes to storage until it stops (checkpoints, weights, result files).
STORING_KINDS = (JobKind.FINE_TUNE, JobKind.BATCH)
INFERENCE_KINDS = (JobKind.GENERATION, JobKind.CLASSIFICATION, JobKind.EMBEDDING)


@transaction.atomic
def delete_project(actor: User, project: Project) -> None:
    """For owners and admins: the project, and everything it stored (`erase_project`)."""
    require_manager(actor, project.organization)
    erase_project(project)


def erase_project(project: Project) -> None:
    """Deletes the project with its files, jobs, fine-tuned models and API keys, and then everything
    they stored. Usage records stay (their project and job become empty): they are billing history.

    Refused while a fine-tune or batch of the project is unfinished: deleting cannot be undone, a
    paused job is work its owner meant to resume, and a running one goes on writing checkpoints and
    weights until its worker stops, which would outlive the deletion. Refused too, for a few seconds,
    while a worker is answering one of its requests: the answer would reach the client with its job,
    and so its bill, gone. Requests still waiting for a worker are deleted with the project (their
    clients get a 404)."""
    # As in delete_file: a job created in the project meanwhile fails at its commit, never outlives it.
    Project.objects.select_for_update().filter(pk=project.pk).exists()
    jobs = Job.objects.filter(project=project)
    # Locked, so that a worker cannot claim a waiting request between this check and the deletion:
    # its claim waits for this transaction, then finds no row.
    answering = sum(
        job.status == JobStatus.RUNNING
        for job in jobs.filter(kind__in=INFERENCE_KINDS, status__in=ACTIVE_STATUSES)
        .select_for_update()
        .only("status")
    )
    if answering:
        raise ActionError(
            f"The project's models are answering {answering} request(s) right now. Retry in a few seconds, "
            "once they are done.",
            code="project_in_use",
            status=409,
        )
    unfinished = list(
        jobs.filter(kind__in=STORING_KINDS, status__in=UNFINISHED_STATUSES)
        .order_by("id")[:4]
        .values_list("public_id", flat=True)
    )
    if unfinished:
        named = ", ".join(unfinished[:3]) + (" and more" if len(unfinished) > 3 else "")
        raise ActionError(
            f"The project has unfinished fine-tuning jobs or batches ({named}). Cancel them or wait for "
            "them to finish, then delete the project.",
            code="project_in_use",
            status=409,
        )
    organization_id = project.organization.public_id
    keys = [name for name in File.objects.filter(project=project).values_list("content", flat=True) if name]
    prefixes = [
        job_prefix(area, organization_id, job_id)
        for job_id in jobs.filter(kind__in=STORING_KINDS).values_list("public_id", flat=True)
        for area in JOB_AREAS
    ]
    models = Model.objects.filter(project=project)
    prefixes += [
        key
        for key in models.values_list("artifact_key", flat=True)
        if key and not key.startswith(("catalog:", "local:"))
    ]
    models.delete()
    project.delete()
    # After the rows are gone, so a storage fault leaves orphan blobs, never rows without content.
    transaction.on_commit(lambda: delete_stored(keys, sorted(set(prefixes))))


DELETE_MODEL_REFUSAL = (
    "Only owners and admins, and the member who created its fine-tuning job, can delete this model."
)


def delete_fine_tuned_model(actor: User | None, model: Model) -> None:
    """Deletes the model and, after the commit, its weights. For owners and admins of its
    organization and for the member whose job made it."""
    if model.is_catalog:
        raise ActionError(
            f"'{model.name}' is a base model; only fine-tuned models can be deleted.", param="model"
        )
    organization = model.organization
    assert organization is not None
    require_manager_or_creator(actor, organization, model.created_by_id, DELETE_MODEL_REFUSAL)
    key = model.artifact_key
    with transaction.atomic():
        _refuse_a_resume_point(organization, model)
        model.delete()
        if key and not key.startswith(("catalog:", "local:")):
            transaction.on_commit(lambda: delete_prefix(key))


def _refuse_a_resume_point(organization: Organization, model: Model) -> None:
    # A checkpoint model shares its weights with the checkpoint its job resumes from after a
    # pause or a lost worker: deleting them would make the resume fail.
    job = (
        Job.objects.filter(organization=organization, checkpoint_ref=model.artifact_key)
        .exclude(status__in=FINISHED_STATUSES)
        .exclude(checkpoint_ref="")
        .first()
    )
    if job is not None:
        raise ActionError(
            f"'{model.name}' is the checkpoint {job.public_id} resumes from. Cancel the job or wait "
            "until it finishes, then delete the model.",
            code="model_in_use",
            param="model",
            status=409,
        )
