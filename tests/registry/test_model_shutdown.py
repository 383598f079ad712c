"""A catalog model's shutdown date (docs/api.md, "Models"): listed with the date until then, refused
with a message naming the date from then on, in the API and on the dashboard."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.registry.models import Model
from tests.api.test_fine_tuning import make_file

SHUT_DOWN = (
    "The model 'smollm2-135m-instruct' was shut down on {day} and no longer answers or takes fine-tunes; "
    "choose another model from GET /v1/models."
)


def shut_down_in(days: int) -> date:
    day = timezone.now().date() + timedelta(days=days)
    Model.objects.filter(name="smollm2-135m-instruct").update(shutdown_date=day)
    return day


def listed(api: Any) -> dict[str, Any]:
    return {m["id"]: m for m in api.get("/v1/models").json()["data"]}


def chat(api: Any) -> Any:
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]}
    return api.post("/v1/chat/completions", body, format="json")


def test_every_model_lists_its_shutdown_date_and_null_when_none_is_planned(api: Any, catalog: None) -> None:
    day = shut_down_in(30)

    models = listed(api)

    midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    assert models["smollm2-135m-instruct"]["shutdown_date"] == midnight
    assert api.get("/v1/models/smollm2-135m-instruct").json()["shutdown_date"] == midnight
    assert {m["shutdown_date"] for name, m in models.items() if name != "smollm2-135m-instruct"} == {None}


def test_a_model_past_its_shutdown_date_is_refused_for_calls_and_fine_tunes_naming_the_date(
    api: Any, catalog: None, alice_project: Any
) -> None:
    day = shut_down_in(0)  # today, UTC: shut down from midnight
    file = make_file(alice_project, fmt="chat_jsonl")

    call = chat(api)
    fine_tune = api.post(
        "/v1/fine_tuning/jobs",
        {"model": "smollm2-135m-instruct", "training_file": file.public_id},
        format="json",
    )

    for response in (call, fine_tune):
        assert response.status_code == 404
        assert response.json()["error"] == {
            "message": SHUT_DOWN.format(day=day.isoformat()),
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }


def test_a_deprecated_model_still_works_until_its_date(api: Any, catalog: None, alice_project: Any) -> None:
    shut_down_in(1)
    file = make_file(alice_project, fmt="chat_jsonl")

    response = api.post(
        "/v1/fine_tuning/jobs",
        {"model": "smollm2-135m-instruct", "training_file": file.public_id},
        format="json",
    )

    assert response.status_code == 200, response.content


@pytest.mark.parametrize(("days", "badge"), [(14, "Deprecated: shuts down on"), (-1, "Shut down on")])
def test_the_dashboard_shows_the_date_and_offers_a_shut_down_model_nowhere(
    alice_client: Any, alice_project: Any, catalog: None, days: int, badge: str
) -> None:
    day = shut_down_in(days)
    make_file(alice_project, fmt="chat_jsonl")  # the fine-tune form needs a file to offer
    base = f"/projects/{alice_project.public_id}"

    catalog_page = alice_client.get(f"{base}/models/").content.decode()
    model_page = alice_client.get(f"{base}/models/smollm2-135m-instruct/").content.decode()
    playground = alice_client.get(f"{base}/playground/").content.decode()
    form = alice_client.get(f"{base}/fine-tuning/new").content.decode()

    assert f"{badge} {day.isoformat()}</span>" in catalog_page
    assert f"{badge} {day.isoformat()}</span>" in model_page
    offered = days > 0  # until the date it is still offered, with its date shown
    assert ("?model=smollm2-135m-instruct" in catalog_page) == offered
    assert ('value="smollm2-135m-instruct"' in playground) == offered
    assert ('value="smollm2-135m-instruct"' in form) == offered
    assert ('id="try-in-playground"' in model_page) == offered
