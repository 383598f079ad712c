"""T23: the BOLA/IDOR matrix. Every /v1/ and dashboard route that takes an object id, called by
carol (an outsider) with alice's real ids, answers exactly as it does for an id that does not
exist: 404, same body once the ids are blanked out, and alice's rows unchanged.

The matrix is generated from the URL conf (and cross-checked against the OpenAPI schema), so a
new route with an id parameter fails `test_an_outsider_cannot_reach_alices_object` until it
gets a seeding recipe in PARAMETERS below.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from apps.accounts.models import ApiKey, Invitation, Membership, Organization
from apps.billing.models import Subscription, UsageRecord
from apps.core.ids import random_id
from apps.evals import aliases
from apps.evals.actions import create_eval
from apps.evals.models import Eval, EvalOutputItem, EvalRun
from apps.evals.parsing import parse_eval
from apps.jobs.models import Checkpoint, Job, JobEvent, JobKind, JobStatus
from apps.projects import actions as projects
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.registry.models import AliasMove, Model, ModelAlias
from apps.webhooks import actions as webhooks
from apps.webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.usefixtures("media")

MARKER = "alice-private-marker-7c1e"
TRAINING_CSV = f"text,label\n{MARKER} refund please,billing\nthe app crashes,bug\nlove it,praise\n".encode()


# --- alice's world: one real object of every kind -------------------------------------------------
@dataclass
class World:
    organization: Organization
    project: Project
    file: File  # a processed fine-tune dataset
    batch_file: File  # a processed batch input
    output_file: File
    error_file: File
    ft_job: Job  # running, with events and a checkpoint
    paused_job: Job
    done_job: Job  # succeeded, produced `model`
    model: Model  # alice's fine-tuned classifier
    chat_model: Model  # alice's fine-tuned generator
    done_batch: Job  # completed, with output and error files
    running_batch: Job
    key: ApiKey
    membership: Membership  # the teammate's membership
    invitation_token: str
    webhook: WebhookEndpoint
    delivery: WebhookDelivery  # of an event to `webhook`
    eval: Eval
    eval_run: EvalRun  # completed, with an output item
    running_eval_run: EvalRun
    output_item: EvalOutputItem
    alias: ModelAlias  # names `chat_model`

    def public_ids(self) -> list[str]:
        """Every id of alice's that a response must never show carol."""
        jobs = Job.objects.filter(organization=self.organization).values_list("public_id", flat=True)
        events = JobEvent.objects.filter(job__organization=self.organization).values_list(
            "public_id", flat=True
        )
        checkpoints = Checkpoint.objects.filter(job__organization=self.organization).values_list(
            "public_id", flat=True
        )
        files = File.objects.filter(project__organization=self.organization).values_list(
            "public_id", flat=True
        )
        return [
            self.organization.public_id,
            self.project.public_id,
            self.model.name,
            self.chat_model.name,
            *jobs,
            *events,
            *checkpoints,
            *files,
            self.key.prefix,
            self.webhook.public_id,
            self.delivery.event.public_id,
            self.eval.public_id,
            self.output_item.public_id,
        ]


def stored_file(project: Project, name: str, data: bytes, purpose: str, fmt: str = "", rows: int = 3) -> File:
    file = File(
        project=project,
        filename=name,
        purpose=purpose,
        bytes=len(data),
        status=FileStatus.PROCESSED,
        format=fmt,
        validation={
            "valid": True,
            "format": fmt,
            "rows": rows,
            "errors": [],
            "error_count": 0,
            "warnings": [],
            "warning_count": 0,
            "summary": f"{rows} rows",
            "stats": {"tokens": {"mean": 8}},
        },
    )
    file.content.save(name, ContentFile(data), save=False)
    file.save()
    return file


def store_weights(prefix: str) -> None:
    """A model directory in storage, as a finished fine-tune leaves one (tiny stand-in files)."""
    from django.core.files.storage import default_storage

    default_storage.save(
        f"{prefix}/config.json", ContentFile(b'{"architectures": ["BertForSequenceClassification"]}')
    )
    default_storage.save(f"{prefix}/model.safetensors", ContentFile((2).to_bytes(8, "little") + b"{}"))


