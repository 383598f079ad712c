"""The playground: which models it offers, chat streamed as server-sent events, classification bars,
and outsiders."""

from __future__ import annotations

import html
import json
from typing import Any

import pytest

from apps.jobs.models import Job
from apps.registry.models import Model

DONE = "data: [DONE]\n\n"


def url(project: Any, action: str = "") -> str:
    return f"/projects/{project.public_id}/playground/{action}"


def chat(client: Any, project: Any, **body: Any) -> Any:
    return client.post(url(project, "chat"), json.dumps(body), content_type="application/json")


def events(response: Any) -> list[dict[str, Any]]:
    raw = b"".join(response.streaming_content).decode()
    assert raw.endswith(DONE), raw[-300:]
    return [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]


def alice_classifier(alice_org: Any) -> Model:
    """alice's classifier as a row only, for tests that never reach a worker."""
    return Model.objects.create(
        name="ft:tiny-bert:acme:tickets:ftjob-1",
        organization=alice_org,
        task="classification",
        labels=["billing", "bug", "praise"],
        limits={"servable": True},
    )


def hello(model: str = "tiny-gpt2", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def test_the_page_offers_only_servable_models_the_organization_may_use(
    alice_client: Any, alice_org: Any, alice_project: Any, carol: Any
) -> None:
    # given
    carol_org = carol.memberships.get().organization
    Model.objects.create(
        name="ft:tiny-gpt2:acme:chat:ftjob-2",
        organization=alice_org,
        task="generation",
        limits={"servable": True},
    )
    Model.objects.create(
        name="ft:tiny-bert:acme:tickets:ftjob-3",
        organization=alice_org,
        task="classification",
        labels=["a", "b"],
        limits={"servable": True},
    )
    Model.objects.create(
        name="ft:tiny-gpt2:outsiders:secret:ftjob-4",
        organization=carol_org,
        task="generation",
        limits={"servable": True},
    )
    Model.objects.create(
        name="ft:tiny-bert:outsiders:secret:ftjob-5",
        organization=carol_org,
        task="classification",
        limits={"servable": True},
    )
    # when
    response = alice_client.get(url(alice_project))
    # then
    assert response.status_code == 200
    page = response.content.decode()
    assert 'value="ft:tiny-gpt2:acme:chat:ftjob-2"' in page
    assert 'value="ft:tiny-bert:acme:tickets:ftjob-3"' in page
    assert 'value="smollm2-135m-instruct"' in page  # the catalog's servable chat model
    assert "minilm-l6" not in page  # a base for fine-tuning: cannot be called
    assert "outsiders" not in page
    chat_models = [c["name"] for c in response.context["chat_models"]]
    classifiers = [c["name"] for c in response.context["classifiers"]]
    assert "ft:tiny-bert:acme:tickets:ftjob-3" not in chat_models
    assert classifiers == ["ft:tiny-bert:acme:tickets:ftjob-3"]


@pytest.mark.integration
def test_chat_streams_chunks_that_join_into_the_answer(
    alice_client: Any, alice_project: Any, celery_worker: Any, tiny_chat: Any
) -> None:
    response = chat(alice_client, alice_project, **hello(max_tokens=8, temperature=0, seed=1))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    chunks = events(response)
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny-gpt2" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    job = Job.objects.get()
    assert job.kind == "generation" and job.status == "succeeded"
    assert job.created_by is not None and job.created_by.email == "alice@example.com"
    assert job.api_key is None  # made with the session, as the API makes it with a key
    result = job.result or {}
    assert text == result["choices"][0]["text"]
    assert text  # the tiny model always says something
    # the API's own stream (one path for both): a chunk with the finish reason, then the usage chunk
    # OpenAI sends when stream_options.include_usage is set
    finished = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finished] in (["stop"], ["length"])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == result["usage"]["completion_tokens"]


def test_a_bad_parameter_gets_a_400_with_the_message(alice_client: Any, alice_project: Any) -> None:
    Model.objects.create(name="tiny-gpt2", task="generation", limits={"servable": True})
    response = chat(alice_client, alice_project, **hello(temperature=9))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "temperature must be a number between 0 and 2."
    assert response.json()["error"]["param"] == "temperature"
    assert not Job.objects.exists()


