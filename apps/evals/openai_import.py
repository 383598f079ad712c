"""A move from OpenAI fine-tuning (docs/api.md, "Import from OpenAI"): with the organization's own
OpenAI key, list its fine-tuning jobs, copy a chosen job's training and validation files into our
Files (validated as any upload), recreate the job on an open base the customer picks, saying
what could not be carried over, and record the old model's answers for a parity eval
(`apps.evals.parity`).

The calls to OpenAI are made here, in the request, through the official SDK with the timeouts the
proxy uses; a file larger than the plan's upload limit is refused before it is read whole.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import openai
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction

from apps.accounts.models import ApiKey, User
from apps.billing.quotas import subscription_for
from apps.core.crypto import UnreadableSecret
from apps.core.errors import ActionError
from apps.evals import parity
from apps.jobs import fine_tuning
from apps.projects.actions import upload_file
from apps.projects.models import FilePurpose, Project

logger = logging.getLogger(__name__)

MAX_JOBS_LISTED = 500
MAX_JOBS_IMPORTED = 20
MAX_FILES_COPIED = 20
FILE_FIELDS = ("id", "filename", "bytes", "purpose", "status", "created_at")
METHODS = ("supervised", "dpo")
# Hyperparameters each method carries over, as OpenAI names them ("auto" leaves ours to choose).
CARRIED = {
    "supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
    "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
}
# An OpenAI object id (ftjob-…, file-…): it goes into a URL path, where "." or ".." would not do.
OPENAI_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
FT_MODEL = re.compile(r"ft:[^:]+:[^:]*:(?P<suffix>[^:]*):[^:]+")


class OpenAIUnavailable(ActionError):
    pass


def client_for(project: Project) -> openai.OpenAI:
    """The SDK on the organization's own key: an import reads the organization's account, never the
    platform's."""
    organization = project.organization
    try:
        key = organization.openai_key()
    except UnreadableSecret:
        raise ActionError(
            "The organization's OpenAI key cannot be read; save it again under Settings.",
            code="openai_key_unreadable",
            status=400,
        ) from None
    if not key:
        raise ActionError(
            "Importing reads your OpenAI account with your organization's own OpenAI key: add it under "
            "Settings, then try again.",
            code="provider_not_configured",
            status=400,
        )
    return openai.OpenAI(
        api_key=key,
        base_url=settings.OPENAI_BASE_URL,
        timeout=settings.OPENAI_TIMEOUT_SECONDS,
        max_retries=settings.OPENAI_MAX_RETRIES,
    )


def _unavailable(exc: openai.OpenAIError) -> ActionError:
    if isinstance(exc, openai.AuthenticationError):
        return ActionError(
            "OpenAI refused the organization's key (401); check it under Settings.",
            code="openai_key_refused",
            status=400,
        )
    return OpenAIUnavailable(
        f"OpenAI could not be reached or answered with an error: {str(exc).rstrip('.')}. Try again in a moment.",
        code="upstream_unavailable",
        status=502,
    )


def list_jobs(project: Project) -> list[dict[str, Any]]:
    """The organization's OpenAI fine-tuning jobs, newest first, every page (up to 500)."""
    client = client_for(project)
    jobs: list[dict[str, Any]] = []
    try:
        for job in client.fine_tuning.jobs.list(limit=100):
            jobs.append(_summary(job.to_dict()))
            if len(jobs) >= MAX_JOBS_LISTED:
                break
    except openai.OpenAIError as exc:
        raise _unavailable(exc) from None
    return jobs


def list_files(project: Project) -> list[dict[str, Any]]:
    """The organization's OpenAI files of purpose `fine-tune`, every page (up to 500)."""
    client = client_for(project)
    files: list[dict[str, Any]] = []
    try:
        for file in client.files.list(purpose="fine-tune", limit=100):
            found = file.to_dict()
            files.append({key: found.get(key) for key in FILE_FIELDS})
            if len(files) >= MAX_JOBS_LISTED:
                break
    except openai.OpenAIError as exc:
        raise _unavailable(exc) from None
    return files


def parse_files(body: Any) -> list[str]:
    return _ids(_body(body, ("files",)), "files", MAX_FILES_COPIED, "OpenAI file ids (file-…)")


def _body(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    for key in body:
        if key not in allowed:
            raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
    return body


def _ids(body: dict[str, Any], key: str, limit: int, what: str) -> list[str]:
    """`body[key]`: 1 to `limit` OpenAI ids, each once, in the order given."""
    ids = body.get(key)
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= limit
        or not all(isinstance(i, str) and OPENAI_ID.fullmatch(i) for i in ids)
    ):
        raise ActionError(f"{key} must be a list of 1 to {limit} {what}.", param=key)
    return list(dict.fromkeys(ids))


