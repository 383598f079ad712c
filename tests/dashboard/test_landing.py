"""The public page at `/`: what Modelworks is, what it costs (from the plans in the database) and
how to start. A signed-in visitor's `/` is still the dashboard."""

from __future__ import annotations

from typing import Any

from django.test import Client

from apps.billing.models import Plan, Price


def test_an_anonymous_visitor_gets_the_landing_page(client: Client, db: None) -> None:
    response = client.get("/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "<h1>Fine-tune, serve and pay for your own models</h1>" in page
    assert "call it through\n      an OpenAI-compatible API" in page
    assert '<a class="button" href="/accounts/signup/">Sign up free</a>' in page
    assert '<a class="button secondary" href="/accounts/login/">Log in</a>' in page
    assert '<a href="/docs">API reference</a>' in page
    assert 'href="mailto:support@modelworks.localhost"' in page


def test_the_landing_page_shows_each_plan_from_the_database(client: Client, db: None) -> None:
    # given: staff changed the Pro plan in admin; the page shows what the database says
    Plan.objects.filter(slug="pro").update(monthly_price=59_500_000, included_credit=25_000_000)

    page = client.get("/").content.decode()

    pro = page.split('id="plan-pro"')[1].split("</div>")[0]
    assert '<span class="stat">$59.50</span> a month' in pro
    assert "<li>$25.00 of usage included each month, then pay as you go</li>" in pro
    assert "<li>600 requests a minute, 2,000,000 tokens a minute</li>" in pro
    assert "<li>3 fine-tunes and 5 batches at a time</li>" in pro
    assert "<li>Uploads up to 100.0\xa0MB</li>" in pro
    assert "<li>OpenAI models, proxied, included</li>" in pro
    free = page.split('id="plan-free"')[1].split("</div>")[0]
    assert '<span class="stat">$0.00</span> a month' in free
    assert "<li>$5.00 of usage included each month; work stops when it is used up</li>" in free
    assert "<li>1 fine-tune and 1 batch at a time</li>" in free
    assert "<li>Our own models only (no proxied OpenAI models)</li>" in free
    assert "The Free plan costs nothing and includes $5.00 of usage a month. No card needed." in page
    order = [page.index(f'id="plan-{slug}"') for slug in ("free", "pro", "team")]
    assert order == sorted(order)


def test_the_landing_page_lists_usage_prices_from_the_price_book(client: Client, db: None) -> None:
    Price.objects.filter(model_name="minilm-l6", unit="trained_tokens").update(
        micro_dollars_per_million=2_500_000
    )

    page = client.get("/").content.decode()

    prices = page.split('id="prices"')[1].split("</table>")[0]
    assert '<tr><td class="mono">minilm-l6</td><td>trained tokens</td><td>$2.50</td></tr>' in prices
    assert '<tr><td class="mono">minilm-l6</td><td>classified texts</td><td>$1.00</td></tr>' in prices
    assert (
        '<tr><td class="mono">smollm2-135m-instruct</td><td>output tokens</td><td>$0.40</td></tr>' in prices
    )


def test_the_landing_page_has_the_sdk_snippet_with_the_site_url(
    client: Client, db: None, settings: Any
) -> None:
    settings.SITE_URL = "https://app.example.com"

    page = client.get("/").content.decode()

    snippet = page.split('id="landing-snippet">')[1].split("</code>")[0]
    assert snippet == (
        "from openai import OpenAI\n\n"
        'client = OpenAI(base_url="https://app.example.com/v1", api_key="sk-mw-…")\n'
        'client.chat.completions.create(model="smollm2-135m-instruct", '
        'messages=[{"role": "user", "content": "Hello!"}])'
    )
    assert 'data-copy="#landing-snippet" aria-label="Copy the Python code"' in page


def test_a_signed_in_visitor_still_gets_the_dashboard(alice_client: Client) -> None:
    response = alice_client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/projects/"
