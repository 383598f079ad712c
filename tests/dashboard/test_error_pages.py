"""The 404 and 500 pages look like the product and lead back into it; the 500 page renders with no
database and no request context, under the strict Content-Security-Policy."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client, RequestFactory

from apps.api.errors import server_error
from tests.dashboard.test_content_security_policy import inline_code, problems


def test_the_server_error_page_renders_without_a_database_or_a_request_context() -> None:
    # given no database access at all (this test has none) and a request no middleware has seen
    request = RequestFactory().get("/projects/")

    # when
    response = server_error(request)

    # then
    html = response.content.decode()
    assert response.status_code == 500
    assert "<h1>Something went wrong</h1>" in html
    assert '<link rel="stylesheet" href="/static/css/app.css">' in html
    assert '<a class="button" href="/">Back to the dashboard</a>' in html
    assert '<a class="button secondary" href="/docs/quickstart">Documentation</a>' in html
    assert inline_code(html) == []


def test_a_broken_page_answers_the_branded_500_under_the_policy(
    alice_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("apps.dashboard.views.team.render", broken)
    alice_client.raise_request_exception = False

    response = alice_client.get("/team/")

    assert response.status_code == 500
    assert '<p class="code" aria-hidden="true">500</p>' in response.content.decode()
    assert problems(response) == []


def test_a_missing_page_is_branded_with_a_way_back(alice_client: Client, alice_project: Any) -> None:
    response = alice_client.get(f"/projects/{alice_project.public_id}/files/file-nope/")

    html = response.content.decode()
    assert response.status_code == 404
    assert "<h1>Page not found</h1>" in html
    assert '<a class="button" href="/projects/">Go to your projects</a>' in html
    assert 'aria-label="Dashboard"' in html  # inside the dashboard, with its navigation
    assert problems(response) == []


def test_a_missing_page_for_a_visitor_offers_to_log_in(client: Client, db: None) -> None:
    response = client.get("/no-such-page/")

    html = response.content.decode()
    assert response.status_code == 404
    assert "<h1>Page not found</h1>" in html
    assert '<a class="button" href="/accounts/login/?next=/no-such-page/">Log in</a>' in html
    assert problems(response) == []
