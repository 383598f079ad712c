"""The Sites framework's one site, named and addressed from settings (SITE_NAME, SITE_URL).

allauth names the site in every email it sends ("[Modelworks] Please confirm…", "Hello from
Modelworks!"); without a site row it would use the host of the request instead. The row is written
after every `migrate` (and after the test database's flushes, which send the same signal), so a
changed SITE_URL takes effect at the next start of `make run`, which migrates first."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.contrib.sites.models import Site


def site_domain() -> str:
    """`app.example.com` (with a port if SITE_URL has one) from `https://app.example.com`."""
    return urlparse(settings.SITE_URL).netloc or settings.SITE_URL


def sync_site(using: str = "default", **kwargs: Any) -> None:
    Site.objects.using(using).update_or_create(
        pk=settings.SITE_ID, defaults={"domain": site_domain()[:100], "name": settings.SITE_NAME[:50]}
    )
