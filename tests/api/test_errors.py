"""Every error under /v1/ is JSON in OpenAI's shape, and every response carries `x-request-id`.

The tests marked `urls` run against this module's urlpatterns: the real ones plus a few views
that exist only to fail in the ways a real endpoint can (a JSON body, an unhandled exception).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.api.base import ProjectAPIView
from apps.api.views.files import FileDetailView
from saas import urls as project_urls


class EchoView(ProjectAPIView):
    parser_classes = [JSONParser]

    def post(self, request: Request) -> Response:
        return Response({"received": request.data})


class FailingView(ProjectAPIView):
    def get(self, request: Request) -> Response:
        raise RuntimeError("a bug in a DRF view")


def failing_plain_view(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug outside DRF")


urlpatterns = [
    path("v1/test/echo", EchoView.as_view()),
    path("v1/test/fail", FailingView.as_view()),
    path("v1/test/fail-plain", failing_plain_view),
    *project_urls.urlpatterns,
]
handler400 = project_urls.handler400
handler403 = project_urls.handler403
handler404 = project_urls.handler404
handler500 = project_urls.handler500

REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The `error` object, after checking the status, the content type and the full shape."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    assert REQUEST_ID.match(response["x-request-id"])
    body = json.loads(response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_an_unknown_url_is_a_json_404(api: Any) -> None:
    for client in (api, Client()):
        error = error_of(client.get("/v1/nope"), 404)
        assert error == {
            "message": "Unknown request URL: GET /v1/nope.",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    assert error_of(api.post("/v1/files/x/content/more"), 404)["code"] == "unknown_url"


def test_a_wrong_method_is_a_json_405(api: Any) -> None:
    response = api.put("/v1/files", {}, format="json")

    error = error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert error["message"] == "Method PUT is not allowed on this URL."
    assert "GET" in response["Allow"] and "POST" in response["Allow"]
    assert error_of(api.patch("/v1/files/file-abc"), 405)["code"] == "method_not_allowed"


def test_an_unsupported_media_type_is_a_json_415(api: Any) -> None:
    error = error_of(api.post("/v1/files", {"purpose": "fine-tune"}, format="json"), 415)

    assert error["code"] == "unsupported_media_type"
    assert error["type"] == "invalid_request_error"
    assert "multipart/form-data" in error["message"]


@pytest.mark.urls(__name__)
def test_a_json_body_over_2_5_mb_is_a_json_413(api: Any) -> None:
    body = json.dumps({"input": "x" * 2_700_000})

    error = error_of(api.post("/v1/test/echo", body, content_type="application/json"), 413)

    assert error == {
        "message": "The request body is too large.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }


@pytest.mark.urls(__name__)
def test_a_json_body_under_the_limit_is_read(api: Any) -> None:
    response = api.post("/v1/test/echo", {"input": "x" * 2_000_000}, format="json")

    assert response.status_code == 200
    assert len(response.json()["received"]["input"]) == 2_000_000


@pytest.mark.urls(__name__)
def test_invalid_json_is_a_json_400(api: Any) -> None:
    error = error_of(api.post("/v1/test/echo", '{"input": ', content_type="application/json"), 400)

    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("We could not parse the JSON body of your request.")


@pytest.mark.urls(__name__)
def test_an_unhandled_exception_in_a_drf_view_is_a_json_500_logged_with_the_request_id(
    api: Any, caplog: Any
) -> None:
    with caplog.at_level(logging.INFO):
        response = api.get("/v1/test/fail")

    error = error_of(response, 500)
    assert error["type"] == "server_error"
    assert error["code"] == "server_error"
    assert "a bug" not in error["message"]  # internals never leak
    logged = [record for record in caplog.records if record.exc_info]
    assert logged and logged[0].exc_info[1].args == ("a bug in a DRF view",)
    assert logged[0].request_id == response["x-request-id"]


@pytest.mark.urls(__name__)
def test_an_unhandled_exception_outside_drf_is_a_json_500(db: None, settings: Any) -> None:
    settings.DEBUG = False
    client = Client(raise_request_exception=False)

    error = error_of(client.get("/v1/test/fail-plain"), 500)

    assert error["type"] == "server_error"
    assert "bug" not in error["message"]


def test_a_real_view_that_raises_is_a_json_500(api: Any, monkeypatch: Any) -> None:
    def broken(self: Any, request: Any, file_id: str) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(FileDetailView, "get", broken)

    assert error_of(api.get("/v1/files/file-abc"), 500)["type"] == "server_error"


def test_every_response_carries_a_request_id_that_is_also_logged(api: Any, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="modelworks.requests"):
        responses = [
            api.get("/v1/files"),
            api.get("/v1/files/file-missing"),
            Client().get("/v1/files"),
            api.get("/v1/nope"),
            Client().get("/accounts/login/"),
        ]

    assert [r.status_code for r in responses] == [200, 404, 401, 404, 200]
    ids = [response["x-request-id"] for response in responses]
    assert all(REQUEST_ID.match(request_id) for request_id in ids)
    assert len(set(ids)) == len(ids)
    logged = {
        record.request_id: record.getMessage()
        for record in caplog.records
        if record.name == "modelworks.requests"
    }
    assert logged[ids[1]].startswith("GET /v1/files/file-missing 404")
    assert set(ids) <= set(logged)


def test_processing_time_is_reported_on_api_responses(api: Any) -> None:
    assert int(api.get("/v1/files")["openai-processing-ms"]) >= 0


def test_the_schema_is_public_and_lists_the_files_paths(db: None) -> None:
    response = Client().get("/v1/schema?format=json")

    assert response.status_code == 200
    schema = json.loads(response.content)
    assert {"/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content"} <= set(schema["paths"])
    assert set(schema["paths"]["/v1/files"]) >= {"get", "post"}
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert "Base for every" not in response.content.decode()  # no internal docstrings as descriptions


def test_the_docs_use_only_our_own_static_files(db: None) -> None:
    client = Client()
    response = client.get("/docs")

    assert response.status_code == 200
    html = response.content.decode()
    assert "/v1/schema" in html
    assert not re.search(r"""(href|src)=["']?(https?:)?//""", html), html
    assert "cdn" not in html.lower()
    scripts = re.findall(r"""<script[^>]+src=["']([^"']+)""", html)
    assert scripts and all(src.startswith("/static/") for src in scripts)
    for src in scripts:
        asset = client.get(src)
        assert asset.status_code == 200, src


def test_a_database_outage_is_a_retryable_503(api: Any, monkeypatch: Any) -> None:
    from django.db.utils import OperationalError

    from apps.api.views import models

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("the database system is shutting down")

    monkeypatch.setattr(models.ModelListView, "get", unavailable)
    response = api.get("/v1/models")
    assert response.status_code == 503
    assert response["retry-after"] == "1"
    assert response.json()["error"]["code"] == "service_unavailable"