def copy_files(
    project: Project, body: Any, *, api_key: ApiKey | None = None, user: User | None = None
) -> dict[str, Any]:
    """Each chosen OpenAI file copied into this project's Files (purpose `fine-tune`, validated as any
    upload), or the reason it was not; one file's problem never stops the others."""
    file_ids = parse_files(body)
    client = client_for(project)
    results: list[dict[str, Any]] = []
    for index, file_id in enumerate(file_ids):
        try:
            copied, _ = _copy_file(project, client, file_id, "file", api_key=api_key, user=user)
        except OpenAIUnavailable as exc:
            if not results:
                raise
            results += [
                {**_unreached(other, exc, "openai_file_id"), "file_id": None} for other in file_ids[index:]
            ]
            break
        except ActionError as exc:
            results.append(
                {
                    "openai_file_id": file_id,
                    "status": "skipped",
                    "file_id": None,
                    "error": {"code": exc.code, "message": exc.message, "param": exc.param},
                }
            )
        else:
            results.append({"openai_file_id": file_id, "status": "copied", "file_id": copied, "error": None})
    return {"object": "import.openai.files", "data": results}


def _unreached(object_id: str, exc: ActionError, key: str = "openai_job_id") -> dict[str, Any]:
    return {
        key: object_id,
        "status": "skipped",
        "error": {"code": exc.code, "message": exc.message, "param": None},
    }


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    method = job.get("method") or {"type": "supervised"}
    return {
        "id": job.get("id"),
        "model": job.get("model"),
        "fine_tuned_model": job.get("fine_tuned_model"),
        "status": job.get("status"),
        "method": method.get("type"),
        "training_file": job.get("training_file"),
        "validation_file": job.get("validation_file"),
        "created_at": job.get("created_at"),
        "importable": method.get("type") in METHODS,
    }


def parse(body: Any) -> tuple[list[str], str]:
    body = _body(body, ("jobs", "base_model"))
    jobs = _ids(body, "jobs", MAX_JOBS_IMPORTED, "OpenAI fine-tuning job ids (ftjob-…)")
    base = body.get("base_model")
    if not isinstance(base, str) or not base:
        raise ActionError("Missing required parameter: 'base_model'.", param="base_model")
    return jobs, base


def import_jobs(
    project: Project, body: Any, *, api_key: ApiKey | None = None, user: User | None = None
) -> dict[str, Any]:
    """Each chosen job: its files copied and the job recreated, or the reason it was not. One job's
    problem never stops the others."""
    job_ids, base = parse(body)
    client = client_for(project)
    results: list[dict[str, Any]] = []
    for index, job_id in enumerate(job_ids):
        try:
            results.append(_import_one(project, client, job_id, base, api_key=api_key, user=user))
        except OpenAIUnavailable as exc:
            if not results:
                raise
            # What was imported before OpenAI failed is kept and reported; the rest can be tried again.
            results += [_unreached(other, exc) for other in job_ids[index:]]
            break
        except ActionError as exc:
            results.append(
                {
                    "openai_job_id": job_id,
                    "status": "skipped",
                    "error": {"code": exc.code, "message": exc.message, "param": exc.param},
                }
            )
    return {"object": "import.openai", "base_model": base, "data": results}


