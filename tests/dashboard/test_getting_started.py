"""A project's first steps: the getting-started checklist (each step ticked by what the project
holds), the one-click sample dataset, the links to the next step, counters that match the pages
they link to, and lists that show uploads and final models (results and checkpoints sit with
their job and model)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.jobs.models import Checkpoint, Job, JobKind, JobStatus
from apps.projects.actions import create_api_key
from apps.projects.models import File, FileStatus
from apps.projects.samples import SAMPLE_PATH
from apps.registry.actions import register_checkpoint_model
from tests.conftest import login
from tests.dashboard.test_batches import processed_file
from tests.dashboard.test_fine_tuning import make_file, make_job
from tests.dashboard.test_models import make_model
from workers.tasks import validate_file


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    return root


def project_page(client: Client, project: Any) -> str:
    response = client.get(f"/projects/{project.public_id}/")
    assert response.status_code == 200
    return str(response.content.decode())


def step(page: str, name: str) -> str:
    """One step of the checklist, as HTML."""
    return page.split(f'id="step-{name}"')[1].split("</li>")[0]


def is_done(page: str, name: str) -> bool:
    return bool(re.search(rf'<li class="step done" id="step-{name}"', page))


def inference(project: Any, kind: str = JobKind.CLASSIFICATION, **fields: Any) -> Job:
    return Job.objects.create(
        kind=kind,
        status=JobStatus.SUCCEEDED,
        project=project,
        organization=project.organization,
        model_name="minilm-l6",
        **fields,
    )


# --- The checklist ------------------------------------------------------------------------------------
def test_a_new_project_shows_the_checklist_with_nothing_done(
    alice_client: Client, alice_project: Any
) -> None:
    page = project_page(alice_client, alice_project)

    assert '<h2 id="checklist-title" class="card-title">Get started</h2>' in page
    assert '<span class="muted" id="checklist-count">0 of 4 done</span>' in page
    assert not any(is_done(page, name) for name in ("upload", "fine-tune", "try", "code"))
    upload = step(page, "upload")
    assert (
        "No data at hand? Start with our sample: 3 kinds of support tickets (billing, bug, feature_request), "
        'ready to fine-tune <span class="mono">minilm-l6</span> on.'
    ) in upload
    assert f'action="/projects/{alice_project.public_id}/getting-started/sample"' in upload
    assert '<button type="submit" id="use-sample">Use the sample dataset</button>' in upload
    assert "Once a file has passed validation, fine-tune a base model on it." in step(page, "fine-tune")
    assert (
        "Once a model is fine-tuned, the Python and curl that call it are here, filled in. You will need an "
        f'<a href="/projects/{alice_project.public_id}/api-keys/">API key</a>.'
    ) in step(page, "code")


def test_the_sample_dataset_is_uploaded_and_validated_like_any_upload(
    alice_client: Client, alice: Any, alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # when: alice takes the sample (its validation is queued once the upload is committed)
    with django_capture_on_commit_callbacks() as queued:
        response = alice_client.post(
            f"/projects/{alice_project.public_id}/getting-started/sample", follow=True
        )

    # then: an upload of hers, waiting for the validation task, which the page polls for
    file = File.objects.get(project=alice_project)
    assert response.redirect_chain == [(f"/projects/{alice_project.public_id}/files/{file.public_id}/", 302)]
    assert "Added the sample dataset “support_tickets.csv”. Validating it now." in response.content.decode()
    assert (file.filename, file.purpose, file.status, file.created_by) == (
        "support_tickets.csv",
        "fine-tune",
        FileStatus.UPLOADED,
        alice,
    )
    assert file.content.read() == SAMPLE_PATH.read_bytes()
    assert len(queued) == 1
    assert "support_tickets.csv</a> is being validated." in step(
        project_page(alice_client, alice_project), "upload"
    )

    # and the validation task passes it: 240 rows, three labels of 80
    validate_file(file.public_id)
    file.refresh_from_db()
    assert (file.status, file.format, file.validation["rows"]) == (
        FileStatus.PROCESSED,
        "classification_csv",
        240,
    )
    assert file.validation["errors"] == []
    assert file.validation["stats"]["labels"] == {"billing": 80, "bug": 80, "feature_request": 80}


def test_each_step_ticks_itself_from_the_projects_state(
    alice_client: Client, alice: Any, alice_project: Any
) -> None:
    pid = alice_project.public_id
    # 1. a processed upload
    file = make_file(alice_project, "tickets.csv")
    page = project_page(alice_client, alice_project)
    assert is_done(page, "upload") and "1 of 4 done" in page
    assert (
        f'<a href="/projects/{pid}/files/{file.public_id}/">tickets.csv</a> passed validation: 80 rows.'
        in page
    )
    fine_tune = step(page, "fine-tune")
    assert (
        f'<a class="button" id="fine-tune-this" href="/projects/{pid}/fine-tuning/new?'
        f'training_file={file.public_id}&amp;model=minilm-l6">Fine-tune with tickets.csv</a>'
    ) in fine_tune

    # 2. a fine-tune running, then one that succeeded
    running = make_job(alice_project, JobStatus.RUNNING, training_file=file)
    assert f"{running.public_id}</a> is running." in step(
        project_page(alice_client, alice_project), "fine-tune"
    )
    model = make_model(alice_project)
    page = project_page(alice_client, alice_project)
    assert is_done(page, "fine-tune") and "2 of 4 done" in page
    playground = f"/projects/{pid}/playground/?model={model.name.replace(':', '%3A')}#classify"
    assert f'<a class="button" id="try-in-playground" href="{playground}">Try in playground</a>' in page
    assert f'body={{"model": "{model.name}", "input": [' in html.unescape(step(page, "code"))

    # 3. a request in the playground (no key)
    inference(alice_project, created_by=alice)
    page = project_page(alice_client, alice_project)
    assert is_done(page, "try") and "3 of 4 done" in page

    # 4. a key, then a request made with it
    key, _ = create_api_key(alice_project, "ci", alice)
    page = project_page(alice_client, alice_project)
    assert not is_done(page, "code")
    assert '<span class="badge active">API key created</span> Now make a request with it' in page
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    page = project_page(alice_client, alice_project)

    # then: all done, the checklist goes
    assert 'id="checklist"' not in page


def test_a_request_with_a_key_ticks_the_code_step_and_one_without_ticks_only_the_try_step(
    alice_client: Client, alice: Any, alice_project: Any
) -> None:
    key, _ = create_api_key(alice_project, "ci", alice)
    inference(alice_project, api_key=key)

    page = project_page(alice_client, alice_project)

    assert is_done(page, "try") and is_done(page, "code")
    assert not is_done(page, "upload") and not is_done(page, "fine-tune")


def test_another_projects_state_ticks_nothing(alice_client: Client, alice: Any, alice_project: Any) -> None:
    from apps.projects.models import Project

    other = Project.objects.create(organization=alice_project.organization, name="Other")
    make_file(other)
    make_model(other)
    inference(other)

    page = project_page(alice_client, alice_project)

    assert "0 of 4 done" in page


def test_the_checklist_can_be_dismissed(alice_client: Client, alice_project: Any, bob: Any) -> None:
    response = alice_client.post(f"/projects/{alice_project.public_id}/getting-started/dismiss", follow=True)

    assert response.redirect_chain == [(f"/projects/{alice_project.public_id}/", 302)]
    page = response.content.decode()
    assert "Checklist hidden. The docs are under API reference in the sidebar." in page
    assert 'id="checklist"' not in page
    assert alice_client.get(f"/projects/{alice_project.public_id}/getting-started/dismiss").status_code == 405


def test_the_checklist_pages_are_404_for_outsiders(carol_client: Client, alice_project: Any) -> None:
    base = f"/projects/{alice_project.public_id}/getting-started"

    assert carol_client.post(f"{base}/sample").status_code == 404
    assert carol_client.post(f"{base}/dismiss").status_code == 404

    alice_project.refresh_from_db()
    assert alice_project.checklist_dismissed_at is None
    assert not File.objects.filter(project=alice_project).exists()


def test_a_new_organizations_projects_page_points_to_the_checklist(
    alice_client: Client, alice_project: Any
) -> None:
    page = alice_client.get("/projects/").content.decode()

    starter = page.split('id="starter"')[1].split("</div>")[0]
    assert f'<a href="/projects/{alice_project.public_id}/">Default project</a>' in starter
    assert "upload data (or use our sample), fine-tune, try the model, and call it from code." in starter

    alice_project.dismiss_checklist()
    assert 'id="starter"' not in alice_client.get("/projects/").content.decode()


# --- Counters that match the pages they link to --------------------------------------------------------
def rows(page: str, table_id: str) -> int:
    body = page.split(f'id="{table_id}"')[1].split("<tbody>")[1].split("</tbody>")[0]
    return body.count("<tr>") - body.count("colspan=")  # less the "nothing yet" row


def test_the_counters_count_what_their_pages_list(
    alice_client: Client, alice: Any, alice_project: Any
) -> None:
    # given: uploads, results files, fine-tunes, inference calls, batches, a model with a checkpoint
    pid = alice_project.public_id
    make_file(alice_project, "a.csv")
    make_file(alice_project, "b.jsonl", purpose="batch")
    make_file(alice_project, "ftjob_metrics.csv", purpose="fine-tune-results")
    make_file(alice_project, "batch_output.jsonl", purpose="batch_output")
    model = make_model(alice_project)
    job = Job.objects.get(fine_tuned_model=model)
    checkpoint = Checkpoint.objects.create(
        job=job,
        step=10,
        artifact_key="checkpoints/x",
        fine_tuned_model_checkpoint=f"{model.name}:ckpt-step-10",
    )
    register_checkpoint_model(job, checkpoint)
    make_job(alice_project, JobStatus.RUNNING)
    for _ in range(3):
        inference(alice_project)
    Job.objects.create(
        kind=JobKind.BATCH,
        status=JobStatus.SUCCEEDED,
        project=alice_project,
        organization=alice_project.organization,
        model_name="minilm-l6",
    )
    create_api_key(alice_project, "ci", alice)

    # when
    page = project_page(alice_client, alice_project)

    # then: each counter is the number of rows on the page it links to
    counters = dict(re.findall(r'id="count-([a-z-]+)">(\d+)</a>', page))
    assert counters == {"files": "2", "fine-tunes": "2", "models": "1", "batches": "1", "keys": "1"}
    files = alice_client.get(f"/projects/{pid}/files/").content.decode()
    assert files.count("<tr>\n    <td><a href=") == 2
    jobs = alice_client.get(f"/projects/{pid}/fine-tuning/").content.decode()
    assert rows(jobs, "jobs") == 2
    models = alice_client.get(f"/projects/{pid}/models/").content.decode()
    assert rows(models, "fine-tuned-models") == 1
    assert "Uploaded files" in page and "Fine-tuning jobs" in page and ">Jobs<" not in page


# --- Lists of uploads and final models; results and checkpoints with their job and model ----------------
def test_the_files_list_shows_uploads_and_says_where_results_files_are(
    alice_client: Client, alice_project: Any
) -> None:
    make_file(alice_project, "train.csv")
    make_file(alice_project, "ftjob-1_metrics.csv", purpose="fine-tune-results")
    make_file(alice_project, "batch_1_output.jsonl", purpose="batch_output")

    page = alice_client.get(f"/projects/{alice_project.public_id}/files/").content.decode()

    assert "train.csv" in page
    assert "ftjob-1_metrics.csv" not in page and "batch_1_output.jsonl" not in page
    assert (
        "Your uploads. Files a job writes are listed with the job: a fine-tune's results files on its page "
        f'under <a href="/projects/{alice_project.public_id}/fine-tuning/">Fine-tuning</a>, a batch\'s output '
        f'on its page under <a href="/projects/{alice_project.public_id}/batches/">Batches</a>.'
    ) in page


def test_the_models_list_shows_final_models_and_the_model_page_its_checkpoints_and_results(
    alice_client: Client, alice_project: Any
) -> None:
    # given: a fine-tune's final model, a kept checkpoint and a results file
    pid = alice_project.public_id
    model = make_model(alice_project)
    job = Job.objects.get(fine_tuned_model=model)
    checkpoint = Checkpoint.objects.create(
        job=job,
        step=40,
        epoch=2,
        metrics={"valid_loss": 0.321, "accuracy": 0.875},
        artifact_key="checkpoints/x",
        fine_tuned_model_checkpoint=f"{model.name}:ckpt-step-40",
    )
    kept = register_checkpoint_model(job, checkpoint)
    assert kept is not None
    results = make_file(
        alice_project, f"{job.public_id}_metrics.csv", purpose="fine-tune-results", bytes=2048
    )
    Job.objects.filter(pk=job.pk).update(result_files=[results.public_id])

    # when / then: the list has the final model only, and says where checkpoints are
    models = alice_client.get(f"/projects/{pid}/models/").content.decode()
    listed = models.split('id="fine-tuned-models"')[1].split("</table>")[0]
    assert model.name in listed and kept.name not in listed
    assert "The checkpoints a job kept along the way are listed on its model's page." in models

    # and the model page groups them
    page = alice_client.get(f"/projects/{pid}/models/{model.name}/").content.decode()
    outputs = page.split('id="job-outputs"')[1]
    assert (
        f'<td>40</td>\n      <td><a class="mono" href="/projects/{pid}/models/{kept.name}/">{kept.name}</a></td>\n'
        "      <td>0.3210</td>\n      <td>0.875</td>"
    ) in outputs
    assert (
        f'<li><a href="/projects/{pid}/files/{results.public_id}/content">{results.filename}</a> '
        '<span class="muted">2.0\xa0KB</span></li>'
    ) in outputs

    # and the checkpoint's page says whose it is
    checkpoint_page = alice_client.get(f"/projects/{pid}/models/{kept.name}/").content.decode()
    assert (
        f'Step 40 (epoch 2) of <a class="mono" href="/projects/{pid}/fine-tuning/{job.public_id}/">{job.public_id}</a>, '
        f'whose final model is <a class="mono" href="/projects/{pid}/models/{model.name}/">{model.name}</a>'
    ) in checkpoint_page


# --- Links to the next step ------------------------------------------------------------------------------
CSV = b"text,label\nrefund please,billing\nthe app crashes,bug\nlove it,praise\nso slow,bug\n"
CHAT = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}\n'


def stored(project: Any, filename: str, data: bytes, **fields: Any) -> File:
    """A stored fine-tune upload with its validation report, then `fields` changed."""
    file = processed_file(project, filename, data)
    File.objects.filter(pk=file.pk).update(**fields)
    file.refresh_from_db()
    return file


def test_a_processed_fine_tune_file_links_to_the_form_with_it_chosen(
    alice_client: Client, alice_project: Any
) -> None:
    pid = alice_project.public_id
    file = stored(alice_project, "tickets.csv", CSV)

    page = alice_client.get(f"/projects/{pid}/files/{file.public_id}/").content.decode()

    url = f"/projects/{pid}/fine-tuning/new?training_file={file.public_id}&amp;model=minilm-l6"
    assert f'<a class="button" id="fine-tune-with-file" href="{url}">Fine-tune with this file</a>' in page
    form = alice_client.get(html.unescape(url)).content.decode()
    assert f'<option value="{file.public_id}" selected>' in form
    assert '<option value="minilm-l6" selected>' in form


@pytest.mark.parametrize(
    ("data", "fields", "linked"),
    [
        (CHAT, {}, "model=smollm2-135m-instruct"),
        (CSV, {"status": "uploaded"}, None),
        (CSV, {"status": "error"}, None),
        (CSV, {"purpose": "batch"}, None),
    ],
)
def test_only_a_file_that_can_be_trained_on_links_to_the_form(
    alice_client: Client, alice_project: Any, data: bytes, fields: dict[str, str], linked: str | None
) -> None:
    file = stored(alice_project, "data.jsonl", data, **fields)

    page = alice_client.get(f"/projects/{alice_project.public_id}/files/{file.public_id}/").content.decode()

    if linked is None:
        assert "Fine-tune with this file" not in page
    else:
        assert f"training_file={file.public_id}&amp;{linked}" in page


def test_the_model_page_links_to_the_playground_and_has_python_and_curl(
    alice_client: Client, alice_project: Any, settings: Any
) -> None:
    settings.SITE_URL = "https://app.example.com"
    pid = alice_project.public_id
    model = make_model(alice_project)

    page = alice_client.get(f"/projects/{pid}/models/{model.name}/").content.decode()

    playground = f"/projects/{pid}/playground/?model={model.name.replace(':', '%3A')}#classify"
    assert f'<a class="button" id="try-in-playground" href="{playground}">Try in playground</a>' in page
    python = html.unescape(page.split('id="model-code-python">')[1].split("</code>")[0])
    assert (
        'client = OpenAI(base_url="https://app.example.com/v1", api_key=os.environ["MODELWORKS_API_KEY"])'
        in python
    )
    curl = html.unescape(page.split('id="model-code-curl">')[1].split("</code>")[0])
    assert curl == (
        "curl https://app.example.com/v1/classifications \\\n"
        '  -H "Authorization: Bearer $MODELWORKS_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"""  -d '{{"model": "{model.name}", "input": ["I was charged twice this month."]}}'"""
    )
    assert 'data-copy="#model-code-python" aria-label="Copy the Python code">Copy</button>' in page
    assert 'data-copy="#model-code-curl" aria-label="Copy the curl command">Copy</button>' in page
    assert f'<a href="/projects/{pid}/api-keys/">API keys</a>' in page


def test_the_playground_opens_with_the_model_from_the_link_and_has_view_code(
    alice_client: Client, alice_project: Any, settings: Any
) -> None:
    settings.SITE_URL = "https://app.example.com"
    model = make_model(alice_project)

    page = alice_client.get(
        f"/projects/{alice_project.public_id}/playground/", {"model": model.name}
    ).content.decode()

    assert f'<option value="{model.name}" selected>' in page
    assert '<script id="api-base-url" type="application/json">"https://app.example.com/v1"</script>' in page
    assert 'aria-expanded="false" aria-controls="chat-code">View code</button>' in page
    assert 'aria-expanded="false" aria-controls="classify-code">View code</button>' in page
    assert 'data-copy="#classify-code-curl" aria-label="Copy the curl command"' in page


def test_a_new_key_has_a_copy_button(alice_client: Client, alice_project: Any) -> None:
    response = alice_client.post(
        f"/projects/{alice_project.public_id}/api-keys/", {"name": "ci"}, follow=True
    )

    page = response.content.decode()
    assert '<div class="secret" id="new-key-value">sk-mw-' in page
    assert (
        '<button type="button" class="copy-button" data-copy="#new-key-value" aria-label="Copy the API key">Copy</button>'
        in page
    )


def test_a_teammate_sees_the_checklist_of_the_project(client: Client, bob: Any, alice_project: Any) -> None:
    login(client, bob)
    page = project_page(client, alice_project)
    assert "0 of 4 done" in page
    assert f'action="/projects/{alice_project.public_id}/getting-started/dismiss"' in page
