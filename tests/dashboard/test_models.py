from __future__ import annotations

import html
from typing import Any

import pytest

from apps.dashboard.views.models import playground_url
from apps.jobs.models import Job, JobKind, JobStatus
from apps.registry.models import Model
from tests.conftest import login
from tests.dashboard.test_fine_tuning import METRICS


def make_model(project: Any, suffix: str = "sentiment", **fields: Any) -> Model:
    """A fine-tuned classifier as a succeeded job leaves it, with the job that made it."""
    base = Model.objects.get(name="minilm-l6")
    org = project.organization
    job = Job.objects.create(
        kind=JobKind.FINE_TUNE,
        organization=org,
        project=project,
        model=base,
        model_name=base.name,
        status=JobStatus.SUCCEEDED,
    )
    values: dict[str, Any] = {
        "task": "classification",
        "labels": ["negative", "positive"],
        "metrics": METRICS,
        "limits": {"servable": True},
        "artifact_key": f"models/{org.public_id}/{job.public_id}",
        **fields,
    }
    model = Model.objects.create(
        name=f"ft:minilm-l6:{org.name.lower()}:{suffix}:{job.public_id}",
        organization=org,
        project=project,
        base=base,
        **values,
    )
    Job.objects.filter(pk=job.pk).update(fine_tuned_model=model)
    return model


@pytest.fixture
def alice_model(alice_project: Any) -> Model:
    return make_model(alice_project)


def url(project: Any, model: Model | str = "", action: str = "") -> str:
    name = model.name if isinstance(model, Model) else model
    return f"/projects/{project.public_id}/models/" + (f"{name}/{action}" if name else "")


def test_the_models_page_lists_own_fine_tuned_models_and_the_catalog(
    alice_client: Any,
    alice_project: Any,
    alice_model: Model,
    carol_project: Any,
    django_assert_max_num_queries: Any,
) -> None:
    carols = make_model(carol_project, "secret")
    make_model(alice_project, "second")

    with django_assert_max_num_queries(10):
        page = alice_client.get(url(alice_project)).content.decode()

    fine_tuned = page.split('id="fine-tuned-models"')[1].split("</table>")[0]
    assert f'href="{url(alice_project, alice_model)}"' in fine_tuned
    assert "<td>minilm-l6</td>" in fine_tuned  # the base
    assert "<td>2</td>" in fine_tuned and "<td>0.813</td>" in fine_tuned  # labels, accuracy
    catalog = page.split('id="catalog-models"')[1].split("</table>")[0]
    for model in Model.objects.catalog():
        assert model.name in catalog and html.escape(model.description) in catalog
    assert carols.name not in page


def test_the_model_page_shows_metrics_labels_job_and_a_classification_snippet(
    alice_client: Any, alice_project: Any, alice_model: Model
) -> None:
    page = alice_client.get(url(alice_project, alice_model)).content.decode()

    job = Job.objects.get(fine_tuned_model=alice_model)
    assert f'href="/projects/{alice_project.public_id}/fine-tuning/{job.public_id}/"' in page
    assert '<span class="badge">negative</span> <span class="badge">positive</span>' in page
    assert '<a href="/projects/' in page and ">minilm-l6</a>" in page  # the base model
    assert '<tr><th>negative</th><td class="hit">7</td><td class="miss">1</td></tr>' in page
    assert "<tr><td>positive</td><td>0.857</td><td>0.750</td><td>0.800</td><td>8</td></tr>" in page
    snippet = page.split('id="api-snippet"')[1].split("</pre>")[0]
    assert 'OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=os.environ["MODELWORKS_API_KEY"])' in snippet
    assert 'client.post(\n    "/classifications",' in snippet
    assert f'body={{"model": "{alice_model.name}", "input": [' in snippet
    assert "cast_to=object," in snippet
    assert "Delete model" in page


def test_a_generation_model_gets_a_chat_snippet(alice_client: Any, alice_project: Any) -> None:
    model = make_model(alice_project, "chat", task="generation", labels=[], metrics={"valid_loss": 1.92})

    page = alice_client.get(url(alice_project, model)).content.decode()

    snippet = page.split('id="api-snippet"')[1].split("</pre>")[0]
    assert f'client.chat.completions.create(\n    model="{model.name}",' in snippet
    assert "/classifications" not in snippet
    assert '<div class="muted">Validation loss</div><div class="stat">1.9200</div>' in page