def _import_one(
    project: Project,
    client: openai.OpenAI,
    job_id: str,
    base: str,
    *,
    api_key: ApiKey | None,
    user: User | None,
) -> dict[str, Any]:
    try:
        job: dict[str, Any] = client.fine_tuning.jobs.retrieve(job_id).to_dict()
    except openai.NotFoundError:
        raise ActionError(
            f"OpenAI has no fine-tuning job {job_id} in this organization.", code="not_found"
        ) from None
    except openai.OpenAIError as exc:
        raise _unavailable(exc) from None
    method = (job.get("method") or {}).get("type") or "supervised"
    if method not in METHODS:
        raise ActionError(
            f"{job_id} is a {method} fine-tune, which is not offered here (reinforcement fine-tuning "
            "needs graders that run code); only supervised and DPO jobs can be recreated.",
            code="not_mappable",
        )
    hyperparameters, not_mapped = _mapped(job, method)
    training, training_content = _copy_file(
        project, client, str(job["training_file"]), "training_file", api_key=api_key, user=user
    )
    validation, validation_content = None, b""
    if job.get("validation_file"):
        validation, validation_content = _copy_file(
            project, client, str(job["validation_file"]), "validation_file", api_key=api_key, user=user
        )
    request: dict[str, Any] = {
        "model": base,
        "training_file": training,
        "method": {"type": method, method: {"hyperparameters": hyperparameters}},
        "metadata": {
            "openai_job_id": job_id,
            "openai_model": str(job.get("fine_tuned_model") or job.get("model"))[:512],
        },
    }
    if validation:
        request["validation_file"] = validation
    if isinstance(job.get("seed"), int):
        request["seed"] = job["seed"]
    suffix = FT_MODEL.fullmatch(str(job.get("fine_tuned_model") or ""))
    if suffix and suffix.group("suffix"):
        request["suffix"] = suffix.group("suffix")[:40]
    old_model = str(job.get("fine_tuned_model") or "")
    source = "validation file" if validation else "training file"
    try:
        parsed = fine_tuning.parse(project, request)
        recorded = (
            _recorded(client, old_model, validation_content or training_content, source)
            if old_model
            else parity.skipped(f"{job_id} made no model ({job.get('status')}): there is none to compare.")
        )
        with transaction.atomic():
            created = fine_tuning.submit(parsed, project=project, api_key=api_key, user=user)
            parity_report = recorded if isinstance(recorded, dict) else None
            if isinstance(recorded, list):
                try:
                    with transaction.atomic():
                        parity_report = parity.create(
                            project,
                            recorded,
                            openai_job_id=job_id,
                            old_model=old_model,
                            job=created,
                            source_file=source,
                            api_key=api_key,
                            user=user,
                        )
                except ActionError as exc:
                    parity_report = parity.skipped(f"The parity eval could not start: {exc.message}")
    except ActionError as exc:  # the files are copied and kept: the job can be started from them later
        return {
            "openai_job_id": job_id,
            "status": "skipped",
            "training_file_id": training,
            "validation_file_id": validation,
            "error": {"code": exc.code, "message": exc.message, "param": exc.param},
        }
    return {
        "openai_job_id": job_id,
        "status": "created",
        "fine_tuning_job_id": created.public_id,
        "training_file_id": training,
        "validation_file_id": validation,
        "not_mapped": [f"model {job.get('model')}: recreated on {base}", *not_mapped],
        "parity": parity_report,
        "error": None,
    }


def _recorded(client: openai.OpenAI, old_model: str, content: bytes, source: str) -> Any:
    """`parity.record`, whose failure is the parity eval's, never the import's: the job is recreated."""
    try:
        return parity.record(client, old_model, content, source)
    except Exception:
        logger.exception("recording the answers of %s for a parity eval failed", old_model)
        return parity.skipped(f"The answers of {old_model} could not be recorded: no parity eval.")


def _mapped(job: dict[str, Any], method: str) -> tuple[dict[str, Any], list[str]]:
    given = dict(
        ((job.get("method") or {}).get(method) or {}).get("hyperparameters")
        or job.get("hyperparameters")
        or {}
    )
    kept = {key: value for key, value in given.items() if key in CARRIED[method] and value != "auto"}
    not_mapped = [f"hyperparameter {key}" for key in sorted(given) if key not in CARRIED[method]]
    if job.get("integrations"):
        not_mapped.append(
            "integrations (Weights & Biases): not offered here; metrics are in the job's events"
        )
    return kept, not_mapped


def _copy_file(
    project: Project,
    client: openai.OpenAI,
    file_id: str,
    which: str,
    *,
    api_key: ApiKey | None,
    user: User | None,
) -> tuple[str, bytes]:
    """The file's id here, and its content (the parity eval's prompts are read from it)."""
    limit = subscription_for(project.organization).plan.max_upload_bytes
    try:
        meta = client.files.retrieve(file_id)
        if meta.bytes and meta.bytes > limit:
            raise ActionError(
                f"The {which.replace('_', ' ')} {file_id} is {meta.bytes:,} bytes; your plan takes files up to "
                f"{limit:,} bytes.",
                code="file_too_large",
            )
        content = client.files.content(file_id).read()
    except openai.NotFoundError:
        then = "; upload the data here and start the job yourself" if which != "file" else ""
        raise ActionError(
            f"The {which.replace('_', ' ')} {file_id} no longer exists at OpenAI (it was deleted){then}.",
            code="file_not_found",
        ) from None
    except openai.OpenAIError as exc:
        raise _unavailable(exc) from None
    if len(content) > limit:
        raise ActionError(
            f"The {which.replace('_', ' ')} {file_id} is over {limit:,} bytes.", code="file_too_large"
        )
    upload = SimpleUploadedFile(meta.filename or f"{file_id}.jsonl", content)
    copied = upload_file(project, upload, FilePurpose.FINE_TUNE, user=user, api_key=api_key)
    return copied.public_id, content