def _job(project: Project, kind: str, status: str, **fields: Any) -> Job:
    return Job.objects.create(
        kind=kind,
        organization=project.organization,
        project=project,
        status=status,
        queued_at=timezone.now(),
        **fields,
    )


def seed_tenant(owner: Any, project: Project, teammate: Any) -> World:
    """One real object of every kind for `owner`'s organization, as the product leaves them."""
    organization = project.organization
    base = Model.objects.get(name="minilm-l6")
    slug = organization.name.lower().replace(" ", "-")
    file = stored_file(project, "tickets.csv", TRAINING_CSV, FilePurpose.FINE_TUNE, "classification_csv")
    request = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "tiny-gpt2", "messages": [{"role": "user", "content": MARKER}]},
    }
    batch_file = stored_file(
        project,
        "requests.jsonl",
        json.dumps(request).encode() + b"\n",
        FilePurpose.BATCH,
        "batch_jsonl",
        rows=1,
    )
    File.objects.filter(pk=batch_file.pk).update(
        validation={**(batch_file.validation or {}), "stats": {"endpoints": {"/v1/chat/completions": 1}}}
    )
    choice = {"index": 0, "message": {"role": "assistant", "content": MARKER}, "finish_reason": "stop"}
    output = {
        "id": "batch_req_1",
        "custom_id": "r1",
        "error": None,
        "response": {"status_code": 200, "body": {"object": "chat.completion", "choices": [choice]}},
    }
    output_file = stored_file(
        project, "out.jsonl", json.dumps(output).encode() + b"\n", FilePurpose.BATCH_OUTPUT
    )
    error_file = stored_file(project, "err.jsonl", b"", FilePurpose.BATCH_OUTPUT, rows=0)

    done_job = _job(
        project,
        JobKind.FINE_TUNE,
        JobStatus.SUCCEEDED,
        model=base,
        model_name=base.name,
        training_file=file,
        finished_at=timezone.now(),
        trained_tokens=1200,
        lease_owner="worker-7@gpu-host-internal",
        result={"metrics": {"accuracy": 0.9}},
    )
    model = Model.objects.create(
        name=f"ft:minilm-l6:{slug}:tickets:{done_job.public_id}",
        organization=organization,
        project=project,
        base=base,
        task="classification",
        labels=["billing", "bug", "praise"],
        limits={"servable": True},
        artifact_key=f"models/{organization.public_id}/{done_job.public_id}",
        metrics={"accuracy": 0.9},
    )
    Job.objects.filter(pk=done_job.pk).update(fine_tuned_model=model)
    store_weights(model.artifact_key)
    chat_model = Model.objects.create(
        name=f"ft:smollm2-135m-instruct:{slug}:bot:{random_id('ftjob-')}",
        organization=organization,
        project=project,
        task="generation",
        limits={"servable": True},
        context_length=256,
        artifact_key=f"models/{organization.public_id}/bot",
    )
    store_weights(chat_model.artifact_key)

    ft_job = _job(
        project,
        JobKind.FINE_TUNE,
        JobStatus.RUNNING,
        model=base,
        model_name=base.name,
        training_file=file,
        validation_file=file,
        attempt=1,
        lease_owner="worker-7@gpu-host-internal",
        heartbeat_at=timezone.now(),
        started_at=timezone.now(),
        checkpoint_ref=f"checkpoints/{organization.public_id}/step-10",
        progress={"step": 10, "total_steps": 30, "percent": 33.3},
    )
    JobEvent.objects.create(job=ft_job, message=f"Attempt 1 started ({MARKER}).")
    JobEvent.objects.create(
        job=ft_job, type="metrics", message="step 10", data={"step": 10, "train_loss": 0.5}
    )
    Checkpoint.objects.create(
        job=ft_job,
        step=10,
        epoch=1,
        metrics={"train_loss": 0.5},
        artifact_key=f"checkpoints/{organization.public_id}/{ft_job.public_id}/step-10",
        fine_tuned_model_checkpoint=f"{model.name}:ckpt-step-10",
    )
    paused_job = _job(
        project,
        JobKind.FINE_TUNE,
        JobStatus.PAUSED,
        model=base,
        model_name=base.name,
        training_file=file,
        attempt=1,
    )

    done_batch = _job(
        project,
        JobKind.BATCH,
        JobStatus.SUCCEEDED,
        model_name="",
        training_file=batch_file,
        finished_at=timezone.now(),
        request={
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch_file.public_id,
            "completion_window": "24h",
        },
        result={"output_file_id": output_file.public_id, "error_file_id": error_file.public_id},
        progress={"total": 1, "completed": 1, "failed": 0},
    )
    running_batch = _job(
        project,
        JobKind.BATCH,
        JobStatus.RUNNING,
        model_name="",
        training_file=batch_file,
        request={
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch_file.public_id,
            "completion_window": "24h",
        },
        progress={"total": 1, "completed": 0, "failed": 0},
        attempt=1,
    )
    generation = _job(
        project,
        JobKind.GENERATION,
        JobStatus.SUCCEEDED,
        model_name=chat_model.name,
        request={"messages": [{"role": "user", "content": MARKER}]},
    )
    UsageRecord.objects.create(
        organization=organization,
        project=project,
        job=generation,
        model_name=chat_model.name,
        unit="input_tokens",
        quantity=123,
        cost=45,
    )

    key, _ = projects.create_api_key(project, f"{MARKER} ci key", owner)
    membership = Membership.objects.get(organization=organization, user=teammate)
    token = secrets.token_urlsafe(32)
    Invitation.objects.create(
        organization=organization,
        email="dave@example.com",
        role="member",
        token_hash=Invitation.hash_token(token),
        invited_by=owner,
    )
    webhook, _ = webhooks.create_endpoint(
        project, owner, name=f"{MARKER} hook", url="https://hooks.example.com/x", event_types=["batch.failed"]
    )
    with transaction.atomic():
        webhooks.emit(project.pk, "batch.failed", done_batch.public_id)
    delivery = WebhookDelivery.objects.get(endpoint=webhook)
    evaluation = create_eval(
        project,
        parse_eval(
            project,
            {
                "name": f"{MARKER} eval",
                "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
                "testing_criteria": [
                    {
                        "type": "string_check",
                        "name": "same",
                        "input": "{{sample.output_text}}",
                        "reference": "{{item.answer}}",
                        "operation": "eq",
                    }
                ],
            },
        ),
        owner,
    )
    runs = []
    for status in (JobStatus.SUCCEEDED, JobStatus.RUNNING):
        run_job = _job(
            project,
            JobKind.EVAL_RUN,
            status,
            model_name=chat_model.name,
            request={"eval_id": evaluation.public_id, "data_source": {"type": "jsonl"}},
            result={"result_counts": {"total": 1, "passed": 1, "failed": 0, "errored": 0}},
            created_by=owner,
            attempt=1,
        )
        runs.append(EvalRun.objects.create(eval=evaluation, job=run_job, name=f"{MARKER} run"))
    output_item = EvalOutputItem.objects.create(
        run=runs[0], datasource_item_id=0, datasource_item={"answer": MARKER}, status="pass", results=[]
    )
    alias = aliases.create(project, {"name": "bot@prod", "model": chat_model.name}, owner)
    return World(
        organization,
        project,
        file,
        batch_file,
        output_file,
        error_file,
        ft_job,
        paused_job,
        done_job,
        model,
        chat_model,
        done_batch,
        running_batch,
        key,
        membership,
        token,
        webhook,
        delivery,
        evaluation,
        runs[0],
        runs[1],
        output_item,
        alias,
    )


