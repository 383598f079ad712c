"""Browser fixtures: Debian's Chromium driven by Playwright, screenshots, a guard against console
errors and Content-Security-Policy violations.

Playwright's Python package ships only its driver; the browser is the system's `chromium`
(`apt-get install chromium`; `.ci/run` installs it). `playwright install` is never run.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium")
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000
# Runs in every document before its own scripts: each violation of the page's policy is reported
# to the test through an exposed function, besides the console message Chromium writes for it.
REPORT_CSP_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(`${event.effectiveDirective} refused ${event.blockedURI || "inline code"} `
    + `(${event.sourceFile || document.URL}:${event.lineNumber}) ${event.sample}`);
});"""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remembers each phase's report on the item, so fixtures can tell a failed test."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


class Console:
    """Collects console errors, uncaught exceptions and Content-Security-Policy violations from
    every page of the watched contexts."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, context: Any, who: str) -> None:
        context.expose_function(
            "reportCspViolation", lambda text: self.errors.append(f"[{who}] CSP violation: {text}")
        )
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        context.on("page", lambda page: self._attach(page, who))

    def _attach(self, page: Any, who: str) -> None:
        def on_console(message: Any) -> None:
            if message.type == "error":
                location = message.location or {}
                self.errors.append(
                    f"[{who}] console.error on {page.url}: {message.text} "
                    f"({location.get('url', '')}:{location.get('lineNumber', '')})"
                )

        page.on("console", on_console)
        page.on(
            "pageerror", lambda error: self.errors.append(f"[{who}] uncaught error on {page.url}: {error}")
        )

    def check(self) -> None:
        assert not self.errors, "errors in the browser console or against its policy:\n" + "\n".join(
            self.errors
        )


class Shots:
    """Numbered full-page screenshots in test-artifacts/e2e/; each also checks the console."""

    def __init__(self, folder: Path, console: Console) -> None:
        self.folder = folder
        self.console = console
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()

    def __call__(self, page: Any, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.png"
        page.screenshot(path=str(path), full_page=True)
        self.console.check()
        return path


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def shots(console: Console) -> Shots:
    return Shots(ARTIFACTS, console)


@pytest.fixture
def browser(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Chromium for one test. The live server runs in its own thread; the browser in this one."""
    if CHROMIUM is None:
        pytest.skip("the browser tests need Debian's chromium on PATH (apt-get install chromium)")
    # Playwright's sync API keeps an asyncio loop running in this thread, which trips Django's
    # async-safety check on the ORM calls the test itself makes (fixtures, reading mail).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_context(
    browser: Any, live_server: Any, console: Console, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """Makes isolated browser sessions (one per person) watched by the console guard; on a
    failure, each open page is saved as a `failed-…` screenshot."""
    contexts: list[tuple[str, Any]] = []

    def make(who: str) -> Any:
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        console.watch(context, who)
        contexts.append((who, context))
        return context

    yield make
    failed = getattr(request.node, "rep_call", None)
    for who, context in contexts:
        if failed is not None and failed.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for index, page in enumerate(context.pages):
                try:
                    page.screenshot(path=str(ARTIFACTS / f"failed-{who}-{index}.png"), full_page=True)
                except Exception as exc:  # a crashed page: the report already has the cause
                    print(f"no failure screenshot of {who}'s page {index}: {exc}")
        context.close()
