"""The documentation beside the API reference (`/docs`, Redoc): a quickstart, and the project's own
guides from `docs/` rendered as pages. Public, like the reference; nothing here reads the database."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import slugify
from django.views.decorators.http import require_GET
from markdown_it import MarkdownIt

from apps.dashboard.snippets import api_base_url

DOCS_DIR = Path(settings.BASE_DIR) / "docs"
# The guides served at /docs/guides/<name>, each a file of docs/: this list, not the URL, decides
# which files can be read.
GUIDES = ("api", "deploying", "architecture", "reliability")
# The sections of the API guide the quickstart points to, by heading.
API_TOPICS = [
    "Errors and input",
    "Files",
    "Fine-tuning",
    "Serving",
    "Batches",
    "Limits and billing",
    "What each role and key may do",
]


def _guide_href(target: str) -> str:
    """`deploying.md#billing` (a link between guides) → the guide's page; other links unchanged."""
    path, _, fragment = target.partition("#")
    name = path.removesuffix(".md")
    if "/" in path or not path.endswith(".md") or name not in GUIDES:
        return target
    return reverse("docs_guide", args=[name]) + (f"#{fragment}" if fragment else "")


@dataclass(frozen=True)
class Guide:
    title: str  # the first heading
    html: SafeString
    sections: list[tuple[str, str]]  # (id, title) of each second-level heading


@lru_cache(maxsize=len(GUIDES))
def _render(name: str, modified: float) -> Guide:
    """Raw HTML in the Markdown is not passed through; headings get ids (`slugify` of their text)
    so that sections can be linked to, as the billing page links to "Billing with Stripe"."""
    markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = markdown.parse((DOCS_DIR / f"{name}.md").read_text())
    title, sections = name, []
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            text = tokens[index + 1].content
            token.attrSet("id", slugify(text))
            if token.tag == "h1" and title == name:
                title = text
            if token.tag == "h2":
                sections.append((slugify(text), text))
        for child in token.children or []:
            if child.type == "link_open":
                child.attrSet("href", _guide_href(str(child.attrGet("href") or "")))
    html = markdown.renderer.render(tokens, markdown.options, {})
    return Guide(title, mark_safe(html), sections)  # noqa: S308 - our own docs, raw HTML turned off


def load_guide(name: str) -> Guide:
    return _render(name, (DOCS_DIR / f"{name}.md").stat().st_mtime)


@require_GET
def quickstart(request: HttpRequest) -> HttpResponse:
    titles = {title: anchor for anchor, title in load_guide("api").sections}
    topics = [(title, titles[title]) for title in API_TOPICS if title in titles]
    context: dict[str, Any] = {"page": "quickstart", "base_url": api_base_url(), "topics": topics}
    return render(request, "docs/quickstart.html", context)


@require_GET
def guide(request: HttpRequest, name: str) -> HttpResponse:
    if name not in GUIDES:
        raise Http404("No such guide")
    context = {"page": name, "guide": load_guide(name)}
    return render(request, "docs/guide.html", context)