def test_a_body_that_is_not_json_gets_a_400(alice_client: Any, alice_project: Any) -> None:
    response = alice_client.post(url(alice_project, "chat"), "{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The request body must be JSON."


@pytest.mark.parametrize(
    "body",
    ['{"model": "tiny-gpt2", "max_tokens": 1' + "0" * 5000 + "}", "[" * 100_000, b'{"model": "\xff"}'],
    ids=["integer-too-long", "nested-too-deep", "not-utf-8"],
)
def test_a_body_the_json_parser_cannot_read_gets_a_400_not_a_500(
    alice_client: Any, alice_project: Any, body: str | bytes
) -> None:
    response = alice_client.post(url(alice_project, "chat"), body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The request body must be JSON."
    assert not Job.objects.exists()


def test_a_model_that_does_not_answer_in_time_ends_the_stream_with_an_error(
    alice_client: Any, alice_project: Any, settings: Any
) -> None:
    settings.INFERENCE_TIMEOUT_SECONDS = 1  # no worker is running
    Model.objects.create(name="tiny-gpt2", task="generation", limits={"servable": True})
    chunks = events(chat(alice_client, alice_project, **hello()))
    assert chunks[-1]["error"]["message"] == (
        "The model did not answer within 1 seconds. The request was cancelled; retry later."
    )
    assert Job.objects.get().status == "cancelled"


@pytest.mark.integration
def test_classify_shows_a_bar_per_label_for_each_line(
    alice_client: Any, alice_project: Any, celery_worker: Any, tiny_classifier: Any
) -> None:
    response = alice_client.post(
        url(alice_project, "classify"),
        {"model": tiny_classifier.name, "input": "refund please\n\ncrash on start\n"},
    )
    assert response.status_code == 200, response.content
    page = response.content.decode()
    assert page.count('class="bar"') == 6  # two texts (the blank line is skipped) × three labels
    assert "refund please" in page and "crash on start" in page
    for label in ("billing", "bug", "praise"):
        assert page.count(f">{label}</th>") == 2
    results = response.context["results"]
    for result in results:
        scores = [item["score"] for item in result["labels"]]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1, abs=1e-3)
        assert all(f'value="{item["score"]}"' in page for item in result["labels"])


def test_classify_needs_some_text(alice_client: Any, alice_project: Any) -> None:
    response = alice_client.post(url(alice_project, "classify"), {"model": "x", "input": "  \n "})
    assert response.status_code == 400
    assert "Enter at least one text, one per line." in response.content.decode()


def test_outsiders_get_404_for_every_playground_page_and_action(
    carol_client: Any, alice_org: Any, alice_project: Any
) -> None:
    classifier = alice_classifier(alice_org)
    assert carol_client.get(url(alice_project)).status_code == 404
    assert chat(carol_client, alice_project, **hello()).status_code == 404
    response = carol_client.post(url(alice_project, "classify"), {"model": classifier.name, "input": "hi"})
    assert response.status_code == 404
    assert not Job.objects.exists()


def test_outsiders_cannot_pick_another_organizations_model_by_name(
    carol_client: Any, carol_project: Any, alice_org: Any
) -> None:
    classifier = alice_classifier(alice_org)
    Model.objects.create(
        name="ft:tiny-gpt2:acme:chat:ftjob-2",
        organization=alice_org,
        task="generation",
        limits={"servable": True},
    )
    page = carol_client.get(url(carol_project)).content.decode()
    assert "acme" not in page
    response = chat(carol_client, carol_project, **hello("ft:tiny-gpt2:acme:chat:ftjob-2"))
    assert response.json()["error"]["message"] == (
        "The model 'ft:tiny-gpt2:acme:chat:ftjob-2' does not exist or you do not have access to it."
    )
    assert response.json()["error"]["code"] == "model_not_found"
    response = carol_client.post(url(carol_project, "classify"), {"model": classifier.name, "input": "hi"})
    assert response.status_code == 404
    assert (
        html.escape(f"The model '{classifier.name}' does not exist or you do not have access to it.")
        in response.content.decode()
    )
    assert not Job.objects.exists()
