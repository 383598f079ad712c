"""`Idempotency-Key` on creating POSTs: a repeat gets the first response, never a second object."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.api.models import IdempotencyRecord
from apps.projects.models import File

CSV = b"text,label\nGood film,pos\nGreat film,pos\nBad film,neg\nAwful film,neg\n"


def upload(client: Any, key: str | None, data: bytes = CSV, purpose: str = "fine-tune") -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    body = {"file": SimpleUploadedFile("reviews.csv", data), "purpose": purpose}
    return client.post("/v1/files", body, format="multipart", **headers)


def test_the_same_key_twice_makes_one_file_and_replays_the_response(api: Any) -> None:
    # when
    first = upload(api, "upload-1")
    second = upload(api, "upload-1")

    # then
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert File.objects.count() == 1
    assert second["x-request-id"] != first["x-request-id"]


def test_without_a_key_every_post_creates_a_file(api: Any) -> None:
    upload(api, None)
    upload(api, None)

    assert File.objects.count() == 2


def test_the_same_key_with_a_different_body_is_refused(api: Any) -> None:
    upload(api, "upload-1")

    other_bytes = upload(api, "upload-1", data=CSV + b"Dull film,neg\n")
    other_purpose = upload(api, "upload-1", purpose="batch")

    for response in (other_bytes, other_purpose):
        assert response.status_code == 400
        assert response.json() == {
            "error": {
                "message": "This Idempotency-Key was already used with a different request body. "
                "Use a new key for a different request.",
                "type": "invalid_request_error",
                "param": "Idempotency-Key",
                "code": "idempotency_key_reused",
            }
        }
    assert File.objects.count() == 1


def test_a_refused_request_does_not_use_up_its_key(api: Any) -> None:
    # A request that fails validation stores nothing (as Stripe does): the caller fixes the
    # body and retries under the same key.
    refused = upload(api, "upload-1", purpose="assistants")
    assert refused.status_code == 400
    assert not IdempotencyRecord.objects.exists()

    fixed = upload(api, "upload-1")
    repeat = upload(api, "upload-1")

    assert fixed.status_code == 200
    assert repeat.json() == fixed.json()
    assert repeat["Idempotent-Replayed"] == "true"
    assert File.objects.count() == 1


def test_keys_are_scoped_per_project(
    api: Any, carol_api: Any, alice_project: Any, carol_project: Any
) -> None:
    alices = upload(api, "shared-key").json()

    carols = upload(carol_api, "shared-key")

    assert carols.status_code == 200
    assert "Idempotent-Replayed" not in carols
    assert carols.json()["id"] != alices["id"]
    assert File.objects.get(public_id=carols.json()["id"]).project == carol_project
    assert File.objects.get(public_id=alices["id"]).project == alice_project
    assert IdempotencyRecord.objects.filter(key="shared-key").count() == 2


def test_an_overlong_key_is_refused(api: Any) -> None:
    response = upload(api, "k" * 256)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert not File.objects.exists()


def test_concurrent_uploads_with_one_key_create_one_file(live_server: Any, alice_key: str) -> None:
    # given: five clients that start their uploads at the same moment
    barrier = threading.Barrier(5)
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            barrier.wait()
            response = client.post(
                "/v1/files",
                headers={"Authorization": f"Bearer {alice_key}", "Idempotency-Key": "race"},
                files={"file": ("reviews.csv", CSV, "text/csv")},
                data={"purpose": "fine-tune"},
            )
        with lock:
            responses.append(response)

    # when
    threads = [threading.Thread(target=send) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # then
    assert [response.status_code for response in responses] == [200] * 5, [r.text for r in responses]
    assert File.objects.count() == 1
    assert {response.json()["id"] for response in responses} == {File.objects.get().public_id}
    replayed = [response for response in responses if response.headers.get("Idempotent-Replayed") == "true"]
    assert len(replayed) == 4
