"""The pages we do not write ourselves, in Chromium under their Content-Security-Policy: the API
reference (Redoc, from drf-spectacular-sidecar) and Django admin."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser]

REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def test_the_api_reference_renders_and_searches_under_its_policy(new_context: Any, console: Any) -> None:
    page = new_context("visitor").new_page()

    response = page.goto("/docs")

    assert "style-src 'self' 'unsafe-inline'" in response.headers["content-security-policy"]
    page.get_by_role("heading", name="Modelworks API (1.0.0)").wait_for()
    page.get_by_placeholder("Search...").fill("batches")  # the search index runs in a blob: worker
    page.get_by_role("menuitem", name="listBatches").wait_for()
    # Redoc's footer would load its logo from Redocly's CDN (the policy would refuse it): the page
    # drops it before it is requested, so nothing fails at all.
    page.get_by_text("API docs by Redocly").first.wait_for(state="attached")
    assert page.locator(f"img[src='{REDOC_LOGO}']").count() == 0
    console.check()


def test_the_admin_works_under_the_policy(new_context: Any, console: Any, alice: Any) -> None:
    from apps.accounts.models import User

    User.objects.create_superuser("root@example.com", PASSWORD)
    page = new_context("staff").new_page()

    page.goto("/admin/login/")
    page.fill("#id_username", "root@example.com")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Users", exact=True).click()
    page.get_by_role("link", name=alice.email).click()
    page.get_by_role("heading", name="Change user").wait_for()
    page.get_by_placeholder("Filter").first.fill("nothing matches this")  # SelectFilter2's widget
    page.locator("#id_last_login_0").fill("")
    page.get_by_role("link", name="Today").first.click()  # DateTimeShortcuts
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", page.locator("#id_last_login_0").input_value())
    page.locator("#calendarlink0").click()
    page.locator("#calendarbox0").wait_for()

    console.check()
