"""Every page on a phone (390×844) and a laptop (1280×800), and with the keyboard alone, in Chromium.

Each dashboard page (all of `apps/dashboard/urls.py`, with real objects behind them), the
documentation pages and the error page: none scrolls sideways, axe-core (vendored under
static/vendor/axe-core, evaluated in the page, never served by it) finds nothing serious or
critical, and each is screenshotted at both sizes into var/screenshots/test_phone_and_keyboard/.
Then the keyboard: the skip link, the menu button, aria-current, the upload area and the
playground's tabs.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.urls import URLPattern

from apps.dashboard.urls import urlpatterns as dashboard_urls
from tests.conftest import PASSWORD, ROOT
from tests.dashboard import test_content_security_policy as every_page
from tests.e2e.conftest import Shots

# alice's project with something on every page (a file, fine-tunes, a model, a batch, spend, a teammate…)
busy_project = every_page.busy_project

pytestmark = [pytest.mark.browser]

SCREENSHOTS = ROOT / "var" / "screenshots" / "test_phone_and_keyboard"
AXE = ROOT / "static" / "vendor" / "axe-core" / "axe.min.js"
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 800}
# Answered inside other pages (htmx fragments) or only to a POST (the form's page again, with its
# errors): no page of their own to visit.
FRAGMENTS = {
    "file_status",
    "job_status",
    "batch_status",
    "eval_run_status",
    "job_estimate",
    "playground_classify",
    "batch_create",
    "organization_rename",
    "organization_slug",
}
FAILING_IMPACTS = {"serious", "critical"}
RUN_AXE = """async () => {
  const results = await axe.run(document, {resultTypes: ["violations"]});
  return results.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + " :: " + (n.failureSummary || "").split("\\n")[1]),
  }));
}"""


@pytest.fixture
def seeded(catalog: None) -> None:
    """The plans and prices the billing pages read (transactional tests empty every table)."""
    from apps.billing.models import Plan, Price
    from apps.billing.seed import seed_billing

    seed_billing(Plan, Price)


def sign_in(page: Any, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(re.compile(r"/projects/$"))


def server_error_page() -> str:
    from django.test import RequestFactory

    from apps.api.errors import server_error

    return server_error(RequestFactory().get("/projects/")).content.decode()


def fits_the_width(page: Any) -> tuple[int, int]:
    return page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")


def axe_violations(page: Any) -> list[dict[str, Any]]:
    # Evaluated through the browser's debugging protocol, which the page's Content-Security-Policy
    # does not govern: no page ever loads axe itself.
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    return page.evaluate(RUN_AXE)


def dashboard_pages(alice_project: Any, objects: dict[str, Any]) -> dict[str, str]:
    base = f"/projects/{alice_project.public_id}"
    file, model, finished, batch = objects["file"], objects["model"], objects["finished"], objects["batch"]
    pages = {
        "home": "/",
        "organization": "/organization/",
        "organization_new": "/organizations/new",
        "team": "/team/",
        "accept_invitation": "/invitations/dave-token/",
        "projects": "/projects/",
        "project": f"{base}/",
        "project_delete": f"{base}/delete",
        "api_keys": f"{base}/api-keys/",
        "files": f"{base}/files/",
        "file": f"{base}/files/{file.public_id}/",
        "jobs": f"{base}/fine-tuning/",
        "job_new": f"{base}/fine-tuning/new",
        "openai_import": f"{base}/fine-tuning/import-openai/",
        "job": f"{base}/fine-tuning/{finished.public_id}/",
        "models": f"{base}/models/",
        "model": f"{base}/models/{model.name}/",
        "playground": f"{base}/playground/",
        "batches": f"{base}/batches/",
        "batch": f"{base}/batches/{batch.public_id}/",
        "usage": "/usage/",
        "billing": "/billing/",
        "webhooks": f"{base}/webhooks/",
        "webhook": f"{base}/webhooks/{objects['hook'].public_id}/",
        "evals": f"{base}/evals/",
        "eval": f"{base}/evals/{objects['eval'].public_id}/",
        "eval_run": f"{base}/evals/{objects['eval'].public_id}/runs/{objects['eval_run'].job.public_id}/",
        "eval_compare": f"{base}/evals/{objects['eval'].public_id}/compare?a={objects['eval_run'].job.public_id}"
        f"&b={objects['eval_run'].job.public_id}",
        "aliases": f"{base}/aliases/",
        "alias": f"{base}/aliases/support-bot@prod/",
    }
    exists = {p.name for p in dashboard_urls if isinstance(p, URLPattern)}
    return {name: path for name, path in pages.items() if name in exists}


def test_every_page_fits_a_phone_and_passes_axe(
    new_context: Any,
    console: Any,
    alice: Any,
    alice_project: Any,
    seeded: None,
    busy_project: dict[str, Any],
) -> None:
    # given every dashboard page, and the pages around them
    pages = dashboard_pages(alice_project, busy_project)
    names = {p.name for p in dashboard_urls if isinstance(p, URLPattern)} - every_page.NOT_PAGES - FRAGMENTS
    assert names - set(pages) == set(), "dashboard pages this test does not visit"
    running = busy_project["running"]
    pages |= {
        "job running": f"/projects/{alice_project.public_id}/fine-tuning/{running.public_id}/",
        "a missing page": f"/projects/{alice_project.public_id}/files/file-nope/",
        "docs quickstart": "/docs/quickstart",
        "docs api guide": "/docs/guides/api",
        "docs deploying guide": "/docs/guides/deploying",
    }
    shots = Shots(SCREENSHOTS, console)
    too_wide: dict[str, tuple[int, int]] = {}
    failing: dict[str, list[dict[str, Any]]] = {}
    moderate: dict[str, list[str]] = {}
    visitor_pages = {
        "visitor home": "/",
        "visitor login": "/accounts/login/",
        "visitor signup": "/accounts/signup/",
        "visitor password reset": "/accounts/password/reset/",
    }
    context = new_context("alice")
    page = context.new_page()

    def check(size_name: str, name: str, path: str) -> None:
        response = page.goto(path)
        page.wait_for_load_state("load")
        key = f"{size_name} {name} ({path})"
        if name == "a missing page":  # Chromium reports the 404 itself on the console: expected here
            assert response.status == 404
            expected = f"console.error on {page.url}: Failed to load resource: the server responded with a status of 404"
            console.errors[:] = [error for error in console.errors if expected not in error]
        else:
            assert response.status == 200, key
        width, inner = fits_the_width(page)
        if width > inner:
            too_wide[key] = (width, inner)
        shots(page, f"{size_name} {name}")
        for violation in axe_violations(page):
            if violation["impact"] in FAILING_IMPACTS:
                failing.setdefault(key, []).append(violation)
            else:
                moderate.setdefault(f"{violation['id']} ({violation['impact']})", []).append(key)

    # when each is shown at both sizes, to a visitor and then to alice
    for who, shown in (("visitor", visitor_pages), ("alice", pages)):
        if who == "alice":
            sign_in(page, alice.email)
        for size_name, size in (("phone", PHONE), ("laptop", LAPTOP)):
            page.set_viewport_size(size)
            for name, path in shown.items():
                check(size_name, name, path)
    # the navigation open on a phone, and the server error page (rendered as the error handler does,
    # in a page of this server so that its stylesheet loads)
    page.set_viewport_size(PHONE)
    page.goto(pages["projects"])
    page.get_by_role("button", name="Menu").click()
    shots(page, "phone menu open")
    for size_name, size in (("phone", PHONE), ("laptop", LAPTOP)):
        page.set_viewport_size(size)
        page.goto("/docs/quickstart")
        page.set_content(server_error_page())
        page.wait_for_load_state("load")
        shots(page, f"{size_name} server error")
        width, inner = fits_the_width(page)
        if width > inner:
            too_wide[f"{size_name} server error"] = (width, inner)
        for violation in axe_violations(page):
            if violation["impact"] in FAILING_IMPACTS:
                failing.setdefault(f"{size_name} server error", []).append(violation)
    (SCREENSHOTS / "axe-not-failing.json").write_text(json.dumps(moderate, indent=2))

    # then
    assert too_wide == {}, "pages wider than the window (scrollWidth, innerWidth)"
    assert failing == {}, json.dumps(failing, indent=2)
    console.check()


def test_the_api_reference_fits_a_phone_and_loads_nothing_from_another_host(
    new_context: Any, console: Any, live_server: Any, db: None
) -> None:
    context = new_context("visitor")
    page = context.new_page()
    foreign: list[str] = []
    here = urlsplit(live_server.url).netloc
    page.on(
        "request",
        lambda request: (
            foreign.append(request.url)
            if urlsplit(request.url).netloc not in (here, "")
            and not request.url.startswith(("data:", "blob:"))
            else None
        ),
    )
    page.set_viewport_size(PHONE)

    page.goto("/docs")
    page.get_by_role("heading", name="Modelworks API (1.0.0)").wait_for()
    page.get_by_text("API docs by Redocly").first.wait_for(state="attached")

    assert foreign == []
    assert page.locator("img[src^='https://']").count() == 0
    width, inner = fits_the_width(page)
    assert width <= inner
    assert page.get_by_role("link", name="Back to the dashboard").get_attribute("href") == "/"
    console.check()


def test_the_navigation_works_from_the_keyboard_on_a_phone(
    new_context: Any,
    console: Any,
    alice: Any,
    alice_project: Any,
    seeded: None,
    busy_project: dict[str, Any],
) -> None:
    page = new_context("alice").new_page()
    sign_in(page, alice.email)
    page.set_viewport_size(PHONE)
    files = f"/projects/{alice_project.public_id}/files/"
    page.goto(files)
    menu = page.get_by_role("button", name="Menu")
    nav = page.get_by_role("navigation", name="Dashboard")

    # the skip link is the first stop, shows when focused, and moves the focus to the content
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to main content"
    assert skip.bounding_box()["y"] >= 0
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"

    # the menu: a disclosure button, closed at first, opened and closed from the keyboard
    assert menu.get_attribute("aria-expanded") == "false" and not nav.is_visible()
    menu.focus()
    page.keyboard.press("Enter")
    assert menu.get_attribute("aria-expanded") == "true" and nav.is_visible()
    current = nav.get_by_role("link", name="Files", exact=True)
    assert current.get_attribute("aria-current") == "page"
    page.keyboard.press("Tab")  # into the menu: the organization switcher comes first
    page.keyboard.press("Escape")
    assert menu.get_attribute("aria-expanded") == "false" and not nav.is_visible()
    assert page.evaluate("() => document.activeElement.textContent") == "Menu"
    page.keyboard.press("Space")
    assert menu.get_attribute("aria-expanded") == "true"

    # on a file's page, Files says the reader is inside it; no link claims the page itself
    page.goto(f"{files}{busy_project['file'].public_id}/")
    menu.click()
    assert nav.get_by_role("link", name="Files", exact=True).get_attribute("aria-current") == "true"
    assert nav.locator("[aria-current=page]").count() == 0

    # on a laptop the navigation is always there, and the button is not
    page.set_viewport_size(LAPTOP)
    page.goto(files)
    assert nav.is_visible() and not menu.is_visible()
    console.check()


def test_the_upload_area_shows_its_focus_and_opens_the_picker_from_the_keyboard(
    new_context: Any, console: Any, alice: Any, alice_project: Any, seeded: None
) -> None:
    page = new_context("alice").new_page()
    sign_in(page, alice.email)
    # Listening from the start: the browser then hands every file picker to the test, none is missed.
    choosers: list[Any] = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.goto(f"/projects/{alice_project.public_id}/files/")
    zone = page.locator("#dropzone")
    outline = "() => getComputedStyle(document.getElementById('dropzone')).outlineStyle"
    assert page.evaluate(outline) == "none"

    for _ in range(60):  # Tab until the file input has the focus
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "upload-file":
            break
    else:
        raise AssertionError("the file input is not reachable with Tab")

    assert page.evaluate(outline) == "solid"
    assert zone.is_visible()
    for key in ("Enter", "Space"):
        opened = len(choosers)
        page.keyboard.press(key)
        for _ in range(100):  # the browser's events arrive while Playwright waits, not while Python sleeps
            if len(choosers) > opened:
                break
            page.wait_for_timeout(100)
        assert len(choosers) > opened, f"{key} opened no file picker"
        assert choosers[-1].element.get_attribute("id") == "upload-file", key
        choosers[-1].set_files([])  # closes this picker: Chromium opens one at a time
    console.check()


def test_the_playground_tabs_follow_the_arrow_keys(
    new_context: Any, console: Any, alice: Any, alice_project: Any, seeded: None
) -> None:
    page = new_context("alice").new_page()
    sign_in(page, alice.email)
    page.goto(f"/projects/{alice_project.public_id}/playground/")
    chat = page.get_by_role("tab", name="Chat")
    classify = page.get_by_role("tab", name="Classify")

    def selected() -> list[tuple[str | None, str | None]]:
        return [
            (tab.get_attribute("aria-selected"), tab.get_attribute("tabindex")) for tab in (chat, classify)
        ]

    # one tab stop: the selected tab
    assert selected() == [("true", "0"), ("false", "-1")]
    chat.focus()
    for key, expected, panel in [
        ("ArrowRight", [("false", "-1"), ("true", "0")], "#panel-classify"),
        ("ArrowRight", [("true", "0"), ("false", "-1")], "#panel-chat"),  # wraps around
        ("End", [("false", "-1"), ("true", "0")], "#panel-classify"),
        ("Home", [("true", "0"), ("false", "-1")], "#panel-chat"),
        ("ArrowLeft", [("false", "-1"), ("true", "0")], "#panel-classify"),
    ]:
        page.keyboard.press(key)
        assert selected() == expected, key
        assert page.locator(panel).is_visible(), key
        focused = page.evaluate("() => document.activeElement.getAttribute('aria-selected')")
        assert focused == "true", key
    console.check()