@pytest.fixture
def world(alice: Any, alice_project: Project, bob: Any) -> World:
    return seed_tenant(alice, alice_project, bob)


def tenant_checksum(organization: Organization) -> str:
    """A digest of every row (and stored blob) of one organization."""
    querysets = [
        Organization.objects.filter(pk=organization.pk),
        Membership.objects.filter(organization=organization),
        Invitation.objects.filter(organization=organization),
        Project.objects.filter(organization=organization),
        ApiKey.objects.filter(project__organization=organization),
        File.objects.filter(project__organization=organization),
        Job.objects.filter(organization=organization),
        JobEvent.objects.filter(job__organization=organization),
        Checkpoint.objects.filter(job__organization=organization),
        Model.objects.filter(organization=organization),
        UsageRecord.objects.filter(organization=organization),
        Subscription.objects.filter(organization=organization),
        WebhookEndpoint.objects.filter(project__organization=organization),
        WebhookDelivery.objects.filter(endpoint__project__organization=organization),
        Eval.objects.filter(project__organization=organization),
        EvalRun.objects.filter(eval__project__organization=organization),
        EvalOutputItem.objects.filter(run__eval__project__organization=organization),
        ModelAlias.objects.filter(project__organization=organization),
        AliasMove.objects.filter(alias__project__organization=organization),
    ]
    digest = hashlib.sha256()
    for queryset in querysets:
        for row in queryset.order_by("pk").values():
            digest.update(json.dumps(row, default=str, sort_keys=True).encode())
    for file in File.objects.filter(project__organization=organization):
        digest.update(f"{file.content.name}={file.content.storage.exists(file.content.name or '')}".encode())
    return digest.hexdigest()


