"""T25: structural guards. Every /v1/ view is built on the tenant-scoped base; every page and API
route refuses anonymous callers, except a short reviewed allowlist of public routes.

Routes come from the URL conf, so a new route is checked the day it is added.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.views import APIView

from apps.api.auth import ApiKeyAuthentication
from apps.api.base import ProjectAPIView
from tests.conftest import login
from tests.security.test_bola import Route, all_routes

ROUTES = all_routes()
API_ROUTES = [r for r in ROUTES if r.pattern.startswith("v1/")]
PAGE_ROUTES = [r for r in ROUTES if not r.pattern.startswith("v1/")]

# Reviewed: /v1/ views that are not tenant-scoped, and why.
API_ALLOWLIST = {
    "schema": "the OpenAPI document is public (SPECTACULAR_SETTINGS: AllowAny, no authentication)",
}
# Reviewed: pages an anonymous visitor may open, and why.
PUBLIC_PAGES = {
    "healthz": "load balancer health check; says ok or not, nothing else",
    "dashboard:home": "the landing page: what the product is, its plans and prices from the price book, how to start",
    "docs": "the public API reference",
    "docs_quickstart": "the quickstart beside the API reference: our own text, no data",
    "docs_guide": "the guides of docs/ beside the API reference: our own text, no data",
    "account_login": "log in",
    "account_signup": "sign up",
    "account_reset_password": "password reset, step 1",
    "account_reset_password_done": "password reset, 'check your email'",
    "account_reset_password_from_key": "password reset link (a bad key shows 'invalid link')",
    "account_reset_password_from_key_done": "password reset, done",
    "account_confirm_email": "email confirmation link",
    "account_email_verification_sent": "'check your email' after signup",
    "account_confirm_login_code": "login by code (off; allauth answers with a redirect or 404)",
    "account_inactive": "'this account is inactive'",
    "account_logout": "logging out anonymously is harmless",
    "account_reauthenticate": "allauth redirects to login",
    "dashboard:accept_invitation": "invitation landing: the token in the link is the credential",
    "billing:webhook": "Stripe webhook: authenticated by its signature, not a session",
    "admin:login": "the admin's own login page",
    "admin:logout": "logging out anonymously is harmless",
}
# Values the regex routes accept (allauth's reset links, the admin's app list).
PLACEHOLDERS = {"uidb36": "1", "key": "x-1", "app_label": "accounts"}


def url_for(route: Route) -> str:
    kwargs: dict[str, Any] = {}
    for param in route.params:
        is_int = f"<int:{param}>" in route.pattern
        kwargs[param] = 1 if is_int else PLACEHOLDERS.get(param, "x1")
    return reverse(route.name, kwargs=kwargs)


def test_the_route_lists_are_not_empty() -> None:
    assert len(API_ROUTES) >= 20
    assert any(r.name.startswith("dashboard:") for r in PAGE_ROUTES)
    assert any(r.name.startswith("admin:") for r in PAGE_ROUTES)


@pytest.mark.parametrize("route", API_ROUTES, ids=str)
def test_every_api_view_is_tenant_scoped(route: Route) -> None:
    view = getattr(route.callback, "view_class", None) or getattr(route.callback, "cls", None)
    assert view is not None and issubclass(view, APIView), f"{route.name} is not a DRF view"
    if route.name in API_ALLOWLIST:
        return
    assert issubclass(view, ProjectAPIView), f"{route.name}: {view.__name__} must derive from ProjectAPIView"
    # No view may loosen the base's authentication or permissions.
    assert [type(a) for a in view().get_authenticators()] == [ApiKeyAuthentication], route.name
    permissions = [type(p) for p in view().get_permissions()]
    assert IsAuthenticated in permissions and AllowAny not in permissions, route.name


@pytest.mark.parametrize("route", [r for r in API_ROUTES if r.name not in API_ALLOWLIST], ids=str)
def test_every_api_route_refuses_anonymous_callers_with_a_401(route: Route, db: None, alice: Any) -> None:
    url = url_for(route)
    anonymous, with_session = Client(), login(Client(), alice)  # a session is no API credential
    for client in (anonymous, with_session):
        for method in route.methods():
            response = client.generic(method.upper(), url, "{}", content_type="application/json")
            assert response.status_code == 401, f"{method.upper()} {url}: {response.status_code}"
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
            assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_the_schema_is_the_only_public_api_route(client: Any) -> None:
    assert client.get("/v1/schema").status_code == 200
    assert {r.name for r in API_ROUTES} - {"schema"} == {
        r.name for r in API_ROUTES if r.name not in API_ALLOWLIST
    }


def _is_login_redirect(response: Any) -> bool:
    location = response.get("Location", "")
    return response.status_code == 302 and location.startswith(("/accounts/login/", "/admin/login/"))


@pytest.mark.parametrize("route", [r for r in PAGE_ROUTES if r.name not in PUBLIC_PAGES], ids=str)
def test_every_page_sends_anonymous_visitors_to_login(route: Route, db: None) -> None:
    url, client = url_for(route), Client()
    for method in ("get", "post"):
        response = getattr(client, method)(url)
        # 404/405 leak nothing; anything else must be the login page's redirect, never data.
        assert response.status_code in (404, 405) or _is_login_redirect(response), (
            f"{method.upper()} {url} answered {response.status_code} {response.get('Location', '')}"
        )


@pytest.mark.parametrize("route", [r for r in PAGE_ROUTES if r.name in PUBLIC_PAGES], ids=str)
def test_public_pages_do_not_fail(route: Route, db: None) -> None:
    response = Client().get(url_for(route))
    # healthz answers 503 while a dependency is down (no worker runs here): a verdict, not a crash.
    assert response.status_code < 500 or (route.name == "healthz" and response.status_code == 503)


def test_the_allowlists_name_only_real_routes_or_planned_ones() -> None:
    names = {r.name for r in ROUTES}
    planned = {"billing:webhook"}  # the Stripe webhook, being added under /billing/
    assert set(PUBLIC_PAGES) - names <= planned
    assert set(API_ALLOWLIST) <= names


# --- Model loading, statically (T34 d) -------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {"var", "test-artifacts", "node_modules", "build", "dist", "static"}
TEXT_SUFFIXES = {".py", ".toml", ".cfg", ".ini", ".txt", ".yml", ".yaml", ".md", ".sh", ".json", ".html"}


def source_files(suffixes: set[str], names: tuple[str, ...] = ()) -> list[Path]:
    """The repository's own files (no virtualenv, caches, data or vendored static files)."""
    found = []
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [
            d
            for d in subdirectories
            if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        ]
        found += [Path(directory, f) for f in files if Path(f).suffix in suffixes or f in names]
    return found


