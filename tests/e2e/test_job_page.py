"""The new fine-tune form and the job page in a real browser (Debian's Chromium through
Playwright), against the live server and a real Celery worker.

A customer fills the form wrongly and sees every error at once, each beside its field and
outlined; fills it rightly; watches the job page (progress bar, time left, a growing curve); and
finds the finished job's curve drawn at once, with its milestones. Screenshots of both pages at
1280 px and at 390×844 are saved in var/screenshots/test_job_page/; any console error or
violation of the pages' Content-Security-Policy fails the test.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import PASSWORD, ROOT, Worker, paced, running_worker, sentiment_csv
from tests.e2e.conftest import Shots

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SCREENSHOTS = ROOT / "var" / "screenshots" / "test_job_page"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
CHART_POINTS = """() => {
  const chart = window.Chart && Chart.getChart(document.getElementById('loss-chart'));
  return chart ? chart.data.datasets.map((d) => d.data.length) : null;
}"""
# For each field with an error: is its message right under it, in the same column, and is the
# field outlined in red?
ERRORS_BESIDE_FIELDS = """() => Array.from(document.querySelectorAll("[aria-invalid=true]")).map((field) => {
  const slot = document.getElementById("error-" + field.name);
  const f = field.getBoundingClientRect(), s = slot.getBoundingClientRect();
  return {name: field.name, message: slot.textContent.trim(), border: getComputedStyle(field).borderTopColor,
          below: s.top >= f.bottom && s.top - f.bottom < 12, aligned: Math.abs(s.left - f.left) < 2};
})"""
# Each select of the form against the column that holds it.
SELECTS_FIT = """() => Array.from(document.querySelectorAll("#fine-tune-form select")).map((select) => {
  const column = select.parentElement.getBoundingClientRect(), box = select.getBoundingClientRect();
  return {name: select.name, fits: box.left >= column.left - 0.5 && box.right <= column.right + 0.5,
          width: box.width, column: column.width};
})"""


# Elements of the page's cards that reach past their card, in copies of the cards as narrow as on a
# phone (390 px less the page's margins): what a phone would cut or scroll sideways. Wide tables
# scroll in their own .scroll box, on purpose. Copies, beside the cards so the same rules apply to
# them: the page's own cards are left alone, as htmx swaps them.
PAST_A_PHONE_CARD = """(width) => Array.from(document.querySelectorAll(".main .card")).flatMap((card) => {
  const copy = card.cloneNode(true);
  copy.querySelectorAll("[id]").forEach((el) => el.removeAttribute("id"));
  copy.removeAttribute("id");
  const box = document.createElement("div");
  box.style.position = "absolute";
  box.style.left = "-5000px";
  box.style.width = width + "px";
  box.appendChild(copy);
  card.parentElement.appendChild(box);
  const edge = copy.getBoundingClientRect().right;
  const past = Array.from(copy.querySelectorAll("*")).filter((el) => !el.closest(".scroll, option")
    && el.getClientRects().length > 0 && el.getBoundingClientRect().right > edge + 0.5)
    .map((el) => el.tagName + "." + el.className + " " + el.textContent.slice(0, 40));
  box.remove();
  return past;
})"""


def sign_in(page: Any, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(re.compile(r"/projects/"))


def both_widths(page: Any, shots: Shots, name: str) -> None:
    """A screenshot at 1280 px and one at 390×844, back at 1280 afterwards; nothing in the page's
    cards reaches past a card as narrow as a phone's."""
    shots(page, f"{name} 1280")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)  # the chart redraws at the new width
    past = page.evaluate(PAST_A_PHONE_CARD, 358)
    assert past == [], past
    shots(page, f"{name} 390")
    page.set_viewport_size(DESKTOP)
    page.wait_for_timeout(300)