# --- The routes, from the URL conf ----------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    name: str  # "api:file", "dashboard:job"
    pattern: str
    params: tuple[str, ...]
    callback: Any

    @property
    def is_api(self) -> bool:
        return self.name.startswith("api:")

    def methods(self) -> list[str]:
        """API: the handlers the view defines. Pages: GET and POST (a 405 must then match too)."""
        if not self.is_api:
            return ["get", "post"]
        view = self.callback.view_class
        return [m for m in ("get", "post", "put", "patch", "delete") if hasattr(view, m)]

    def __str__(self) -> str:
        return self.name


_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


def _walk(patterns: list[Any], prefix: str, namespace: str) -> Iterator[Route]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = ":".join(filter(None, [namespace, entry.namespace or ""]))
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern) and entry.name:
            pattern = prefix + str(entry.pattern)
            params = tuple(_PARAM.findall(pattern))
            yield Route(
                f"{namespace}:{entry.name}" if namespace else entry.name, pattern, params, entry.callback
            )


def all_routes() -> list[Route]:
    return list(_walk(get_resolver().url_patterns, "", ""))


def id_routes() -> list[Route]:
    """Every /v1/ and dashboard route with a path parameter."""
    return [r for r in all_routes() if r.params and r.name.split(":")[0] in ("api", "dashboard")]


ID_ROUTES = id_routes()

