"""Every page carries a strict Content-Security-Policy, and holds nothing that policy would refuse:
no inline script, no inline event handler, no style attribute or element, no javascript: URL."""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, resolve
from django.utils import timezone

from apps.accounts.models import Invitation
from apps.dashboard.urls import urlpatterns as dashboard_urls
from apps.evals import aliases
from apps.jobs.models import JobEvent, JobStatus
from apps.projects.actions import create_api_key
from apps.registry.models import Model
from apps.webhooks import actions as webhooks
from apps.webhooks.models import WebhookDelivery
from tests.billing.test_usage_api import record
from tests.conftest import login
from tests.dashboard.test_batches import batch_with_results, chat_output, chat_request, processed_file
from tests.dashboard.test_fine_tuning import METRICS, make_job
from tests.dashboard.test_models import make_model

STRICT = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
STRIPE_FORMS = STRICT.replace(
    "form-action 'self'", "form-action 'self' https://checkout.stripe.com https://billing.stripe.com"
)
# Dashboard routes that answer no page of their own: actions that redirect, downloads and JSON.
NOT_PAGES = {
    "switch_organization",
    "member_role",
    "member_remove",
    "invitation_resend",
    "invitation_revoke",
    "project_rename",
    "api_key_revoke",
    "file_upload",
    "file_content",
    "file_delete",
    "job_metrics",
    "job_cancel",
    "model_download",
    "model_delete",
    "playground_chat",
    "batch_cancel",
    "eval_run_cancel",
    "alias_create",
    "alias_move",
    "alias_rollback",
    "alias_update",
    "alias_delete",
    "batch_output",
    "batch_errors",
    "batch_results_csv",
    "usage_daily",
    "usage_export",
    "resend_verification",
    "use_sample",
    "dismiss_checklist",
    "billing_checkout",
    "billing_portal",
    "billing_return",
    "billing_limits",
    "billing_openai_key",
    "billing_openai_key_remove",
    "webhook_update",
    "webhook_rotate",
    "webhook_test",
    "webhook_resend",
    "webhook_delete",
}
LABELLED_CSV = b"text,label\nrefund please,billing\nthe app crashes,bug\nlove it,praise\nso slow,bug\n"


