"""What the dashboard's code snippets are filled in with."""

from __future__ import annotations

from django.conf import settings


def api_base_url() -> str:
    """The API's base URL as customers' code must write it: the site's own address, not the host
    a page happened to be fetched from (a proxy, a port forward)."""
    return f"{settings.SITE_URL}/v1"