# How to fill each path parameter: alice's real object, and an id that does not exist.
Getter = Callable[[World], Any]
PARAMETERS: dict[str, tuple[Getter, Getter]] = {
    "project_id": (lambda w: w.project.public_id, lambda w: random_id("proj_")),
    "file_id": (lambda w: w.file.public_id, lambda w: random_id("file-")),
    "job_id": (lambda w: w.ft_job.public_id, lambda w: random_id("ftjob-")),
    "batch_id": (lambda w: w.done_batch.public_id, lambda w: random_id("batch_")),
    "model": (lambda w: w.model.name, lambda w: f"ft:minilm-l6:nobody:x:{random_id('ftjob-')}"),
    "model_name": (lambda w: w.model.name, lambda w: f"ft:minilm-l6:nobody:x:{random_id('ftjob-')}"),
    "prefix": (lambda w: w.key.prefix, lambda w: random_id("", 8)),
    "membership_id": (lambda w: w.membership.pk, lambda w: w.membership.pk + 1_000_000),
    "invitation_id": (
        lambda w: Invitation.objects.get(organization=w.organization).pk,
        lambda w: Invitation.objects.get(organization=w.organization).pk + 1_000_000,
    ),
    "token": (lambda w: w.invitation_token, lambda w: secrets.token_urlsafe(32)),
    "endpoint_id": (lambda w: w.webhook.public_id, lambda w: random_id("we_")),
    "delivery_id": (lambda w: w.delivery.pk, lambda w: w.delivery.pk + 1_000_000),
    "eval_id": (lambda w: w.eval.public_id, lambda w: random_id("eval_")),
    "run_id": (lambda w: w.eval_run.job.public_id, lambda w: random_id("evalrun_")),
    "output_item_id": (lambda w: w.output_item.public_id, lambda w: random_id("outputitem_")),
    "name": (lambda w: w.alias.name, lambda w: f"{random_id('', 8).lower()}@nowhere"),
}
# Where a route acts on an object in a particular state, it gets that object.
OVERRIDES: dict[tuple[str, str], Getter] = {
    ("api:ft_resume", "job_id"): lambda w: w.paused_job.public_id,
    ("api:batch_cancel", "batch_id"): lambda w: w.running_batch.public_id,
    ("dashboard:batch_cancel", "batch_id"): lambda w: w.running_batch.public_id,
    ("api:eval_run_cancel", "run_id"): lambda w: w.running_eval_run.job.public_id,
    ("dashboard:eval_run_cancel", "run_id"): lambda w: w.running_eval_run.job.public_id,
}
# Parameters that are bearer secrets, not object ids: holding one is the permission (an
# invitation link works for whoever it was mailed to, before they have an account).
BEARER_PARAMETERS = {"token"}


def kwargs_for(route: Route, world: World, *, real: bool) -> dict[str, Any]:
    missing = [p for p in route.params if p not in PARAMETERS]
    if missing:
        pytest.fail(
            f"{route.name} ({route.pattern}) has path parameter(s) {missing} with no seeding recipe: add one "
            "to PARAMETERS in tests/security/test_bola.py so the BOLA matrix covers this route."
        )
    values = {}
    for param in route.params:
        real_value, missing_value = PARAMETERS[param]
        getter = OVERRIDES.get((route.name, param), real_value) if real else missing_value
        values[param] = getter(world)
    return values


# --- Calling and comparing ------------------------------------------------------------------------
def call(client: Any, method: str, url: str) -> Any:
    if method == "get":
        return client.get(url)
    if method == "delete":
        return client.delete(url)
    if hasattr(client, "credentials"):  # the API client: a JSON body
        return client.generic(method.upper(), url, "{}", content_type="application/json")
    return client.post(url, {})