class InlineCode(HTMLParser):
    """Collects what a strict policy refuses: code in <script> other than JSON data, on…= and
    hx-on attributes, style attributes and elements, and javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_code_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith(("on", "hx-on", "data-hx-on")) or name == "style":
                self.found.append(f"<{tag} {name}={value!r}>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}={value!r}>")
        if tag == "style":
            self.found.append("a <style> element")
        if tag == "script":
            attributes = dict(attrs)
            self._in_code_script = "src" not in attributes and attributes.get("type") != "application/json"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_code_script = False

    def handle_data(self, data: str) -> None:
        if self._in_code_script and data.strip():
            self.found.append(f"an inline script: {data.strip()[:60]!r}")


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    parser.close()
    return parser.found


def problems(response: Any, policy: str = STRICT) -> list[str]:
    found = []
    if response.get("Content-Security-Policy") != policy:
        found.append(f"policy {response.get('Content-Security-Policy')!r}")
    return found + inline_code(response.content.decode())


@pytest.fixture
def busy_project(alice: Any, bob: Any, alice_project: Any) -> dict[str, Any]:
    """alice's project with something on every page: a labelled file, a running and a finished
    fine-tune, a model, a running batch, spend this month, a teammate, an invitation and a key."""
    file = processed_file(alice_project, "tickets.csv", LABELLED_CSV)
    running = make_job(
        alice_project,
        JobStatus.RUNNING,
        training_file=file,
        started_at=timezone.now(),
        progress={"step": 3, "total_steps": 8, "epoch": 1, "percent": 37.5, "eta_seconds": 20},
    )
    JobEvent.objects.create(job=running, type="metrics", message="", data={"step": 1, "train_loss": 0.9})
    finished = make_job(alice_project, JobStatus.SUCCEEDED, training_file=file, result={"metrics": METRICS})
    model = make_model(alice_project)
    batch = batch_with_results(
        alice_project,
        [chat_request("a", "hi"), chat_request("b", "yo")],
        [chat_output("a", "hello")],
        [],
        status=JobStatus.RUNNING,
    )
    record(alice_project, timezone.now() - timedelta(minutes=1), "trained_tokens", 1000, 4_500_000)
    Invitation.objects.create(
        organization=alice_project.organization,
        email="dave@example.com",
        invited_by=alice,
        token_hash=Invitation.hash_token("dave-token"),
    )
    create_api_key(alice_project, "ci", alice)
    # a catalog model with a shutdown date ahead: the catalog shows it as deprecated
    Model.objects.filter(name="smollm2-135m-instruct").update(
        shutdown_date=timezone.now().date() + timedelta(days=30)
    )
    # a webhook endpoint whose one delivery failed once and waits for its retry
    hook, _ = webhooks.create_endpoint(
        alice_project,
        alice,
        name="ci",
        url="https://hooks.example.com/modelworks",
        event_types=["batch.failed"],
    )
    with transaction.atomic():
        webhooks.emit(alice_project.pk, "batch.failed", batch.public_id)
    webhooks.record(
        WebhookDelivery.objects.get(endpoint=hook), webhooks.Outcome(503, 87, error="answered 503")
    )
    # an eval with a finished run of two items (imported here: that module imports this one's checks)
    from tests.dashboard.test_evals_pages import JUDGE, baseline_items, make_eval, make_run

    Model.objects.create(name=JUDGE, task="generation", limits={"servable": True})
    evaluation = make_eval(alice_project, alice)
    run = make_run(evaluation, "baseline", baseline_items(evaluation)[:2])
    # a protected alias gated on that eval, and a free one moved once (its page offers a rollback)
    gate = {"eval_id": evaluation.public_id, "min_pass_rate": 0.5, "not_worse": True}
    aliases.create(
        alice_project, {"name": "support-bot@prod", "model": JUDGE, "protected": True, "gate": gate}, alice
    )
    moved = aliases.create(alice_project, {"name": "support-bot@dev", "model": JUDGE}, alice)
    aliases.move(moved, {"model": model.name}, alice)
    return {
        "eval": evaluation,
        "eval_run": run,
        "file": file,
        "running": running,
        "finished": finished,
        "model": model,
        "batch": batch,
        "hook": hook,
    }


def test_every_page_has_the_policy_and_no_inline_code(
    client: Client, alice: Any, alice_project: Any, busy_project: dict[str, Any]
) -> None:
    # given: every kind of page, for a visitor and for alice
    base = f"/projects/{alice_project.public_id}"
    file, model = busy_project["file"], busy_project["model"]
    running, finished, batch = busy_project["running"], busy_project["finished"], busy_project["batch"]
    evaluation, run = busy_project["eval"], busy_project["eval_run"]
    anonymous = [
        "/",
        "/accounts/login/",
        "/accounts/signup/",
        "/accounts/password/reset/",
        "/invitations/dave-token/",
    ]
    pages = [
        "/",
        "/organizations/new",
        "/team/",
        "/invitations/dave-token/",
        "/projects/",
        f"{base}/",
        f"{base}/delete",
        f"{base}/api-keys/",
        f"{base}/files/",
        f"{base}/files/{file.public_id}/",
        f"{base}/files/{file.public_id}/?line=2",
        f"{base}/files/{file.public_id}/status",
        f"{base}/fine-tuning/",
        f"{base}/fine-tuning/new",
        f"{base}/fine-tuning/import-openai/",
        f"{base}/fine-tuning/{running.public_id}/",
        f"{base}/fine-tuning/{running.public_id}/status",
        f"{base}/fine-tuning/{finished.public_id}/",
        f"{base}/models/",
        f"{base}/models/{model.name}/",
        f"{base}/models/minilm-l6/",
        f"{base}/playground/",
        f"{base}/batches/",
        f"{base}/batches/{batch.public_id}/",
        f"{base}/batches/{batch.public_id}/status",
        f"{base}/webhooks/",
        f"{base}/webhooks/{busy_project['hook'].public_id}/",
        f"{base}/evals/",
        f"{base}/evals/{evaluation.public_id}/",
        f"{base}/evals/{evaluation.public_id}/runs/{run.job.public_id}/",
        f"{base}/evals/{evaluation.public_id}/runs/{run.job.public_id}/status",
        f"{base}/evals/{evaluation.public_id}/compare?a={run.job.public_id}&b={run.job.public_id}",
        f"{base}/aliases/",
        f"{base}/aliases/support-bot@prod/",
        f"{base}/aliases/support-bot@dev/",
        "/usage/",
        "/accounts/email/",
        "/accounts/password/change/",
        "/organization/",
    ]
    found: dict[str, list[str]] = {}
    visited: set[str] = set()

    # when
    for path in anonymous:
        found[f"anonymous {path}"] = problems(client.get(path))
    signup = {"email": "new@example.com", "password1": "a-long-password-1", "password2": "a-long-password-1"}
    client.post("/accounts/signup/", signup)  # the verify-email page, with its resend form
    found["anonymous /accounts/confirm-email/"] = problems(client.get("/accounts/confirm-email/"))
    login(client, alice)
    for path in pages:
        response = client.get(path, follow=True)
        assert response.status_code == 200, path
        visited.add(resolve(path.split("?")[0]).url_name or "")
        found[path] = problems(response)
    for path, data in [
        (f"{base}/fine-tuning/estimate", {"training_file": file.public_id, "model": "minilm-l6"}),
        (f"{base}/playground/classify", {"model": model.name, "input": ""}),  # the error fragment
        (f"{base}/batches/new", {"model": "no-such-model", "file": file.public_id}),  # the page again
        ("/organization/rename", {"name": ""}),  # the settings page with the error beside the field
        ("/organization/slug", {"slug": "-"}),
    ]:
        visited.add(resolve(path).url_name or "")
        found[f"POST {path}"] = problems(client.post(path, data))
    visited.add("billing")
    found["/billing/"] = problems(client.get("/billing/"), STRIPE_FORMS)
    found["a missing page"] = problems(client.get(f"{base}/files/file-nope/"))
    found["a bad request"] = problems(client.get("/projects/?q=%00"))

    # then
    assert {path: issues for path, issues in found.items() if issues} == {}
    every_page = {p.name for p in dashboard_urls if isinstance(p, URLPattern) and p.name not in NOT_PAGES}
    assert every_page - visited == set(), "pages this test does not fetch"


def test_the_server_error_page_has_the_policy_and_no_inline_style(
    alice_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("apps.dashboard.views.projects.render", broken)
    alice_client.raise_request_exception = False

    response = alice_client.get("/projects/")

    assert response.status_code == 500
    assert "Something went wrong" in response.content.decode()
    assert problems(response) == []


def test_the_admin_pages_have_the_policy_and_no_inline_code(client: Client, alice_project: Any) -> None:
    from apps.accounts.models import User

    assert problems(client.get("/admin/login/")) == []
    admin = User.objects.create_superuser("root@example.com", "a-long-admin-password")
    login(client, admin)
    for path in [
        "/admin/",
        "/admin/accounts/user/",
        f"/admin/accounts/user/{admin.pk}/change/",
        "/admin/jobs/job/",
        f"/admin/projects/project/{alice_project.pk}/change/",
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert problems(response) == [], path


def test_only_the_api_reference_may_add_styles_and_a_search_worker(db: None) -> None:
    response = Client().get("/docs")

    # Redoc injects <style> elements and runs its search in a worker made from a blob: URL.
    assert (
        response["Content-Security-Policy"]
        == STRICT.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
        + "; worker-src 'self' blob:"
    )
    assert inline_code(response.content.decode()) == []


def test_debug_error_pages_keep_their_own_inline_code(alice_client: Client, settings: Any) -> None:
    settings.DEBUG = True

    response = alice_client.get("/projects/proj_nope/")

    assert response.status_code == 404
    assert "Content-Security-Policy" not in response