def assert_milestones_shown(page: Any, job_url: str) -> None:
    """The first milestones are on the page. The events card is swapped in every 2 s, so the text is
    waited for; if it never comes, the job's events as stored say whether the page or the job lost one."""
    from apps.jobs.models import JobEvent

    try:
        page.wait_for_function(
            """() => { const t = document.getElementById('job-events')?.textContent || '';
                       return t.includes('Created fine-tuning job.') && t.includes('Running training: 108 examples'); }""",
            timeout=10_000,
        )
    except Exception as exc:
        job_id = job_url.rstrip("/").rsplit("/", 1)[-1]
        stored = list(
            JobEvent.objects.filter(job__public_id=job_id).order_by("id").values_list("type", "message")
        )
        raise AssertionError(f"{page.locator('#job-events').inner_text()}\nstored: {stored}") from exc


def assert_selects_fit(page: Any) -> None:
    for width in (DESKTOP, PHONE):
        page.set_viewport_size(width)
        for select in page.evaluate(SELECTS_FIT):
            assert select["fits"], (width, select)
    page.set_viewport_size(DESKTOP)


@pytest.fixture
def paced_worker(transactional_db: None) -> Iterator[Worker]:
    """A worker whose training steps take at least 0.02 s: the job (648 steps) then runs long
    enough for the page to show its time left, however fast the machine."""
    with running_worker(paced(train=0.02)) as worker:
        yield worker


