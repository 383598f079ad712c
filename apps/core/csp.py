"""A strict Content-Security-Policy on every HTML response.

Scripts, styles, fonts and connections come from our own origin only, and nothing inline runs:
no `<script>` with code, no `on…=` handler, no `style=` attribute. Markup that slips into a page
can then neither run code nor restyle it. Data for scripts travels in `data-*` attributes or in
`json_script` blocks, which the browser never executes.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"
Policy = dict[str, tuple[str, ...]]

POLICY: Policy = {
    "default-src": ("'self'",),
    "script-src": ("'self'",),
    "style-src": ("'self'",),
    "img-src": ("'self'", "data:"),  # data: for the empty favicon that stops /favicon.ico 404s
    "connect-src": ("'self'",),
    "font-src": ("'self'",),
    "object-src": ("'none'",),
    "base-uri": ("'self'",),
    "form-action": ("'self'",),
    "frame-ancestors": ("'none'",),
}

# The billing page's forms post to us and we answer 303 to Stripe's hosted Checkout or Customer
# Portal; browsers hold that redirect to form-action as well.
STRIPE_FORMS: Policy = {"form-action": ("https://checkout.stripe.com", "https://billing.stripe.com")}

# Pages that need more than POLICY, by view name or URL namespace, and why.
WIDER: dict[str, Policy] = {
    "dashboard:billing": STRIPE_FORMS,
    "billing": STRIPE_FORMS,  # its views show the billing page again when Stripe refuses
    # Redoc, the API reference, styles itself with styled-components, which inserts <style>
    # elements, and builds its search index in a worker made from a blob: URL. The page holds
    # no user content, and scripts still come from our origin only. Redoc's footer logo, on
    # cdn.redoc.ly, stays blocked: the reference uses our own files only (it hides itself).
    "docs": {"style-src": ("'unsafe-inline'",), "worker-src": ("'self'", "blob:")},
}


def header_value(policy: Policy) -> str:
    return "; ".join(" ".join((directive, *sources)) for directive, sources in policy.items())


def policy_for(request: HttpRequest) -> Policy:
    """POLICY, with the sources the request's page adds (see WIDER)."""
    match = request.resolver_match
    extra: Policy = {}
    if match is not None:
        extra = WIDER.get(match.view_name) or WIDER.get(match.namespace) or {}
    policy = dict(POLICY)
    for directive, sources in extra.items():
        policy[directive] = policy.get(directive, ()) + sources
    return policy


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # A response that brings its own policy keeps it; only pages need one.
        if HEADER in response or not response.get("Content-Type", "").startswith("text/html"):
            return response
        if settings.DEBUG and response.status_code in (404, 500):
            return response  # Django's debug pages carry their own inline CSS and JavaScript
        response[HEADER] = header_value(policy_for(request))
        return response
