"""T24: nothing of alice's organization reaches carol through lists, pages, exports or emails.

alice's organization is seeded with one real object of every kind (tests/security/test_bola.py) plus
a unique marker string in each place a customer's words are stored: organization and project names,
file names and rows, a fine-tune's suffix and metadata, a model name, an API key name, a prompt and
an output stored on jobs, and the usage those jobs left. Then carol walks every dashboard page she
can reach (the links from her home page, and the URL conf's pages for her own ids), every /v1 list,
the usage CSV export, and every email the system sends her. alice's markers appear 0 times. alice,
walking the same way, sees every one of them: the positive control that the walk reaches them.

A forged task message that points carol's job at alice's file is refused by the worker (the last
test here).
"""

from __future__ import annotations

import json
import re
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urldefrag, urlsplit

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.billing.actions import check_spend_alert
from apps.billing.models import Subscription, UsageRecord
from apps.billing.quotas import subscription_for
from apps.core.tenancy import foreign_references
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects import actions as projects
from apps.projects.models import FilePurpose, Project
from apps.registry.models import Model
from tests.conftest import login
from tests.security.test_bola import (
    MARKER,
    Route,
    World,
    _job,
    all_routes,
    seed_tenant,
    store_weights,
    stored_file,
)

pytestmark = pytest.mark.usefixtures("media")

# One marker per place a customer's words are stored. Hyphenated, so no CSRF token (alphanumeric)
# can contain one by chance.
MARKERS = {
    "organization": "org-name-q7k2",
    "project": "project-name-w3n8",
    "file_name": "file-name-h5v1",
    "file_row": "file-row-c9d4",
    "suffix": "job-suffix-r2m6",  # a fine-tune's suffix names its model: ft:base:org:suffix:job
    "metadata": "job-metadata-t8b3",
    "key_name": "key-name-p6x5",
    "prompt": "job-prompt-f1s7",
    "output": "job-output-k3u2",
    "usage": "usage-model-e5g8",
    "bola": MARKER,  # test_bola's marker, in its rows, prompts, outputs and key name
}


@dataclass
class Seeded:
    world: World
    project: Project  # alice's second project, with the markers
    job: Job  # a fine-tune with a suffix and metadata, on a marked file
    model: Model
    key: str  # a key of the marked project (API lists are per project)


def seed_markers(alice: Any, alice_project: Project, bob: Any) -> Seeded:
    organization = alice_project.organization
    organization.name = f"Acme {MARKERS['organization']}"
    organization.save(update_fields=["name"])
    world = seed_tenant(alice, alice_project, bob)
    project = Project.objects.create(organization=organization, name=MARKERS["project"], created_by=alice)
    rows = f"text,label\n{MARKERS['file_row']} refund please,billing\nthe app crashes,bug\nlove it,praise\n"
    file = stored_file(
        project, f"{MARKERS['file_name']}.csv", rows.encode(), FilePurpose.FINE_TUNE, "classification_csv"
    )
    base = Model.objects.get(name="minilm-l6")
    job = _job(
        project,
        JobKind.FINE_TUNE,
        JobStatus.SUCCEEDED,
        model=base,
        model_name=base.name,
        training_file=file,
        finished_at=timezone.now(),
        trained_tokens=100,
        request={"suffix": MARKERS["suffix"]},
        metadata={"team": MARKERS["metadata"]},
    )
    model = Model.objects.create(
        name=f"ft:minilm-l6:acme:{MARKERS['suffix']}:{job.public_id}",
        organization=organization,
        project=project,
        base=base,
        task="classification",
        labels=["billing", "bug", "praise"],
        limits={"servable": True},
        artifact_key=f"models/{organization.public_id}/{job.public_id}",
    )
    Job.objects.filter(pk=job.pk).update(fine_tuned_model=model)
    store_weights(model.artifact_key)
    key, raw_key = projects.create_api_key(project, MARKERS["key_name"], alice)
    generation = _job(
        project,
        JobKind.GENERATION,
        JobStatus.SUCCEEDED,
        model_name=model.name,
        api_key=key,
        request={"messages": [{"role": "user", "content": MARKERS["prompt"]}]},
        result={"choices": [{"message": {"role": "assistant", "content": MARKERS["output"]}}]},
    )
    UsageRecord.objects.create(
        organization=organization,
        project=project,
        api_key=key,
        job=generation,
        model_name=f"ft:minilm-l6:acme:{MARKERS['usage']}:x",
        unit="input_tokens",
        quantity=7,
        cost=3,
    )
    return Seeded(world, project, job, model, raw_key)


@pytest.fixture
def seeded(alice: Any, alice_project: Project, bob: Any) -> Seeded:
    return seed_markers(alice, alice_project, bob)


# --- Walking the dashboard ------------------------------------------------------------------------
_LINK = re.compile(r"""(?:href|hx-get|src|data-url)=["']([^"']+)["']""")
# Pages a walk must not open with GET (none change state on GET, but logging out ends the walk).
_SKIP = ("/accounts/logout", "/static/", "/admin/", "/docs", "/v1/schema")