def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def test_every_torch_load_is_weights_only_and_no_remote_code_is_trusted() -> None:
    python = source_files({".py"})
    assert any(p.name == "training.py" for p in python), "the scan missed the worker runtime"
    problems = []
    for path in python:
        tree = ast.parse(path.read_text(), filename=str(path))
        name = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call | ast.Dict):
                continue
            where = f"{name}:{node.lineno}"
            if isinstance(node, ast.Call):
                func = node.func
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "load"
                    and ast.unparse(func.value) == "torch"
                ):
                    weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                    if not (
                        weights_only
                        and isinstance(weights_only[0], ast.Constant)
                        and weights_only[0].value is True
                    ):
                        problems.append(f"{where}: torch.load without weights_only=True")
                for keyword in node.keywords:
                    if keyword.arg == "trust_remote_code" and not _is_false(keyword.value):
                        problems.append(f"{where}: trust_remote_code is not a literal False")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "trust_remote_code"
                        and not _is_false(value)
                    ):
                        problems.append(f"{where}: trust_remote_code is not a literal False")
    enabled = re.compile(r"""trust_remote_code["']?\s*[:=]\s*True""")
    for path in source_files(TEXT_SUFFIXES, ("Makefile", "Dockerfile")):
        text = path.read_text(errors="replace")
        problems += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in enabled.finditer(text)]
    assert problems == []
