"""The whole product in a real browser: Debian's Chromium, driven by Playwright, against the live
server and a real Celery worker.

One journey, as a new customer walks it: sign up and verify the email, create a project, upload a
CSV and read its validation report, fine-tune the tiny BERT (watching the progress bar and the loss
chart), classify with the new model and chat with streaming in the playground, create and revoke
an API key, invite a teammate who signs up and accepts, and read the usage chart. Every step is
screenshotted into test-artifacts/e2e/, and any console error, uncaught exception or violation of
the pages' Content-Security-Policy fails it.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, sentiment_csv

pytestmark = [pytest.mark.browser, pytest.mark.integration]

OWNER = "owner@example.com"
TEAMMATE = "teammate@example.com"
PROJECT = "Support tickets"
CONFIRM_PATH = re.compile(r"/accounts/confirm-email/[^/\s]+/")
INVITATION_PATH = re.compile(r"/invitations/[^/\s]+/")

# The chart helpers read Chart.js's own state: how many points each dataset of a canvas holds.
CHART_POINTS = """(id) => {
  const chart = window.Chart && Chart.getChart(document.getElementById(id));
  return chart ? chart.data.datasets.map((d) => d.data.length) : null;
}"""
CHART_SUM = """(id) => {
  const chart = window.Chart && Chart.getChart(document.getElementById(id));
  if (!chart) return null;
  return chart.data.datasets.reduce((sum, d) => sum + d.data.reduce((a, v) => a + (Number(v) || 0), 0), 0);
}"""
# Records each text the streaming answer shows, to prove it arrived in pieces.
WATCH_STREAM = """() => {
  window.__answers = [];
  window.__streaming = false;
  new MutationObserver(() => {
    const item = document.querySelector('#chat-log .chat-message.assistant');
    if (!item) return;
    if (item.classList.contains('streaming')) window.__streaming = true;
    const text = item.querySelector('.chat-text').textContent;
    if (text && window.__answers[window.__answers.length - 1] !== text) window.__answers.push(text);
  }).observe(document.getElementById('chat-log'), {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def accessible_node(page: Any, role: str, name: str) -> dict[str, Any]:
    """Chromium's own accessibility tree (what a screen reader gets): the node's value and
    properties, by role and accessible name."""
    session = page.context.new_cdp_session(page)
    try:
        nodes = session.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        session.detach()
    for node in nodes:
        if node.get("role", {}).get("value") == role and node.get("name", {}).get("value") == name:
            properties = {item["name"]: item["value"].get("value") for item in node.get("properties", [])}
            return {"value": node.get("value", {}).get("value"), **properties}
    raise AssertionError(f"no {role} named {name!r} in the accessibility tree")


def the_csv() -> bytes:
    """120 learnable rows plus one duplicate, so the report has a warning to show."""
    data = sentiment_csv(120)
    first_row = data.splitlines()[1]
    return data + first_row + b"\n"


def mail_link(outbox: list[Any], to: str, pattern: re.Pattern[str]) -> str:
    """The path of the link in the latest email to `to` (the host in emails is not the browser's)."""
    for message in reversed(outbox):
        if to in message.to and (found := pattern.search(message.body)):
            return found.group(0)
    raise AssertionError(
        f"no email to {to} with a link like {pattern.pattern}: {[m.subject for m in outbox]}"
    )


def follow(page: Any, link: str, path: str) -> None:
    """Clicks a sidebar link and waits for the page to load (its scripts then hold the page)."""
    page.get_by_role("link", name=link, exact=True).click()
    page.wait_for_url(re.compile(re.escape(path) + "$"))


def sign_up_and_verify(page: Any, email: str, outbox: list[Any], shot: Any, who: str) -> None:
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.get_by_role("button", name="Sign Up").click()
    page.get_by_role("heading", name=re.compile("verify your email", re.I)).wait_for()
    shot(page, f"{who} signed up, verification sent")

    page.goto(mail_link(outbox, email, CONFIRM_PATH))
    page.get_by_role("button", name="Confirm").click()
    page.get_by_text(f"You have confirmed {email}.").wait_for()
    if "/accounts/login/" in page.url:  # confirmed, not signed in: sign in as the user would
        shot(page, f"{who} email confirmed")
        page.fill("input[name=login]", email)
        page.fill("input[name=password]", PASSWORD)
        page.get_by_role("button", name="Sign In").click()
    # Signed in where the sign-up started: the projects, or the invitation it came from.
    page.wait_for_url(re.compile(r"/(projects|invitations/[^/]+)/$"))
    page.get_by_text(email).first.wait_for()  # signed in: the top bar names the user
    shot(page, f"{who} verified and signed in")


def test_a_customer_journey_in_the_browser(
    new_context: Any,
    shots: Any,
    console: Any,
    live_server: Any,
    mailoutbox: list[Any],
    celery_worker: Any,
    tiny_base: Any,
    tiny_chat: Any,
    billing_plans: None,  # signing up starts an organization on the Free plan
) -> None:
    started = time.monotonic()
    owner = new_context("owner").new_page()

    # --- Sign up and verify the email (read from the locmem outbox) --------------------------
    signup = owner.goto("/accounts/signup/")
    assert "script-src 'self';" in signup.headers["content-security-policy"]
    sign_up_and_verify(owner, OWNER, mailoutbox, shots, "owner")

    # --- Create a project --------------------------------------------------------------------
    owner.get_by_label("Project name").fill(PROJECT)
    owner.get_by_role("button", name="Create project").click()
    owner.get_by_role("heading", name=PROJECT).wait_for()
    project_url = owner.url
    project_id = project_url.rstrip("/").rsplit("/", 1)[-1]
    shots(owner, "project created")

    # --- Upload a CSV (the drop zone's file input) and read the validation report -------------
    follow(owner, "Files", f"/projects/{project_id}/files/")
    owner.set_input_files(
        "#upload-file", {"name": "tickets.csv", "mimeType": "text/csv", "buffer": the_csv()}
    )
    assert "tickets.csv" in owner.locator("#upload-chosen").inner_text()
    owner.select_option("#upload-purpose", "fine-tune")
    shots(owner, "file chosen")
    owner.get_by_role("button", name="Upload").click()
    owner.wait_for_url(re.compile(rf"/projects/{project_id}/files/file-[^/]+/$"))
    # The status polls while the worker validates, then the page reloads with the full report.
    owner.locator("#file-status .badge.processed").wait_for()
    owner.locator("#label-chart").wait_for()
    report = owner.locator("dl.facts").inner_text()
    assert "classification_csv" in report and "121" in report, report
    warnings = owner.locator(".card", has=owner.get_by_role("heading", name=re.compile("^Warnings")))
    assert "duplicate of line" in warnings.inner_text()
    owner.wait_for_function(f"() => ({CHART_POINTS})('label-chart')?.[0] === 2")
    assert owner.evaluate(CHART_SUM, "label-chart") == 121
    shots(owner, "validation report")

    # --- Start a fine-tune of the tiny model; watch the progress bar and the loss chart -------
    owner.goto(f"/projects/{project_id}/fine-tuning/new")
    # The form picks no training file for the customer.
    owner.select_option("#id_training_file", label="tickets.csv · 121 rows · classification CSV")
    owner.select_option("#id_model", "tiny-bert")
    owner.fill("#id_n_epochs", "8")
    owner.fill("#id_early_stopping_patience", "0")
    # ~870 steps of one example: seconds even on an idle machine, so the page sees the bar move
    # (56 steps once finished before the job page first rendered).
    owner.fill("#id_batch_size", "1")
    owner.dispatch_event("#id_batch_size", "change")  # the estimate follows the form's changes
    owner.wait_for_function("() => /8 epochs/.test(document.getElementById('estimate').textContent)")
    assert int(owner.locator("#estimate-steps").inner_text().replace(",", "")) > 0
    assert owner.locator("#estimate-cost").inner_text().startswith("$")
    shots(owner, "fine-tune estimate")
    owner.get_by_role("button", name="Start fine-tune").click()
    owner.wait_for_url(re.compile(rf"/projects/{project_id}/fine-tuning/ftjob-[^/]+/$"))

    seen: list[float] = []  # the progress bar's values, as the page showed them
    running_shot = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = owner.evaluate(
            """() => ({badge: document.getElementById('job-badge')?.textContent.trim(),
                       bar: document.querySelector('#job-status progress')?.value})"""
        )
        if state["bar"] is not None and (not seen or float(state["bar"]) != seen[-1]):
            seen.append(float(state["bar"]))
        if state["badge"] == "Running" and seen and seen[-1] < 100 and not running_shot:
            shots(owner, "fine-tune running")
            running_shot = True
        if state["badge"] in ("Succeeded", "Failed", "Cancelled"):
            break
        time.sleep(0.1)
    assert owner.locator("#job-badge").inner_text() == "Succeeded", owner.locator("#job-status").inner_text()
    assert seen and seen[-1] == 100, seen
    assert any(value < 100 for value in seen), f"the progress bar never showed a job in progress: {seen}"
    assert seen == sorted(seen), f"the progress bar went backwards: {seen}"
    bar = accessible_node(owner, "progressbar", "Training progress")
    assert (bar["value"], bar["valuemin"], bar["valuemax"]) == (100, 0, 100), bar
    owner.wait_for_function(f"() => ({CHART_POINTS})('loss-chart')?.[0] > 1")  # train loss by step
    points = owner.evaluate(CHART_POINTS, "loss-chart")
    assert points[1] >= 1 and points[2] >= 1, points  # validation loss and accuracy per epoch
    assert owner.locator("#loss-chart-empty").is_hidden()
    owner.locator("#final-metrics").wait_for()
    assert owner.locator("#confusion-matrix").is_visible()
    model_name = owner.locator("#job-status a.mono").inner_text().strip()
    assert model_name.startswith("ft:tiny-bert:"), model_name
    shots(owner, "fine-tune succeeded with loss chart")

    # --- The playground: classify with the new model ----------------------------------------
    follow(owner, "Playground", f"/projects/{project_id}/playground/")
    owner.get_by_role("tab", name="Classify").click()
    assert owner.locator("#panel-classify").is_visible()
    owner.select_option("#classify-model", model_name)
    owner.get_by_label("Texts").fill("what a wonderful movie\nthe day was terrible")
    owner.get_by_role("button", name="Classify", exact=True).click()
    output = owner.locator("#classify-output")
    output.wait_for()
    assert output.locator(".classification").count() == 2
    assert set(output.locator("th[scope=row]").all_inner_texts()) == {"positive", "negative"}
    assert model_name in output.inner_text()
    score = accessible_node(owner, "meter", "positive")
    assert 0 <= score["value"] <= 1 and (score["valuemin"], score["valuemax"]) == (0, 1), score
    shots(owner, "playground classify")

    # --- The playground: chat, the answer streamed -------------------------------------------
    owner.get_by_role("tab", name="Chat").click()
    assert owner.locator("#panel-chat").is_visible() and owner.locator("#panel-classify").is_hidden()
    owner.select_option("#chat-model", "tiny-gpt2")
    owner.fill("#chat-temperature", "1")
    # Sampled, as greedy decoding of the tiny GPT-2 is all newlines; the seed keeps it repeatable.
    owner.fill("#chat-seed", "7")
    owner.fill("#chat-max_tokens", "48")
    assert owner.get_by_role("button", name="Stop").is_hidden()  # only while an answer streams
    owner.evaluate(WATCH_STREAM)
    owner.get_by_label("Message").fill("Tell me a story about a cat.")
    owner.get_by_role("button", name="Send").click()
    owner.wait_for_function(
        "() => /completion tokens/.test(document.getElementById('chat-usage').textContent)"
    )
    owner.locator("#chat-log .chat-message.assistant:not(.streaming)").wait_for()
    owner.get_by_role("button", name="Stop").wait_for(state="hidden")
    assert owner.locator("#chat-error").is_hidden()
    assert (
        owner.locator("#chat-log .chat-message.user .chat-text").inner_text()
        == "Tell me a story about a cat."
    )
    answer = owner.locator("#chat-log .chat-message.assistant .chat-text").inner_text()
    pieces = owner.evaluate("() => window.__answers")
    assert owner.evaluate("() => window.__streaming"), "the answer was never marked as streaming"
    assert answer and pieces and pieces[-1] == answer, pieces
    assert len(pieces) > 1, f"the answer arrived in one piece, not streamed: {pieces}"
    assert all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:], strict=False)), pieces
    shots(owner, "playground chat streamed")

    # --- Create an API key, use it, revoke it -------------------------------------------------
    follow(owner, "API keys", f"/projects/{project_id}/api-keys/")
    owner.get_by_label("Key name").fill("ci")
    owner.get_by_role("button", name="Create secret key").click()
    key = owner.locator("#new-key-value").inner_text().strip()
    assert key.startswith("sk-"), key
    shots(owner, "api key created")
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as api:
        assert api.get("/v1/models").status_code == 200
        owner.once("dialog", lambda dialog: dialog.accept())  # "Revoke this key?"
        owner.get_by_role("row", name=re.compile(r"^ci ")).get_by_role("button", name="Revoke").click()
        owner.get_by_role("row", name=re.compile(r"^ci ")).locator(".badge.revoked").wait_for()
        assert api.get("/v1/models").status_code == 401
    shots(owner, "api key revoked")

    # --- Invite a teammate, who signs up in another browser and accepts ----------------------
    follow(owner, "Team", "/team/")
    owner.get_by_label("Email", exact=True).fill(TEAMMATE)
    owner.get_by_label("Role", exact=True).select_option("member")
    owner.get_by_role("button", name="Send invitation").click()
    owner.get_by_text(f"Invitation sent to {TEAMMATE}.").wait_for()
    assert TEAMMATE in owner.locator("table", has_text="Sent").inner_text()
    shots(owner, "teammate invited")

    invitation = mail_link(mailoutbox, TEAMMATE, INVITATION_PATH)
    teammate = new_context("teammate").new_page()
    teammate.goto(invitation)
    teammate.get_by_role("heading", name=re.compile(r"^Join ")).wait_for()
    shots(teammate, "teammate opens the invitation")
    teammate.get_by_role("link", name="Sign up").click()
    teammate.wait_for_url(re.compile(r"/accounts/signup/"))
    sign_up_and_verify(teammate, TEAMMATE, mailoutbox, shots, "teammate")
    teammate.goto(invitation)
    teammate.get_by_role("button", name="Accept invitation").click()
    teammate.wait_for_url(re.compile(r"/projects/$"))
    teammate.get_by_text("Welcome to owner's organization.").wait_for()
    teammate.get_by_role("link", name=PROJECT).wait_for()
    assert teammate.locator("#org-switcher select option:checked").inner_text() == "owner's organization"
    shots(teammate, "teammate joined")
    # The switcher sends its form on a change (our script: the policy runs no onchange= handler).
    teammate.locator("#org-switcher select").select_option(label="teammate's organization")
    teammate.wait_for_function(
        "(name) => document.querySelector('#org-switcher select option:checked').textContent === name",
        arg="teammate's organization",
    )
    assert not teammate.get_by_role("link", name=PROJECT).is_visible()

    owner.reload()
    members = owner.locator("table").first.inner_text()
    assert TEAMMATE in members and OWNER in members, members
    owner.get_by_label(f"Role of {TEAMMATE}").select_option("admin")
    owner.get_by_text(f"{TEAMMATE} is now admin.").wait_for()
    shots(owner, "team with the teammate")

    # --- Usage, with its chart ---------------------------------------------------------------
    follow(owner, "Usage", "/usage/")
    owner.wait_for_function(f"() => ({CHART_SUM})('usage-by-model') > 0")
    assert owner.evaluate(CHART_SUM, "usage-by-unit") > 0
    assert owner.locator("#usage-chart-empty").is_hidden()
    assert PROJECT in owner.locator("#usage-by-project").inner_text()
    shots(owner, "usage with chart")

    console.check()
    print(
        f"the journey took {time.monotonic() - started:.1f}s; progress bar showed {seen}; the chat answer "
        f"arrived in {len(pieces)} pieces; screenshots in {shots.folder}"
    )
