"""The sidebar: a skip link to the content, a menu button for narrow screens, and aria-current on
where the reader is."""

from __future__ import annotations

from typing import Any

from django.test import Client

from tests.dashboard.test_batches import processed_file


def sidebar(html: str) -> str:
    return html.split('<nav aria-label="Dashboard">')[1].split("</nav>")[0]


def test_the_current_page_and_section_are_marked(alice_client: Client, alice_project: Any) -> None:
    base = f"/projects/{alice_project.public_id}"
    file = processed_file(alice_project, "tickets.csv", b"text,label\nhi,a\nyo,b\n")

    files_page = sidebar(alice_client.get(f"{base}/files/").content.decode())
    file_page = sidebar(alice_client.get(f"{base}/files/{file.public_id}/").content.decode())
    billing_page = sidebar(alice_client.get("/billing/").content.decode())

    assert f'<a href="{base}/files/" class="active" aria-current="page">Files</a>' in files_page
    assert files_page.count("aria-current") == 1
    assert f'<a href="{base}/files/" class="active" aria-current="true">Files</a>' in file_page
    assert file_page.count("aria-current") == 1
    assert '<a href="/billing/" class="active" aria-current="page">Billing</a>' in billing_page
    assert '<a href="/projects/">Projects</a>' in billing_page


def test_every_page_has_a_skip_link_and_a_menu_button(alice_client: Client, client: Client) -> None:
    html = alice_client.get("/projects/").content.decode()

    assert '<a class="skip-link" href="#main">Skip to main content</a>' in html
    assert '<main class="main" id="main" tabindex="-1">' in html
    assert (
        '<button type="button" class="menu-button secondary" aria-expanded="false" aria-controls="sidebar-panel" '
        "hidden>Menu</button>" in html
    )
    assert '<div class="sidebar-panel" id="sidebar-panel">' in html
    client.logout()
    assert (
        '<a class="skip-link" href="#main">Skip to main content</a>'
        in client.get("/accounts/login/").content.decode()
    )