def test_a_customer_fills_the_form_wrongly_then_rightly_and_watches_the_job(
    new_context: Any, console: Any, alice: Any, alice_project: Any, paced_worker: Any, tiny_base: Any
) -> None:
    from apps.projects.actions import create_processed_file
    from apps.projects.validation import validate_stream

    data = sentiment_csv(120)
    report = validate_stream([data], "fine-tune", filename="tickets.csv")
    create_processed_file(alice_project, "tickets.csv", "fine-tune", data, report)
    shots = Shots(SCREENSHOTS, console)
    page = new_context("alice").new_page()
    sign_in(page, "alice@example.com")
    new = f"/projects/{alice_project.public_id}/fine-tuning/new"

    # --- The form picks nothing for her; she fills it wrongly -----------------------------------
    page.goto(new)
    assert page.locator("#id_training_file option:checked").inner_text() == "Choose a training file…"
    assert page.locator("#id_model option:checked").inner_text() == "Choose a base model…"
    assert_selects_fit(page)
    page.fill("#id_n_epochs", "0")
    page.fill("#id_batch_size", "1000")
    page.fill("#id_suffix", "my model")
    page.get_by_role("button", name="Start fine-tune").click()
    page.locator("#error-summary").wait_for()
    # the live estimate, asked again on load, keeps every error the submit found
    page.wait_for_function(
        "() => /Fix the fields marked in red/.test(document.getElementById('estimate').textContent)"
    )

    # every error at once, each right under its field, outlined, in the words of the form
    assert page.locator("#error-summary").inner_text().startswith("5 fields need attention:")
    shown = {item["name"]: item for item in page.evaluate(ERRORS_BESIDE_FIELDS)}
    assert {name: item["message"] for name, item in shown.items()} == {
        "training_file": "Choose a training file.",
        "model": "Choose a base model.",
        "suffix": "Suffix must be 1 to 64 letters, digits, - or _ (no spaces).",
        "n_epochs": "Epochs must be a whole number from 1 to 50, or empty for auto.",
        "batch_size": "Batch size must be a whole number from 1 to 256, or empty for auto.",
    }
    for item in shown.values():
        assert item["below"] and item["aligned"], item
        assert item["border"] == "rgb(185, 28, 28)", item  # --err
    assert page.evaluate("document.activeElement.id") == "error-summary"
    assert page.locator("#id_suffix").input_value() == "my model"  # what she typed is kept
    both_widths(page, shots, "form with every error")

    # --- Rightly this time: the outline goes as each field is fixed -----------------------------
    page.select_option("#id_training_file", label="tickets.csv · 120 rows · classification CSV")
    page.select_option("#id_model", "tiny-bert")
    page.fill("#id_suffix", "tickets")
    page.fill("#id_n_epochs", "6")
    page.fill("#id_learning_rate_multiplier", "20")  # 1e-3: a tiny model learns within a few epochs
    page.fill("#id_early_stopping_patience", "0")
    page.fill("#id_batch_size", "1")  # 648 steps of one example: long enough to watch
    page.dispatch_event("#id_batch_size", "change")
    page.wait_for_function("() => /6 epochs/.test(document.getElementById('estimate').textContent)")
    # the outlines and the summary follow the fields as they are fixed
    page.wait_for_function("() => !document.querySelector('[aria-invalid=true]')")
    assert page.locator("#error-n_epochs").is_hidden() and page.locator("#error-summary").is_hidden()
    total = int(page.locator("#estimate-steps").inner_text().replace(",", ""))
    both_widths(page, shots, "form filled in with its estimate")
    page.get_by_role("button", name="Start fine-tune").click()
    page.wait_for_url(re.compile(r"/fine-tuning/ftjob-[^/]+/$"))
    job_url = page.url

    # --- The job page while it runs: the bar, the time left, a growing curve --------------------
    bars: list[float] = []
    etas: list[str] = []
    curve: list[int] = []
    running_shot = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = page.evaluate(
            """() => ({badge: document.getElementById('job-badge')?.textContent.trim(),
                       bar: document.querySelector('#job-status progress')?.value,
                       line: document.getElementById('job-progress')?.textContent.trim()})"""
        )
        points = page.evaluate(CHART_POINTS)
        if state["bar"] is not None and (not bars or float(state["bar"]) != bars[-1]):
            bars.append(float(state["bar"]))
        if state["badge"] == "Running":
            if state["line"] and "left" in state["line"]:
                etas.append(state["line"])
            if points and points[0] and (not curve or points[0] > curve[-1]):
                curve.append(points[0])
            if not running_shot and curve and bars and bars[-1] < 90:
                # the status, the curve and the milestones tell the same moment
                assert_milestones_shown(page, job_url)
                both_widths(page, shots, "job running")
                running_shot = True
        if state["badge"] in ("Succeeded", "Failed", "Cancelled"):
            break
        time.sleep(0.2)
    assert page.locator("#job-badge").inner_text() == "Succeeded", page.locator("#job-status").inner_text()
    assert bars == sorted(bars) and bars[-1] == 100 and any(bar < 100 for bar in bars), bars
    assert any(re.search(r"about (\d+ min )?\d+ s left$", line) for line in etas), etas
    # The curve is fetched every 2 s and the worker writes its steps every 2 s: a fast run may be
    # seen once or twice while it runs. What must hold is that the steps so far were drawn then, and
    # that the curve grew from them to every step (below).
    assert curve and curve[0] < total, f"no curve of the steps so far was drawn while the job ran: {curve}"

    # the end: its last step of total and 100%, the whole curve, the milestones
    assert page.locator("#job-progress").inner_text() == f"Step {total:,} of {total:,} · epoch 6 · 100.0%"
    page.wait_for_function(f"() => ({CHART_POINTS})()?.[0] === {total}")  # every step, train loss
    # validation loss and accuracy, each epoch; no eval score, as no eval scores this job
    assert page.evaluate(CHART_POINTS)[1:] == [6, 6, 0]

    # --- The finished job, opened again: its curve is drawn at once, with no fetch --------------
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url) if "metrics.json" in request.url else None)
    page.goto(job_url)
    assert page.evaluate(CHART_POINTS) == [total, 6, 6, 0]
    page.wait_for_timeout(2500)  # a poll would have happened by now
    assert fetched == []
    assert page.locator("#loss-chart-empty").is_hidden()
    events = page.locator("#job-events").inner_text()
    assert "Created fine-tuning job." in events and "The job has successfully completed." in events
    assert events.count(" evaluated: ") == 6 and events.count("Checkpoint saved at step") == 6
    assert not re.search(r"Step \d+/\d+", events), "a step's metrics are in the curve, not the event list"
    assert "/tmp" not in events and "/var" not in events
    page.locator("#final-metrics").wait_for()
    assert "too few to trust" in page.locator("#too-few-to-trust").inner_text()  # 12 validation rows
    assert "12 validation rows" in page.locator("#too-few-to-trust").inner_text()
    both_widths(page, shots, "job succeeded with its curve and milestones")
    console.check()