def body_of(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


_CSRF = re.compile(r"[A-Za-z0-9]{64}")
_FORM_TOKEN = re.compile(r'name="form_token" value="[^"]*"')


def normalised(response: Any, values: list[Any]) -> str:
    """The body with the ids blanked (and CSRF and form tokens, which differ on every render)."""
    # Tokens first: an id such as 18 can occur inside a random CSRF token, and blanking it there
    # would leave a token the pattern no longer matches.
    text = _FORM_TOKEN.sub("<form-token>", _CSRF.sub("<csrf>", body_of(response)))
    for value in sorted((str(v) for v in values), key=len, reverse=True):
        text = text.replace(value, "<id>")
    return text


def shape(response: Any, values: list[Any]) -> Any:
    if response.get("Content-Type", "").startswith("application/json"):
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            return {"error": {**error, "message": normalised_text(error.get("message") or "", values)}}
        return data
    return normalised(response, values)


def normalised_text(text: str, values: list[Any]) -> str:
    for value in sorted((str(v) for v in values), key=len, reverse=True):
        text = text.replace(value, "<id>")
    return text


def assert_like_missing(
    client: Any, route: Route, method: str, real: dict[str, Any], fake: dict[str, Any]
) -> int:
    """carol's call with alice's ids answers exactly as the call with ids that do not exist."""
    real_response = call(client, method, reverse(route.name, kwargs=real))
    fake_response = call(client, method, reverse(route.name, kwargs=fake))
    where = f"{method.upper()} {route.name} {real}"
    assert real_response.status_code == fake_response.status_code, where
    assert real_response.status_code in (404, 405), f"{where}: {real_response.status_code}"
    values = [*real.values(), *fake.values()]
    assert shape(real_response, values) == shape(fake_response, values), where
    assert MARKER not in body_of(real_response)
    return int(real_response.status_code)


# --- The matrix -----------------------------------------------------------------------------------
def test_the_matrix_covers_the_routes_it_should() -> None:
    names = {route.name for route in ID_ROUTES}
    assert {
        "api:file",
        "api:fine_tuning_job",
        "api:batch",
        "api:model",
        "dashboard:project",
        "dashboard:file",
        "dashboard:job",
        "dashboard:model",
        "dashboard:batch",
        "dashboard:api_key_revoke",
        "dashboard:member_role",
        "dashboard:invitation_revoke",
        "dashboard:accept_invitation",
    } <= names


def test_every_id_route_has_a_recipe() -> None:
    missing = sorted(f"{r.name}: {p}" for r in ID_ROUTES for p in r.params if p not in PARAMETERS)
    assert not missing, f"routes with an id parameter but no BOLA recipe: {missing}"


def test_every_schema_route_with_an_id_is_in_the_matrix(client: Any) -> None:
    schema = client.get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    patterns = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", "/" + route.pattern) for route in ID_ROUTES}
    with_ids = [path for path in schema["paths"] if "{" in path]
    assert with_ids, "the schema lists no path with a parameter"
    assert sorted(set(with_ids) - patterns) == []


@pytest.mark.parametrize("route", [r for r in ID_ROUTES if not set(r.params) & BEARER_PARAMETERS], ids=str)
def test_an_outsider_cannot_reach_alices_object(
    route: Route, world: World, carol_api: Any, carol_client: Any, carol_project: Project
) -> None:
    # given
    before = tenant_checksum(world.organization)
    client = carol_api if route.is_api else carol_client
    real, fake = kwargs_for(route, world, real=True), kwargs_for(route, world, real=False)
    variants = [(real, fake)]
    if not route.is_api and "project_id" in route.params and len(route.params) > 1:
        # carol's own project with alice's object inside it: the object lookup must be scoped too
        own = {"project_id": carol_project.public_id}
        variants.append(({**real, **own}, {**fake, **own}))
    # when
    statuses = [
        assert_like_missing(client, route, method, a, b) for a, b in variants for method in route.methods()
    ]
    # then
    assert 404 in statuses, f"{route.name}: no method answered 404 ({statuses})"
    assert tenant_checksum(world.organization) == before


@pytest.mark.parametrize("route", ID_ROUTES, ids=str)
def test_alice_reaches_every_route_of_the_matrix(
    route: Route, world: World, api: Any, alice_client: Any
) -> None:
    """The positive control: the ids the matrix uses are real, so carol's 404s mean something."""
    client = api if route.is_api else alice_client
    url = reverse(route.name, kwargs=kwargs_for(route, world, real=True))
    statuses = {method: call(client, method, url).status_code for method in route.methods()}
    # An empty POST may well be a 400 (the form is incomplete), but only after the lookup passed.
    assert 404 not in statuses.values(), statuses
    assert all(status < 500 for status in statuses.values()), statuses
    assert any(status not in (404, 405) for status in statuses.values()), statuses


def test_an_invitation_link_held_by_someone_else_adds_no_one(
    world: World, carol: Any, carol_client: Any
) -> None:
    # given: the link is a bearer secret; carol somehow holds the one mailed to dave
    url = reverse("dashboard:accept_invitation", args=[world.invitation_token])
    before = tenant_checksum(world.organization)
    # when
    carol_client.post(url)
    # then
    assert not Membership.objects.filter(organization=world.organization, user=carol).exists()
    assert tenant_checksum(world.organization) == before
    assert carol_client.get(reverse("dashboard:accept_invitation", args=["not-a-token"])).status_code == 404


# --- Foreign ids inside request bodies and query strings -------------------------------------------
def counts() -> tuple[int, int, int]:
    return Job.objects.count(), File.objects.count(), Model.objects.count()


def same_as_missing(first: Any, second: Any, values: list[Any]) -> None:
    assert first.status_code == second.status_code, (first.content, second.content)
    assert first.status_code in (400, 404), first.content
    assert shape(first, values) == shape(second, values)


def test_fine_tuning_on_alices_file_is_refused_and_creates_nothing(
    world: World, carol_api: Any, carol_project: Project
) -> None:
    own = stored_file(carol_project, "mine.csv", TRAINING_CSV, FilePurpose.FINE_TUNE, "classification_csv")
    before = counts()
    missing = random_id("file-")
    for path in ("/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/estimate"):
        for field, theirs, fake in (
            ("training_file", {"training_file": world.file.public_id}, {"training_file": missing}),
            (
                "validation_file",
                {"training_file": own.public_id, "validation_file": world.file.public_id},
                {"training_file": own.public_id, "validation_file": missing},
            ),
        ):
            first = carol_api.post(path, {"model": "minilm-l6", **theirs}, format="json")
            second = carol_api.post(path, {"model": "minilm-l6", **fake}, format="json")
            same_as_missing(first, second, [world.file.public_id, missing])
            assert first.json()["error"]["param"] == field
    assert counts() == before


def test_fine_tuning_alices_model_as_a_base_is_refused(
    world: World, carol_api: Any, carol_project: Project
) -> None:
    own = stored_file(carol_project, "mine.csv", TRAINING_CSV, FilePurpose.FINE_TUNE, "classification_csv")
    before = counts()
    missing = f"ft:minilm-l6:nobody:x:{random_id('ftjob-')}"
    first = carol_api.post(
        "/v1/fine_tuning/jobs", {"model": world.model.name, "training_file": own.public_id}, format="json"
    )
    second = carol_api.post(
        "/v1/fine_tuning/jobs", {"model": missing, "training_file": own.public_id}, format="json"
    )
    same_as_missing(first, second, [world.model.name, missing])
    assert counts() == before


def test_a_batch_over_alices_file_is_refused_and_creates_nothing(world: World, carol_api: Any) -> None:
    before = counts()
    missing = random_id("file-")
    body = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    first = carol_api.post(
        "/v1/batches", {**body, "input_file_id": world.batch_file.public_id}, format="json"
    )
    second = carol_api.post("/v1/batches", {**body, "input_file_id": missing}, format="json")
    same_as_missing(first, second, [world.batch_file.public_id, missing])
    assert counts() == before


@pytest.mark.parametrize(
    ("path", "model", "body"),
    [
        ("/v1/chat/completions", "chat_model", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", "chat_model", {"prompt": "hi"}),
        ("/v1/classifications", "model", {"input": "hi"}),
    ],
)
def test_alices_fine_tuned_model_is_not_found_for_carol(
    world: World, carol_api: Any, path: str, model: str, body: dict[str, Any]
) -> None:
    before = counts()
    name = getattr(world, model).name
    missing = f"ft:minilm-l6:nobody:x:{random_id('ftjob-')}"
    first = carol_api.post(path, {**body, "model": name}, format="json")
    second = carol_api.post(path, {**body, "model": missing}, format="json")
    same_as_missing(first, second, [name, missing])
    assert first.status_code == 404 and first.json()["error"]["code"] == "model_not_found"
    assert counts() == before


@pytest.mark.parametrize(
    ("path", "object_name"),
    [
        ("/v1/files", "file"),
        ("/v1/fine_tuning/jobs", "ft_job"),
        ("/v1/batches", "done_batch"),
    ],
)
def test_a_cursor_from_alices_list_is_not_found_in_carols(
    world: World, carol_api: Any, path: str, object_name: str
) -> None:
    theirs = getattr(world, object_name).public_id
    missing = random_id("x-")
    same_as_missing(
        carol_api.get(path, {"after": theirs}), carol_api.get(path, {"after": missing}), [theirs, missing]
    )


def test_a_cursor_from_alices_events_is_not_found_in_carols_job(
    world: World, carol_api: Any, carol_project: Project
) -> None:
    own = _job(carol_project, JobKind.FINE_TUNE, JobStatus.RUNNING, model_name="minilm-l6")
    theirs = world.ft_job.events.first().public_id  # type: ignore[union-attr]
    checkpoint = world.ft_job.checkpoints.first().public_id  # type: ignore[union-attr]
    missing = random_id("ft-event-")
    for suffix, foreign in (("events", theirs), ("checkpoints", checkpoint)):
        path = f"/v1/fine_tuning/jobs/{own.public_id}/{suffix}"
        first, second = carol_api.get(path, {"after": foreign}), carol_api.get(path, {"after": missing})
        same_as_missing(first, second, [foreign, missing])


def test_usage_filtered_by_alices_project_counts_nothing(world: World, carol_api: Any) -> None:
    start = int(timezone.now().timestamp()) - 86400
    for path in ("/v1/usage", "/v1/usage/costs"):
        params = {"start_time": start, "group_by": "project_id"}
        theirs = carol_api.get(path, {**params, "project_ids": world.project.public_id})
        fake = carol_api.get(path, {**params, "project_ids": random_id("proj_")})
        assert theirs.status_code == fake.status_code == 200
        assert theirs.json() == fake.json()
        assert world.project.public_id not in theirs.content.decode()


# --- The same through the dashboard's forms --------------------------------------------------------
def page(project: Project, path: str) -> str:
    return f"/projects/{project.public_id}/{path}"


def test_dashboard_forms_refuse_alices_ids_and_create_nothing(
    world: World, carol_client: Any, carol_project: Project
) -> None:
    before, checksum = counts(), tenant_checksum(world.organization)
    missing_file, missing_model = random_id("file-"), f"ft:minilm-l6:nobody:x:{random_id('ftjob-')}"
    values = [world.file.public_id, world.batch_file.public_id, world.model.name, missing_file, missing_model]
    cases = [
        (
            "fine-tuning/new",
            {"model": "minilm-l6", "training_file": world.file.public_id},
            {"model": "minilm-l6", "training_file": missing_file},
        ),
        (
            "fine-tuning/estimate",
            {"model": "minilm-l6", "training_file": world.file.public_id},
            {"model": "minilm-l6", "training_file": missing_file},
        ),
        (
            "batches/new",
            {"model": "", "file": world.batch_file.public_id},
            {"model": "", "file": missing_file},
        ),
        (
            "batches/new",
            {"model": world.model.name, "file": world.file.public_id},
            {"model": missing_model, "file": missing_file},
        ),
        (
            "playground/classify",
            {"model": world.model.name, "input": "hello"},
            {"model": missing_model, "input": "hello"},
        ),
    ]
    for path, theirs, fake in cases:
        first = carol_client.post(page(carol_project, path), theirs)
        second = carol_client.post(page(carol_project, path), fake)
        assert first.status_code == second.status_code, path
        assert normalised(first, values) == normalised(second, values), path
        assert MARKER not in body_of(first)
    chat = {"model": world.chat_model.name, "messages": [{"role": "user", "content": "hi"}]}
    first = carol_client.post(page(carol_project, "playground/chat"), chat, content_type="application/json")
    second = carol_client.post(
        page(carol_project, "playground/chat"),
        {**chat, "model": missing_model},
        content_type="application/json",
    )
    same_as_missing(first, second, [world.chat_model.name, missing_model])
    assert counts() == before
    assert tenant_checksum(world.organization) == checksum


def test_switching_to_alices_organization_is_404(world: World, carol_client: Any) -> None:
    first = carol_client.post("/organizations/switch", {"organization": world.organization.public_id})
    second = carol_client.post("/organizations/switch", {"organization": random_id("org-")})
    assert first.status_code == second.status_code == 404
    assert (
        carol_client.get("/projects/").context["projects"].filter(organization=world.organization).count()
        == 0
    )