def test_a_base_model_page_has_no_delete_and_points_to_fine_tuning(
    alice_client: Any, alice_project: Any
) -> None:
    page = alice_client.get(url(alice_project, "minilm-l6")).content.decode()
    assert "Delete model" not in page
    assert "fine-tune it</a>" in page
    page = alice_client.get(url(alice_project, "openai:gpt-4o-mini")).content.decode()
    assert 'model="openai:gpt-4o-mini"' in page


def test_delete_removes_a_fine_tuned_model(alice_client: Any, alice_project: Any, alice_model: Model) -> None:
    response = alice_client.post(url(alice_project, alice_model, "delete"), follow=True)

    assert response.redirect_chain[-1][0] == url(alice_project)
    assert not Model.objects.filter(pk=alice_model.pk).exists()
    assert Job.objects.get().fine_tuned_model is None  # the job stays, without its model
    assert f"Model “{alice_model.name}” deleted." in response.content.decode()


def test_a_catalog_model_cannot_be_deleted(alice_client: Any, alice_project: Any) -> None:
    page = alice_client.post(url(alice_project, "minilm-l6", "delete"), follow=True).content.decode()
    assert "only fine-tuned models can be deleted" in page
    assert Model.objects.filter(name="minilm-l6").exists()


def test_delete_needs_a_post(alice_client: Any, alice_project: Any, alice_model: Model) -> None:
    assert alice_client.get(url(alice_project, alice_model, "delete")).status_code == 405
    assert Model.objects.filter(pk=alice_model.pk).exists()


def test_outsiders_get_404_for_the_models_pages_and_delete(
    carol_client: Any, alice_project: Any, alice_model: Model, carol_project: Any
) -> None:
    assert carol_client.get(url(alice_project)).status_code == 404
    assert carol_client.get(url(alice_project, alice_model)).status_code == 404
    assert carol_client.post(url(alice_project, alice_model, "delete")).status_code == 404
    # Through her own project, alice's model does not exist either.
    assert carol_client.get(url(carol_project, alice_model)).status_code == 404
    assert carol_client.post(url(carol_project, alice_model, "delete")).status_code == 404
    assert Model.objects.filter(pk=alice_model.pk).exists()
    assert alice_model.name not in carol_client.get(url(carol_project)).content.decode()


def test_a_teammate_can_view_models(client: Any, bob: Any, alice_project: Any, alice_model: Model) -> None:
    login(client, bob)
    assert alice_model.name in client.get(url(alice_project)).content.decode()
    assert client.get(url(alice_project, alice_model)).status_code == 200


def test_weights_missing_from_storage_are_a_clear_error_not_a_500(
    alice_client: Any, api: Any, alice_project: Any, alice_model: Model
) -> None:
    # alice_model's artifact key names nothing in storage
    message = f"The weights of '{alice_model.name}' are missing from storage. Contact us with the model id."

    page = alice_client.get(url(alice_project, alice_model, "download"), follow=True)
    response = api.get(f"/v1/models/{alice_model.name}/content")

    assert page.status_code == 200 and message in html.unescape(page.content.decode())
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": "model",
        "code": "weights_not_found",
    }


def test_an_embedding_model_page_shows_an_embeddings_snippet(alice_client: Any, alice_project: Any) -> None:
    for name in ("minilm-l6", "openai:text-embedding-3-small"):
        page = alice_client.get(url(alice_project, name)).content.decode()

        snippet = page.split('id="api-snippet"')[1].split("</div>\n{% endblock")[0]
        assert f'client.embeddings.create(\n    model="{name}",' in snippet, name
        assert "/embeddings \\" in snippet and "chat.completions" not in snippet
        # the playground chats and classifies: no link there for a model that only embeds
        assert playground_url(alice_project, Model.objects.get(name=name)) is None
    page = alice_client.get(url(alice_project, "minilm-l6")).content.decode()
    assert "It embeds texts as it is; for a classifier" in page