def links(base: str, body: str) -> Iterator[str]:
    for raw in _LINK.findall(body):
        url = urldefrag(raw.replace("&amp;", "&"))[0]
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or not url:
            continue  # off the site
        if not url.startswith("/"):
            url = base.rsplit("/", 1)[0] + "/" + url
        if not url.startswith(_SKIP):
            yield url


def body_text(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


def own_pages(projects: list[Project]) -> list[str]:
    """The URL conf's dashboard pages that take no id but the viewer's own project ids."""
    pages = []
    for route in all_routes():
        if not route.name.startswith("dashboard:") or not set(route.params) <= {"project_id"}:
            continue
        if route.params:
            pages += [reverse(route.name, kwargs={"project_id": p.public_id}) for p in projects]
        else:
            pages.append(reverse(route.name))
    return pages


def crawl(client: Client, start: list[str], limit: int = 600, variants: int = 3) -> dict[str, str]:
    """Every page reachable by GET from `start`, following links: {url: body}. A page with query
    strings is opened with its first few (the usage pages link month after month, back forever)."""
    seen: dict[str, str] = {}
    per_path: Counter[str] = Counter()
    queue = deque(start)
    while queue and len(seen) < limit:
        url = queue.popleft()
        path = url.split("?")[0]
        if url in seen or per_path[path] >= variants:
            continue
        per_path[path] += 1
        response = client.get(url)
        assert response.status_code < 500, (url, response.status_code)
        seen[url] = body_text(response) if response.status_code == 200 else ""
        if response.status_code in (301, 302) and response["Location"].startswith("/"):
            queue.append(response["Location"])
        queue.extend(links(url, seen[url]))
    assert len(seen) < limit, "the walk did not end: raise the limit or skip a generated family of pages"
    return seen


def walk_dashboard(client: Client, projects: list[Project]) -> dict[str, str]:
    pages = crawl(client, ["/", *own_pages(projects)])
    month = timezone.now().strftime("%Y-%m")
    export = client.get(f"/usage/export.csv?month={month}")
    assert export.status_code == 200 and export["Content-Type"].startswith("text/csv")
    pages[f"/usage/export.csv?month={month}"] = body_text(export)
    return pages


# --- Walking the API ------------------------------------------------------------------------------
# Lists that are not of our rows: the organization's jobs and files at OpenAI, read with its own
# OpenAI key (tests/api/test_openai_import.py shows a caller only ever reaches its own organization's key).
NOT_OUR_ROWS = {"api:import_openai_jobs", "api:import_openai_files"}


def list_routes() -> list[Route]:
    """Every /v1 route with no path parameter that answers GET, and lists our rows."""
    return [
        r
        for r in all_routes()
        if r.is_api and not r.params and "get" in r.methods() and r.name not in NOT_OUR_ROWS
    ]


def walk_api(key: str) -> dict[str, str]:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    params = {"start_time": int(timezone.now().timestamp()) - 86400, "limit": 50}
    bodies = {}
    for route in list_routes():
        url = reverse(route.name)
        response = client.get(url, params)
        assert response.status_code == 200, (url, response.content)
        bodies[url] = body_text(response)
        for group in ("project_id", "api_key_id", "model"):
            grouped = client.get(url, {**params, "group_by": group})
            bodies[f"{url}?group_by={group}"] = body_text(grouped) if grouped.status_code == 200 else ""
    return bodies


def occurrences(bodies: dict[str, str]) -> dict[str, list[str]]:
    """{marker name: the pages it appears on} for every marker that appears."""
    found: dict[str, list[str]] = {}
    for name, marker in MARKERS.items():
        where = [url for url, body in bodies.items() if marker in body]
        if where:
            found[name] = where
    return found


# --- The crawl ------------------------------------------------------------------------------------
def test_carol_sees_none_of_alices_markers_on_any_page_list_or_export(
    seeded: Seeded, carol: Any, carol_project: Project, carol_key: str
) -> None:
    # given: carol has things of her own, so her pages and lists are not empty
    stored_file(
        carol_project,
        "carol.csv",
        b"text,label\nhello,a\nbye,b\n",
        FilePurpose.FINE_TUNE,
        "classification_csv",
    )
    # when
    pages = walk_dashboard(login(Client(), carol), [carol_project])
    lists = walk_api(carol_key)
    # then
    assert len(pages) > 10, sorted(pages)
    assert occurrences(pages) == {}
    assert occurrences(lists) == {}


def test_alice_sees_every_marker_the_same_way(seeded: Seeded, alice: Any, alice_key: str) -> None:
    """The positive control: the walks reach every place the markers are stored."""
    projects = list(Project.objects.filter(organization=seeded.project.organization))
    pages = walk_dashboard(login(Client(), alice), projects)
    lists = {
        **walk_api(alice_key),
        **{f"{url} (marked project)": body for url, body in walk_api(seeded.key).items()},
    }
    # A chat request's prompt and output are stored on its job, which no page or list shows, to
    # alice either: they stay in the set above for carol, and out of this control.
    assert sorted(set(MARKERS) - set(occurrences({**pages, **lists}))) == ["output", "prompt"]


# --- Emails ---------------------------------------------------------------------------------------
def emails_to(address: str) -> str:
    return "\n".join(
        f"{m.subject}\n{m.body}\n" + "\n".join(str(a[0]) for a in getattr(m, "alternatives", []))
        for m in mail.outbox
        if address in m.to
    )


def send_every_email(client: Client, user: Any, other_address: str, capture: Any) -> None:
    """The emails the product sends a user: password reset, email verification, an invitation, and
    the spend alert of their organization."""
    organization = user.memberships.get().organization
    UsageRecord.objects.create(
        organization=organization,
        project=organization.projects.first(),
        model_name="minilm-l6",
        unit="input_tokens",
        quantity=1,
        cost=1,
    )
    Subscription.objects.filter(pk=subscription_for(organization).pk).update(alert_threshold=1)
    assert check_spend_alert(organization)
    assert client.post("/accounts/password/reset/", {"email": user.email}).status_code == 302
    response = client.post("/accounts/email/", {"email": other_address, "action_add": ""})
    assert response.status_code == 302, response.content
    with capture(execute=True):
        response = client.post("/team/", {"email": other_address, "role": "member"})
    assert response.status_code in (200, 302)


def test_carols_emails_carry_none_of_alices_markers(
    seeded: Seeded, alice: Any, carol: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given: alice's organization sends its own emails at the same time
    send_every_email(
        login(Client(), alice), alice, "alice.work@example.com", django_capture_on_commit_callbacks
    )
    # when
    send_every_email(
        login(Client(), carol), carol, "carol.work@example.com", django_capture_on_commit_callbacks
    )
    # then
    carols = emails_to(carol.email) + emails_to("carol.work@example.com")
    assert sorted(m.subject for m in mail.outbox if set(m.to) & {carol.email, "carol.work@example.com"}) == [
        "Outsiders Inc passed $0.000001 of spend this month",
        "You are invited to Outsiders Inc on Modelworks",
        "[Modelworks] Confirm your email address",
        "[Modelworks] Password Reset Email",
    ]
    assert {name for name, marker in MARKERS.items() if marker in carols} == set()
    # the positive control: alice's invitation names her organization
    assert MARKERS["organization"] in emails_to("alice.work@example.com")


# --- The worker's organization check --------------------------------------------------------------
def test_the_tenancy_check_names_every_foreign_reference(seeded: Seeded, carol_project: Project) -> None:
    job = _job(
        carol_project,
        JobKind.FINE_TUNE,
        JobStatus.QUEUED,
        model_name="minilm-l6",
        model=Model.objects.get(name="minilm-l6"),
    )
    assert foreign_references(job) == []  # a catalog base model is everyone's
    job.training_file = seeded.world.file
    job.validation_file = seeded.world.file
    job.model = seeded.model
    job.api_key = seeded.world.key
    assert foreign_references(job) == ["training_file", "validation_file", "model", "api_key"]
    job.project = seeded.project
    assert foreign_references(job)[0] == "project"
    # alice's own job, on her own file and model, passes
    assert foreign_references(seeded.job) == []


def test_a_forged_message_pairing_alices_file_with_carols_job_is_refused(
    transactional_db: None,
    catalog: None,
    tiny_base: Model,
    alice: Any,
    alice_project: Project,
    bob: Any,
    carol_project: Project,
    celery_worker: Any,
) -> None:
    from saas.celery import app
    from tests.conftest import wait_for

    seeded = seed_markers(alice, alice_project, bob)
    own = stored_file(
        carol_project,
        "carol.csv",
        b"text,label\nhello,a\nbye,b\n",
        FilePurpose.FINE_TUNE,
        "classification_csv",
    )
    job = _job(
        carol_project,
        JobKind.FINE_TUNE,
        JobStatus.QUEUED,
        model=tiny_base,
        model_name=tiny_base.name,
        training_file=own,
        hyperparameters={"n_epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
    )
    # The forgery: carol's job row now names alice's file, and a message is sent for it by name.
    Job.objects.filter(pk=job.pk).update(training_file=seeded.world.file)
    app.send_task("jobs.run_fine_tune", args=[job.public_id, None], queue="gpu")

    def finished() -> Job | None:
        job.refresh_from_db()
        return job if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED) else None

    wait_for(finished, timeout=120, message="the forged job never finished")
    assert job.status == JobStatus.FAILED
    assert job.error == {
        "code": "tenant_mismatch",
        "message": "The job refers to a file or model that does not belong to its organization.",
        "param": "training_file",
    }
    assert job.fine_tuned_model is None and job.trained_tokens in (None, 0)
    assert not Model.objects.filter(organization=carol_project.organization).exists()
    assert MARKER not in json.dumps(
        [job.result, job.progress, list(job.events.values_list("message", "data"))]
    )
