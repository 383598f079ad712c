"""A new customer's first hour in a real browser (Debian's Chromium, driven by Playwright, against
the live server and a real Celery worker).

A visitor arrives at `/`, signs up, asks for the email again, confirms it and lands logged in;
chooses the organization's slug; follows the project's checklist with the sample dataset through
a real fine-tune of the tiny BERT, tries the model in the playground, copies its code, creates an
API key and calls the model with the official SDK, which completes the checklist. Each page this
work changed is screenshotted at 1280 px and at 390×844 into var/screenshots/test_first_hour/,
and any console error or violation of the pages' Content-Security-Policy fails it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from openai import OpenAI

from tests.conftest import PASSWORD, ROOT
from tests.e2e.conftest import Console, Shots

pytestmark = [pytest.mark.browser, pytest.mark.integration]

EMAIL = "newcomer@example.com"
SLUG = "first-hour"
CONFIRM_PATH = re.compile(r"/accounts/confirm-email/[^/\s]+/")
WIDE = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def screens(console: Console) -> Shots:
    return Shots(ROOT / "var" / "screenshots" / "test_first_hour", console)


def both_widths(page: Any, screens: Shots, name: str, *, must_fit: bool = False) -> None:
    """Screenshots at 1280 px and at 390×844; a page that must fit a phone may not scroll sideways."""
    screens(page, f"{name} 1280")
    page.set_viewport_size(PHONE)
    try:
        screens(page, f"{name} 390")
        if must_fit:
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{name}: {width}px wide at 390"
    finally:
        page.set_viewport_size(WIDE)


def clipboard(page: Any) -> str:
    return str(page.evaluate("() => navigator.clipboard.readText()"))


def copy_and_check(page: Any, button: Any, expected: str) -> None:
    button.click()
    page.wait_for_function("(b) => b.textContent === 'Copied'", arg=button.element_handle())
    assert clipboard(page) == expected
    page.get_by_role("status").filter(has_text="to the clipboard.").wait_for()


def test_a_new_customers_first_hour(
    new_context: Any,
    screens: Shots,
    console: Console,
    live_server: Any,
    mailoutbox: list[Any],
    celery_worker: Any,
    tiny_base: Any,
    tiny_chat: Any,
    billing_plans: None,
) -> None:
    context = new_context("newcomer")
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = context.new_page()

    # --- Arriving: what it is, what it costs, how to start ------------------------------------------
    page.goto("/")
    page.get_by_role("heading", name="Fine-tune, serve and pay for your own models").wait_for()
    assert "$49.00" in page.locator("#plan-pro").inner_text()
    assert "$0.00" in page.locator("#plan-free").inner_text()
    both_widths(page, screens, "landing", must_fit=True)
    page.get_by_role("link", name="Sign up free").first.click()

    # --- Sign up; the verify-email page sends the email again ------------------------------------
    page.wait_for_url(re.compile(r"/accounts/signup/$"))
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.get_by_role("button", name="Sign Up").click()
    page.get_by_role("heading", name="Verify your email address").wait_for()
    assert EMAIL in page.locator("main").inner_text()
    both_widths(page, screens, "verify email", must_fit=True)
    page.get_by_role("button", name="Send the email again").click()
    page.get_by_text(f"Confirmation email sent to {EMAIL}.").wait_for()
    confirmations = [m for m in mailoutbox if EMAIL in m.to]
    assert [m.subject for m in confirmations] == ["[Modelworks] Confirm your email address"] * 2
    assert "127.0.0.1:8000" in confirmations[-1].body and "signed up for Modelworks" in confirmations[-1].body

    # --- Confirm: logged in at once, pointed at the checklist --------------------------------------
    link = CONFIRM_PATH.search(confirmations[-1].body)
    assert link, confirmations[-1].body
    page.goto(link.group(0))
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(re.compile(r"/projects/$"))
    page.get_by_text(f"You have confirmed {EMAIL}.").wait_for()
    page.get_by_text(EMAIL).first.wait_for()  # the top bar of a signed-in page
    both_widths(page, screens, "projects with the welcome")

    # --- The organization's slug, set once -------------------------------------------------------
    page.goto("/organization/")
    assert page.locator("#current-slug").inner_text().startswith("org-")
    page.get_by_label("Slug", exact=True).fill("FirstHour!")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Set the slug").click()
    page.locator("#organization-slug-error").wait_for()
    assert "contains “!”" in page.locator("#organization-slug-error").inner_text()
    both_widths(page, screens, "organization slug refused")
    page.get_by_label("Slug", exact=True).fill(SLUG)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Set the slug").click()
    page.locator("#slug-fixed").wait_for()
    both_widths(page, screens, "organization settings")

    # --- The checklist: the sample dataset, validated by the worker -------------------------------
    page.get_by_role("link", name="Projects", exact=True).click()
    page.get_by_role("link", name="Get started").click()
    page.get_by_role("heading", name="Get started").wait_for()
    assert page.locator("#checklist-count").inner_text() == "0 of 4 done"
    both_widths(page, screens, "project checklist")
    page.get_by_role("button", name="Use the sample dataset").click()
    page.wait_for_url(re.compile(r"/files/file-[^/]+/$"))
    page.locator("#file-status .badge.processed").wait_for()
    assert "240" in page.locator("dl.facts").inner_text()
    both_widths(page, screens, "sample file validated")

    # --- Fine-tune with this file: the form opens with it chosen -----------------------------------
    page.get_by_role("link", name="Fine-tune with this file").click()
    page.wait_for_url(re.compile(r"/fine-tuning/new\?training_file=file-"))
    assert "support_tickets.csv" in page.locator("#id_training_file option:checked").inner_text()
    page.select_option("#id_model", "tiny-bert")
    page.fill("#id_n_epochs", "2")
    page.get_by_role("button", name="Start fine-tune").click()
    page.wait_for_url(re.compile(r"/fine-tuning/ftjob-[^/]+/$"))
    page.locator("#job-badge", has_text=re.compile("^(Succeeded|Failed|Cancelled)$")).wait_for(
        timeout=240_000
    )
    assert page.locator("#job-badge").inner_text() == "Succeeded", page.locator("#job-status").inner_text()
    model_name = page.locator("#job-status a.mono").inner_text().strip()
    assert model_name.startswith(f"ft:tiny-bert:{SLUG}::ftjob-"), model_name

    # --- The checklist moves on: try it in the playground ----------------------------------------
    page.get_by_role("link", name=re.compile(r"Default project")).first.click()
    assert page.locator("#checklist-count").inner_text() == "2 of 4 done"
    assert model_name in page.locator("#checklist-code-python").inner_text()
    both_widths(page, screens, "project checklist half done")
    page.get_by_role("link", name="Try in playground").click()
    page.wait_for_url(re.compile(r"/playground/\?model=.*#classify$"))
    assert page.locator("#panel-classify").is_visible()
    assert page.locator("#classify-model option:checked").get_attribute("value") == model_name
    page.get_by_label("Texts").fill("I was charged twice this month\nThe app crashes when I open settings")
    page.get_by_role("button", name="Classify", exact=True).click()
    page.locator("#classify-results .classification").first.wait_for()
    assert page.locator("#classify-results .classification").count() == 2

    # --- View code, copied -----------------------------------------------------------------------
    page.locator("#panel-classify").get_by_role("button", name="View code").click()
    python = page.locator("#classify-code-python")
    python.wait_for()
    code = python.inner_text()
    assert f'"model": "{model_name}"' in code and '"The app crashes when I open settings"' in code
    assert code.startswith("import os\n\nfrom openai import OpenAI\n")
    copy_and_check(page, page.get_by_role("button", name="Copy the Python code").last, code)
    curl = page.locator("#classify-code-curl").inner_text()
    copy_and_check(page, page.get_by_role("button", name="Copy the curl command").last, curl)
    assert curl.startswith("curl http://127.0.0.1:8000/v1/classifications \\")
    both_widths(page, screens, "playground view code")

    # --- The chat's code follows its settings, quoted for the shell ---------------------------------
    page.get_by_role("tab", name="Chat").click()
    page.select_option("#chat-model", "tiny-gpt2")
    page.fill("#chat-system", "Answer in one line.")
    page.fill("#chat-temperature", "0.5")
    page.get_by_label("Message").fill("What's new?")
    page.locator("#panel-chat").get_by_role("button", name="View code").click()
    chat = page.locator("#chat-code-python").inner_text()
    assert '        {"role": "system", "content": "Answer in one line."},\n' in chat
    assert '        {"role": "user", "content": "What\'s new?"},\n' in chat
    assert '    model="tiny-gpt2",\n' in chat and "    temperature=0.5,\n" in chat
    shell_quoted = '"content": "What\'\\\'\'s new?"'  # the ' closes, is escaped, and reopens the quote
    assert shell_quoted in page.locator("#chat-code-curl").inner_text()

    # --- The model page: try in playground, Python and curl ---------------------------------------
    page.goto(page.url.split("/playground/")[0] + "/models/")
    assert model_name in page.locator("#fine-tuned-models").inner_text()
    assert ":ckpt-step-" not in page.locator("#fine-tuned-models").inner_text()
    both_widths(page, screens, "models list")
    page.get_by_role("link", name=model_name).click()
    page.get_by_role("link", name="Try in playground").wait_for()
    assert ":ckpt-step-" in page.locator("#model-checkpoints").inner_text()
    both_widths(page, screens, "model page")

    # --- An API key, copied, and a call from code: the checklist is done --------------------------
    page.locator("#api-snippet").get_by_role("link", name="API keys").click()
    page.get_by_label("Key name").fill("laptop")
    page.get_by_role("button", name="Create secret key").click()
    key = page.locator("#new-key-value").inner_text().strip()
    copy_and_check(page, page.get_by_role("button", name="Copy the API key"), key)
    both_widths(page, screens, "api key created")
    client = OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=60)
    result = client.post(
        "/classifications", body={"model": model_name, "input": ["Please refund me"]}, cast_to=object
    )
    assert result["data"][0]["labels"], result  # type: ignore[index]
    page.get_by_role("link", name=re.compile(r"Default project")).first.click()
    page.get_by_role("heading", name="Default project").wait_for()
    assert page.locator("#checklist").count() == 0
    counters = {
        name: page.locator(f"#count-{name}").inner_text() for name in ("files", "fine-tunes", "models")
    }
    assert counters == {"files": "1", "fine-tunes": "1", "models": "1"}, counters
    both_widths(page, screens, "project after the first hour")

    # --- Files list: uploads only ----------------------------------------------------------------
    page.get_by_role("link", name="Files", exact=True).click()
    files = page.locator("table.files").inner_text()
    assert "support_tickets.csv" in files and "_metrics" not in files
    both_widths(page, screens, "files list")

    console.check()
