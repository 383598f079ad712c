"""The documentation beside the API reference: a quickstart with this server's base URL, the guides
of docs/ as pages, and a way back to the dashboard from each, the reference included."""

from __future__ import annotations

from typing import Any

from django.test import Client

from tests.dashboard.test_content_security_policy import STRICT, inline_code, problems


def test_the_quickstart_gives_the_base_url_a_key_chat_and_a_fine_tune(
    client: Client, db: None, settings: Any
) -> None:
    settings.SITE_URL = "https://models.example.com"

    response = client.get("/docs/quickstart")

    html = response.content.decode()
    assert response.status_code == 200
    assert "<pre><code>https://models.example.com/v1</code></pre>" in html
    assert 'client = OpenAI(base_url="https://models.example.com/v1", api_key="sk-mw-…")' in html
    assert 'job = client.fine_tuning.jobs.create(model="minilm-l6", training_file=file.id' in html
    assert '<a href="/docs">The API reference</a>' in html
    assert '<a href="/docs/guides/api#fine-tuning">Fine-tuning</a>' in html
    assert '<a href="/docs/quickstart" aria-current="page">Quickstart</a>' in html
    assert '<a class="docs-back" href="/">Back to the dashboard</a>' in html
    assert problems(response) == []


def test_a_guide_is_rendered_with_linkable_sections_and_links_between_guides(
    client: Client, db: None
) -> None:
    response = client.get("/docs/guides/deploying")

    html = response.content.decode()
    assert response.status_code == 200
    assert '<h1 id="deploying-modelworks">Deploying Modelworks</h1>' in html
    assert '<li><a href="#billing-with-stripe">Billing with Stripe</a></li>' in html
    assert '<a href="/docs/guides/architecture">architecture.md</a>' in html
    assert problems(response) == []


def test_only_the_guides_are_served(client: Client, db: None) -> None:
    for name in ("README", "nope", "..%2Fsaas%2Fsettings", "api.md"):
        assert client.get(f"/docs/guides/{name}").status_code == 404, name


def test_raw_html_in_a_guide_is_shown_as_text(
    client: Client, db: None, monkeypatch: Any, tmp_path: Any
) -> None:
    from apps.dashboard.views import docs

    (tmp_path / "api.md").write_text("# Title\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1))\n")
    monkeypatch.setattr(docs, "DOCS_DIR", tmp_path)

    html = client.get("/docs/guides/api").content.decode()

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="javascript' not in html
    assert inline_code(html) == []


def test_the_api_reference_links_back_to_the_dashboard_and_loads_only_our_files(
    client: Client, db: None
) -> None:
    response = client.get("/docs")

    html = response.content.decode()
    assert '<a class="docs-back" href="/">Back to the dashboard</a>' in html
    assert '<a href="/docs/quickstart">Quickstart</a>' in html
    # Redoc's footer logo is on Redocly's CDN: this script, before Redoc's, keeps it from loading
    assert html.index("/static/js/redoc-local.js") < html.index("redoc.standalone.js")
    assert "fonts.googleapis.com" not in html
    assert response["Content-Security-Policy"].startswith(STRICT.split("; style-src")[0])
