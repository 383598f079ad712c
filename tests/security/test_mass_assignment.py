"""T29: mass assignment and property-level authorization. Fields a client must not set are refused
(400) or ignored, the database changes only by the intended object, and no response carries a
key digest, a lease owner, a worker hostname, a storage path or another member's email."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Model as DjangoModel
from django.urls import reverse

from apps.accounts.models import ApiKey, Invitation, Membership, Organization, User
from apps.billing.models import Plan, Subscription, UsageRecord
from apps.billing.quotas import subscription_for
from apps.jobs import actions as job_actions
from apps.jobs.models import Checkpoint, Job, JobEvent, JobKind, JobStatus
from apps.projects.models import File, FilePurpose, Project
from apps.registry.models import Model
from tests.security.test_bola import (
    ID_ROUTES,
    TRAINING_CSV,
    World,
    kwargs_for,
    seed_tenant,
    stored_file,
)

pytestmark = pytest.mark.usefixtures("media")


TABLES: list[type[DjangoModel]] = [
    User,
    Organization,
    Membership,
    Invitation,
    Project,
    ApiKey,
    File,
    Job,
    JobEvent,
    Checkpoint,
    Model,
    UsageRecord,
    Subscription,
    Plan,
]
WORKER = "gpu-box-internal-3"


def extras(carol_project: Project) -> dict[str, Any]:
    """Fields an attacker adds to a create or update, hoping one is saved as given."""
    carol_org = carol_project.organization
    return {
        "organization": carol_org.public_id,
        "organization_id": carol_org.public_id,
        "org": carol_org.public_id,
        "project": carol_project.public_id,
        "project_id": carol_project.public_id,
        "owner": "carol@example.com",
        "status": "succeeded",
        "attempt": 7,
        "max_attempts": 1000,
        "cost": 0,
        "estimated_cost": 0,
        "trained_tokens": 1,
        "fine_tuned_model": "ft:minilm-l6:evil:x:ftjob-1",
        "lease_owner": "evil",
        "is_staff": True,
        "is_superuser": True,
        "plan": "team",
        "stripe_customer_id": "cus_evil",
        "created_by": 1,
        "created_at": 0,
        "hashed_key": "0" * 64,
        "prefix": "evil0001",
        "revoked_at": 1,
        "role": "owner",
        "credits": 10**9,
    }


# --- Snapshots of the whole database --------------------------------------------------------------
Snapshot = dict[str, dict[Any, dict[str, Any]]]


def snapshot() -> Snapshot:
    return {
        table.__name__: {
            row["id"]: json.loads(json.dumps(row, default=str)) for row in table._default_manager.values()
        }
        for table in TABLES
    }


def changes(before: Snapshot, after: Snapshot) -> tuple[dict[str, list[Any]], dict[str, dict[Any, set[str]]]]:
    """(new rows by table, changed fields by table and row); a deleted row is a change to all fields."""
    new: dict[str, list[Any]] = {}
    changed: dict[str, dict[Any, set[str]]] = {}
    for table, rows in after.items():
        old = before[table]
        if added := [rows[pk] for pk in rows.keys() - old.keys()]:
            new[table] = added
        for pk, row in old.items():
            fields = set(row) if pk not in rows else {k for k in row if rows[pk][k] != row[k]}
            if fields:
                changed.setdefault(table, {})[pk] = fields
    return new, changed


@pytest.fixture
def ready(alice: Any, alice_project: Project, alice_key: str, api: Any, carol_project: Project) -> None:
    """Rows a first request creates or touches on its own (a subscription, last_used_at), made now."""
    subscription_for(alice_project.organization)
    subscription_for(carol_project.organization)
    api.get("/v1/models")


def assert_only(
    before: Snapshot, new_tables: dict[str, int], changed: dict[str, set[str]] | None = None
) -> Snapshot:
    after = snapshot()
    added, modified = changes(before, after)
    assert {table: len(rows) for table, rows in added.items()} == new_tables
    assert {table: set().union(*rows.values()) for table, rows in modified.items()} == (changed or {})
    return after


# --- The API: unknown fields are 400 ----------------------------------------------------------------
def test_api_creates_refuse_every_field_they_do_not_know(
    ready: None, api: Any, alice_project: Project, carol_project: Project
) -> None:
    training = stored_file(alice_project, "t.csv", TRAINING_CSV, FilePurpose.FINE_TUNE, "classification_csv")
    batch = stored_file(alice_project, "b.jsonl", b"{}\n", FilePurpose.BATCH, "batch_jsonl", rows=1)
    chat = Model.objects.create(
        name="tiny-gpt2", task="generation", limits={"servable": True}, context_length=256
    )
    classifier = Model.objects.create(
        name="ft:minilm-l6:acme:x:ftjob-1",
        organization=alice_project.organization,
        task="classification",
        labels=["a", "b"],
        limits={"servable": True},
    )
    bodies: dict[str, dict[str, Any]] = {
        "/v1/fine_tuning/jobs": {"model": "minilm-l6", "training_file": training.public_id},
        "/v1/fine_tuning/jobs/estimate": {"model": "minilm-l6", "training_file": training.public_id},
        "/v1/batches": {
            "input_file_id": batch.public_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        "/v1/chat/completions": {"model": chat.name, "messages": [{"role": "user", "content": "hi"}]},
        "/v1/completions": {"model": chat.name, "prompt": "hi"},
        "/v1/classifications": {"model": classifier.name, "input": "hi"},
    }
    before = snapshot()
    for path, body in bodies.items():
        for field, value in extras(carol_project).items():
            response = api.post(path, {**body, field: value}, format="json")
            assert response.status_code == 400, (path, field, response.content)
            error = response.json()["error"]
            assert error["param"] == field and "Unrecognized request argument" in error["message"], (
                path,
                field,
            )
    assert_only(before, {})
    # The positive control: the same body without the extra field is accepted.
    assert api.post("/v1/fine_tuning/jobs", bodies["/v1/fine_tuning/jobs"], format="json").status_code == 200


def test_an_upload_ignores_extra_form_fields(
    ready: None, api: Any, alice: Any, alice_project: Project, carol_project: Project
) -> None:
    before = snapshot()
    form = {
        "purpose": "fine-tune",
        "file": SimpleUploadedFile("a.csv", TRAINING_CSV),
        **{k: str(v) for k, v in extras(carol_project).items()},
    }
    response = api.post("/v1/files", form, format="multipart")
    assert response.status_code == 200, response.content
    assert_only(before, {"File": 1})
    file = File.objects.get(public_id=response.json()["id"])
    assert (file.project, file.status, file.created_by, file.purpose) == (
        alice_project,
        "uploaded",
        alice,
        "fine-tune",
    )
    assert file.api_key == ApiKey.objects.get(project=alice_project)
    assert response.json()["status"] == "uploaded"


# --- The dashboard's forms: extra fields are ignored ------------------------------------------------
def form_extras(carol_project: Project) -> dict[str, str]:
    return {k: str(v) for k, v in extras(carol_project).items() if k not in ("role",)}


def test_creating_a_project_ignores_extra_fields(
    ready: None, alice_client: Any, alice: Any, carol_project: Project
) -> None:
    before = snapshot()
    alice_client.post("/projects/", {"name": "Second", **form_extras(carol_project)})
    assert_only(before, {"Project": 1})
    project = Project.objects.get(name="Second")
    assert project.organization == alice.memberships.get().organization and project.created_by == alice


def test_renaming_a_project_changes_its_name_only(
    ready: None, alice_client: Any, alice_project: Project, carol_project: Project
) -> None:
    before = snapshot()
    alice_client.post(
        f"/projects/{alice_project.public_id}/rename",
        {"name": "Renamed", "public_id": "proj_evil", **form_extras(carol_project)},
    )
    assert_only(before, {}, {"Project": {"name"}})
    alice_project.refresh_from_db()
    assert alice_project.name == "Renamed" and alice_project.public_id != "proj_evil"


def test_inviting_ignores_extra_fields(
    ready: None, alice_client: Any, alice_org: Any, carol_project: Project
) -> None:
    before = snapshot()
    alice_client.post(
        "/team/",
        {
            "email": "eve@example.com",
            "role": "member",
            "accepted_at": "2020-01-01",
            "token_hash": "0" * 64,
            **form_extras(carol_project),
        },
    )
    assert_only(before, {"Invitation": 1})
    invitation = Invitation.objects.get()
    assert (invitation.organization, invitation.role, invitation.accepted_at) == (alice_org, "member", None)
    assert invitation.token_hash != "0" * 64


def test_creating_a_key_ignores_extra_fields(
    ready: None, alice_client: Any, alice: Any, alice_project: Project, carol_project: Project
) -> None:
    before = snapshot()
    alice_client.post(
        f"/projects/{alice_project.public_id}/api-keys/", {"name": "k", **form_extras(carol_project)}
    )
    assert_only(before, {"ApiKey": 1})
    key = ApiKey.objects.get(name="k")
    assert (key.project, key.created_by, key.revoked_at) == (alice_project, alice, None)
    assert key.prefix != "evil0001" and key.hashed_key != "0" * 64


def test_the_fine_tune_form_ignores_extra_fields(
    ready: None, alice_client: Any, alice_project: Project, carol_project: Project
) -> None:
    training = stored_file(alice_project, "t.csv", TRAINING_CSV, FilePurpose.FINE_TUNE, "classification_csv")
    before = snapshot()
    response = alice_client.post(
        f"/projects/{alice_project.public_id}/fine-tuning/new",
        {
            "model": "minilm-l6",
            "training_file": training.public_id,
            "confirm_small_data": "yes",
            **form_extras(carol_project),
        },
    )
    assert response.status_code == 302, response.content
    after = assert_only(before, {"Job": 1, "JobEvent": 1})
    job = Job.objects.get(public_id=next(iter(changes(before, after)[0]["Job"]))["public_id"])
    assert job.organization == alice_project.organization and job.project == alice_project
    assert job.status in (JobStatus.QUEUED, JobStatus.VALIDATING_FILES)
    assert (job.attempt, job.trained_tokens, job.fine_tuned_model, job.lease_owner) == (0, None, None, "")
    assert job.max_attempts == 3 and job.estimated_cost != 0


def test_the_upload_form_ignores_extra_fields(
    ready: None, alice_client: Any, alice: Any, alice_project: Project, carol_project: Project
) -> None:
    before = snapshot()
    alice_client.post(
        f"/projects/{alice_project.public_id}/files/upload",
        {
            "purpose": "fine-tune",
            "file": SimpleUploadedFile("a.csv", TRAINING_CSV),
            **form_extras(carol_project),
        },
    )
    assert_only(before, {"File": 1})
    file = File.objects.get()
    assert (file.project, file.status, file.created_by) == (alice_project, "uploaded", alice)


# --- What responses never carry ---------------------------------------------------------------------
def secrets_of(world: World) -> list[str]:
    organization = world.organization
    values = ["hashed_key", "lease_owner", "artifact_key", "checkpoint_ref", WORKER]
    values += list(ApiKey.objects.values_list("hashed_key", flat=True))
    values += [
        v for v in Job.objects.filter(organization=organization).values_list("lease_owner", flat=True) if v
    ]
    values += [
        v for v in Job.objects.filter(organization=organization).values_list("checkpoint_ref", flat=True) if v
    ]
    values += [
        v for v in Model.objects.filter(organization=organization).values_list("artifact_key", flat=True) if v
    ]
    values += list(Checkpoint.objects.values_list("artifact_key", flat=True))
    values += [f.content.name or "" for f in File.objects.filter(project__organization=organization)]
    return values


STORAGE_PATH = re.compile(r"\b(files|models|checkpoints)/org-")


def claimed_job(world: World) -> Job:
    """A job a worker on WORKER has claimed, through the real claim."""
    job = Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=world.organization,
        project=world.project,
        model=world.ft_job.model,
        model_name="minilm-l6",
        status=JobStatus.QUEUED,
        training_file=world.file,
    )
    claimed = job_actions.claim(job.public_id, owner=f"{WORKER}:4242")
    assert claimed is not None and claimed.lease_owner == f"{WORKER}:4242"
    return claimed


@pytest.fixture
def world(alice: Any, alice_project: Project, bob: Any) -> World:
    return seed_tenant(alice, alice_project, bob)


def test_api_responses_never_carry_internals(world: World, api: Any) -> None:
    claimed = claimed_job(world)
    job_paths = [
        f"/v1/fine_tuning/jobs/{job}{suffix}"
        for job in (world.ft_job.public_id, claimed.public_id, world.done_job.public_id)
        for suffix in ("", "/events", "/checkpoints")
    ]
    paths = [
        "/v1/files",
        f"/v1/files/{world.file.public_id}",
        "/v1/fine_tuning/jobs",
        *job_paths,
        "/v1/batches",
        f"/v1/batches/{world.done_batch.public_id}",
        "/v1/models",
        f"/v1/models/{world.model.name}",
        "/v1/usage?start_time=0&end_time=86400&group_by=api_key_id",
        "/v1/usage/costs?start_time=0&end_time=86400&group_by=project_id",
    ]
    responses = [api.get(path) for path in paths]
    responses.append(
        api.post(
            "/v1/files",
            {"purpose": "fine-tune", "file": SimpleUploadedFile("a.csv", TRAINING_CSV)},
            format="multipart",
        )
    )
    responses.append(api.post(f"/v1/fine_tuning/jobs/{claimed.public_id}/cancel", {}, format="json"))
    forbidden = secrets_of(world)
    for path, response in zip([*paths, "POST /v1/files", "POST cancel"], responses, strict=True):
        assert response.status_code == 200, (path, response.content)
        text = response.content.decode()
        for value in forbidden:
            assert value not in text, f"{path} shows {value!r}"
        assert not STORAGE_PATH.search(text), path
        assert "@example.com" not in text, f"{path} shows an email address"


def test_dashboard_pages_never_carry_internals(world: World, alice_client: Any) -> None:
    claimed = claimed_job(world)
    forbidden = secrets_of(world)
    pages = [r for r in ID_ROUTES if r.name.startswith("dashboard:") and "token" not in r.params]
    for route in pages:
        kwargs = kwargs_for(route, world, real=True)
        if "job_id" in kwargs:
            kwargs["job_id"] = claimed.public_id
        response = alice_client.get(reverse(route.name, kwargs=kwargs))
        if response.status_code != 200:
            continue  # POST-only routes
        text = b"".join(response.streaming_content) if response.streaming else response.content
        for value in forbidden:
            assert value not in text.decode("utf-8", "replace"), f"{route.name} shows {value!r}"


@pytest.mark.integration
def test_a_model_that_cannot_load_names_no_path(
    celery_worker: Any, catalog: None, alice: Any, alice_project: Project, bob: Any, api: Any, settings: Any
) -> None:
    # given: alice's model whose stored weights are broken (stand-ins, no model_type)
    settings.INFERENCE_TIMEOUT_SECONDS = 60
    world = seed_tenant(alice, alice_project, bob)
    # when
    response = api.post("/v1/classifications", {"model": world.model.name, "input": "hi"}, format="json")
    # then: the worker's reason stays in its log
    assert response.status_code == 500, response.content
    error = response.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "/" not in error["message"] and not STORAGE_PATH.search(response.content.decode())
    job = Job.objects.get(kind=JobKind.CLASSIFICATION)
    assert "/" not in json.dumps(job.error)
