"""`{% nav_link url label %}`: a link of the sidebar that says whether it is where the reader is.

The link to the page being shown carries `aria-current="page"`; with `section=True`, a link whose
URL starts the current path (Files, on a file's page) carries `aria-current="true"`: the reader is
inside that part of the navigation. Both are marked `active` for the eye."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


def current_value(path: str, url: str, section: bool) -> str | None:
    if path == url:
        return "page"
    if section and url.endswith("/") and path.startswith(url):
        return "true"
    return None


@register.simple_tag(takes_context=True)
def nav_link(context: dict[str, Any], url: str, label: str, section: bool = True) -> SafeString:
    request = context.get("request")
    current = current_value(request.path if request is not None else "", url, section)
    if current is None:
        return format_html('<a href="{}">{}</a>', url, label)
    return format_html('<a href="{}" class="active" aria-current="{}">{}</a>', url, current, label)
