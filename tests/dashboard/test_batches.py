"""Batches pages: "run on a file", the list, the live page, cancel, downloads, and outsiders."""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

import pytest

from apps.billing.models import Plan
from apps.jobs.models import Job, JobStatus
from apps.projects.actions import create_result_file
from apps.projects.models import File
from apps.projects.validation import validate_stream
from apps.registry.models import Model
from tests.conftest import wait_for

TICKETS = 'text,label\nrefund please,billing\n=SUM(A1),bug\n"app crashes, every time",bug\nlove it,praise\n'


def url(project: Any, action: str = "") -> str:
    return f"/projects/{project.public_id}/batches/{action}"


def processed_file(project: Any, filename: str, data: bytes, purpose: str = "fine-tune") -> File:
    """A stored file with its validation report, as the validation task leaves it."""
    file = create_result_file(project, filename, purpose, data)
    report = validate_stream([data], purpose, filename=filename)
    assert report["valid"], report["errors"]
    File.objects.filter(pk=file.pk).update(validation=report, format=report["format"])
    file.refresh_from_db()
    return file


def classifier_row(organization: Any) -> Model:
    """alice's classifier as a row only, for tests that never reach a worker."""
    return Model.objects.create(
        name="ft:tiny-bert:acme:tickets:ftjob-1",
        organization=organization,
        task="classification",
        labels=["billing", "bug", "praise"],
        limits={"servable": True},
    )


def start(client: Any, project: Any, model: str, file: File | str) -> Any:
    file_id = file if isinstance(file, str) else file.public_id
    return client.post(url(project, "new"), {"model": model, "file": file_id})


def lines(file: File | None) -> list[dict[str, Any]]:
    assert file is not None
    with file.content.open("rb") as handle:
        return [json.loads(raw) for raw in handle if raw.strip()]


def download(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def batch_with_results(
    project: Any,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    status: str = JobStatus.SUCCEEDED,
) -> Job:
    """A finished batch job with its files, as the worker leaves them."""

    def jsonl(rows: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(row) + "\n" for row in rows).encode()

    source = processed_file(project, "in.jsonl", jsonl(inputs), purpose="batch")
    result: dict[str, Any] = {}
    if outputs:
        result["output_file_id"] = create_result_file(
            project, "out.jsonl", "batch_output", jsonl(outputs)
        ).public_id
    if errors:
        result["error_file_id"] = create_result_file(
            project, "err.jsonl", "batch_output", jsonl(errors)
        ).public_id
    return Job.objects.create(
        kind="batch",
        organization=project.organization,
        project=project,
        model_name="tiny-gpt2",
        status=status,
        request={"endpoint": "/v1/chat/completions", "input_file_id": source.public_id},
        training_file=source,
        result=result,
        progress={"total": len(inputs), "completed": len(outputs), "failed": len(errors)},
    )


def chat_request(custom_id: str, content: str) -> dict[str, Any]:
    body = {"model": "tiny-gpt2", "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def chat_output(custom_id: str, text: str) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    body = {"object": "chat.completion", "choices": [choice]}
    return {
        "id": "batch_req_1",
        "custom_id": custom_id,
        "response": {"status_code": 200, "body": body},
        "error": None,
    }


def chat_error(custom_id: str, message: str) -> dict[str, Any]:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return {
        "id": "batch_req_2",
        "custom_id": custom_id,
        "response": {"status_code": 400, "body": body},
        "error": None,
    }


@pytest.mark.integration
def test_run_on_a_csv_builds_a_batch_that_completes_with_csv_and_jsonl_results(
    alice_client: Any, alice_project: Any, celery_worker: Any, tiny_classifier: Any
) -> None:
    # given
    dataset = processed_file(alice_project, "tickets.csv", TICKETS.encode())
    # when
    response = start(alice_client, alice_project, tiny_classifier.name, dataset)
    # then: a batch file of one classification request a row, and a batch on it
    job = Job.objects.get(kind="batch")
    assert response.status_code == 302 and response["Location"] == url(alice_project, f"{job.public_id}/")
    batch_file = job.training_file
    assert batch_file is not None and batch_file.validation is not None
    assert batch_file.purpose == "batch" and batch_file.format == "batch_jsonl"
    assert batch_file.validation["rows"] == 4
    assert batch_file.validation["stats"]["endpoints"] == {"/v1/classifications": 4}
    assert lines(batch_file)[1] == {
        "custom_id": "row-2",
        "method": "POST",
        "url": "/v1/classifications",
        "body": {"model": tiny_classifier.name, "input": "=SUM(A1)"},
    }
    assert job.metadata == {"model": tiny_classifier.name, "source_file_id": dataset.public_id}
    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED, timeout=60)
    page = alice_client.get(url(alice_project, f"{job.public_id}/")).content.decode()
    assert "Completed" in page and "hx-trigger" not in page  # finished: no more polling
    assert "Cancel batch" not in page

    csv_response = alice_client.get(url(alice_project, f"{job.public_id}/results.csv"))
    assert csv_response["Content-Type"].startswith("text/csv")
    assert csv_response["Content-Disposition"] == f'attachment; filename="{job.public_id}_results.csv"'
    rows = list(csv.reader(io.StringIO(download(csv_response).decode())))
    assert rows[0] == ["custom_id", "input", "label", "score", "status", "error"]
    assert [row[0] for row in rows[1:]] == ["row-1", "row-2", "row-3", "row-4"]
    assert [row[1] for row in rows[1:]] == [
        "refund please",
        "'=SUM(A1)",
        "app crashes, every time",
        "love it",
    ]
    assert all(row[2] in ("billing", "bug", "praise") and 0 < float(row[3]) <= 1 for row in rows[1:])
    assert all(row[4:] == ["completed", ""] for row in rows[1:])

    jsonl_response = alice_client.get(url(alice_project, f"{job.public_id}/output.jsonl"))
    assert "attachment" in jsonl_response["Content-Disposition"]
    output = [json.loads(line) for line in download(jsonl_response).splitlines()]
    assert [line["custom_id"] for line in output] == ["row-1", "row-2", "row-3", "row-4"]
    assert output[0]["response"]["body"]["object"] == "classification"
    assert (
        alice_client.get(url(alice_project, f"{job.public_id}/errors.jsonl")).status_code == 404
    )  # none failed


def test_a_generation_model_gets_one_chat_request_a_row(
    alice_client: Any, alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    Model.objects.create(name="tiny-gpt2", task="generation", limits={"servable": True})
    dataset = processed_file(alice_project, "tickets.csv", TICKETS.encode())
    with django_capture_on_commit_callbacks(execute=False):
        assert start(alice_client, alice_project, "tiny-gpt2", dataset).status_code == 302
    requests = lines(Job.objects.get().training_file)
    assert len(requests) == 4
    assert requests[2] == {
        "custom_id": "row-3",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "app crashes, every time"}]},
    }


def test_a_batch_file_runs_as_it_is(
    alice_client: Any, alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    data = "".join(json.dumps(chat_request(f"r{i}", "hi")) + "\n" for i in range(3)).encode()
    batch_file = processed_file(alice_project, "requests.jsonl", data, purpose="batch")
    with django_capture_on_commit_callbacks(execute=False):
        refused = start(alice_client, alice_project, "smollm2-135m-instruct", batch_file)
        assert refused.status_code == 400
        assert "A batch file names the model on each line" in html.unescape(refused.content.decode())
        assert start(alice_client, alice_project, "", batch_file).status_code == 302
    job = Job.objects.get()
    assert job.training_file == batch_file and job.request["endpoint"] == "/v1/chat/completions"
    assert job.progress["total"] == 3


def test_run_on_a_file_explains_refusals(alice_client: Any, alice_org: Any, alice_project: Any) -> None:
    classifier = classifier_row(alice_org)
    dataset = processed_file(alice_project, "tickets.csv", TICKETS.encode())
    huge = File.objects.create(
        project=alice_project,
        filename="huge.csv",
        purpose="fine-tune",
        status="processed",
        format="classification_csv",
        validation={"valid": True, "rows": 50_001},
        content="files/test/huge.csv",
    )
    cases = [
        ("", dataset.public_id, "Choose a model to run on this file."),
        (classifier.name, "file-nope", "Choose a processed file of this project."),
        (classifier.name, huge.public_id, "The file has 50,001 rows; a batch holds at most 50,000."),
        ("minilm-l6", dataset.public_id, "'minilm-l6' is a base model for fine-tuning and cannot be called"),
    ]
    for model, file_id, message in cases:
        response = start(alice_client, alice_project, model, file_id)
        assert response.status_code == 400, (model, file_id)
        assert message in html.unescape(response.content.decode())
    assert not Job.objects.exists()
    assert list(File.objects.filter(purpose="batch")) == []  # nothing half-written


def test_the_list_shows_each_batch_with_its_status_and_progress(
    alice_client: Any, alice_project: Any
) -> None:
    job = batch_with_results(
        alice_project,
        [chat_request("a", "hi"), chat_request("b", "yo")],
        [chat_output("a", "hello")],
        [],
        status=JobStatus.RUNNING,
    )
    page = alice_client.get(url(alice_project)).content.decode()
    assert job.public_id in page
    assert '<span class="badge in_progress">In progress</span>' in page
    assert 'value="50.0"' in page and "1 / 2" in page
    detail = alice_client.get(url(alice_project, f"{job.public_id}/")).content.decode()
    assert 'hx-trigger="every 2s"' in detail and "Cancel batch" in detail
    status = alice_client.get(url(alice_project, f"{job.public_id}/status"))
    assert status.status_code == 200 and 'id="batch-status"' in status.content.decode()


def test_the_csv_pairs_results_with_inputs_and_neutralises_formulas(
    alice_client: Any, alice_project: Any
) -> None:
    inputs = [
        chat_request("a", "=1+1"),
        chat_request("b", "hi"),
        chat_request("c", "@cmd"),
        chat_request("d", "x"),
    ]
    outputs = [chat_output("a", "+2"), chat_output("c", "-\tsure")]
    job = batch_with_results(
        alice_project,
        inputs,
        outputs,
        [chat_error("b", "temperature must be a number")],
        status=JobStatus.CANCELLED,
    )
    response = alice_client.get(url(alice_project, f"{job.public_id}/results.csv"))
    rows = list(csv.reader(io.StringIO(download(response).decode())))
    assert rows == [
        ["custom_id", "input", "output", "finish_reason", "status", "error"],
        ["a", "'=1+1", "'+2", "stop", "completed", ""],
        ["b", "hi", "", "", "failed", "temperature must be a number"],
        ["c", "'@cmd", "'-\tsure", "stop", "completed", ""],
        ["d", "x", "", "", "not_run", ""],  # the batch was cancelled before it
    ]
    errors = download(alice_client.get(url(alice_project, f"{job.public_id}/errors.jsonl")))
    assert [json.loads(line)["custom_id"] for line in errors.splitlines()] == ["b"]


def test_the_csv_reads_only_the_text_of_content_parts_the_customer_wrote(
    alice_client: Any, alice_project: Any
) -> None:
    # given a batch file whose request holds content parts that are not all text (the worker refused it)
    parts = [{"type": "text", "text": 5}, {"type": "text", "text": "hello "}, "world", {"type": "image_url"}]
    body = {"model": "tiny-gpt2", "messages": [{"role": "user", "content": parts}]}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    job = batch_with_results(
        alice_project, [line], [], [chat_error("a", "Only text content parts are supported.")]
    )
    # when its results are downloaded as CSV
    response = alice_client.get(url(alice_project, f"{job.public_id}/results.csv"))
    # then the input column holds the text parts, and the download completes
    rows = list(csv.reader(io.StringIO(download(response).decode())))
    assert rows[1] == ["a", "hello ", "", "", "failed", "Only text content parts are supported."]


def test_cancel_stops_a_batch(
    alice_client: Any, alice_org: Any, alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    classifier = classifier_row(alice_org)
    dataset = processed_file(alice_project, "tickets.csv", TICKETS.encode())
    with django_capture_on_commit_callbacks(execute=False):  # no worker: it stays queued
        start(alice_client, alice_project, classifier.name, dataset)
    job = Job.objects.get()
    response = alice_client.post(url(alice_project, f"{job.public_id}/cancel"))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    page = alice_client.get(url(alice_project, f"{job.public_id}/")).content.decode()
    assert (
        "Batch cancelled." in page
        and '<span class="badge cancelled" id="batch-badge">Cancelled</span>' in page
    )
    assert "Cancel batch" not in page
    again = alice_client.post(url(alice_project, f"{job.public_id}/cancel"), follow=True)
    assert "has already finished; it cannot be cancelled." in again.content.decode()


def test_results_wait_for_the_batch_to_finish(alice_client: Any, alice_project: Any) -> None:
    job = batch_with_results(alice_project, [chat_request("a", "hi")], [], [], status=JobStatus.RUNNING)
    assert alice_client.get(url(alice_project, f"{job.public_id}/results.csv")).status_code == 409
    assert alice_client.get(url(alice_project, f"{job.public_id}/output.jsonl")).status_code == 404


def test_outsiders_get_404_for_every_batches_page_and_action(
    carol_client: Any, carol_project: Any, alice_org: Any, alice_project: Any
) -> None:
    classifier = classifier_row(alice_org)
    dataset = processed_file(alice_project, "tickets.csv", TICKETS.encode())
    job = batch_with_results(
        alice_project,
        [chat_request("a", "hi"), chat_request("b", "yo")],
        [chat_output("a", "hello")],
        [chat_error("b", "no")],
    )
    batch = f"{job.public_id}/"
    for path in (
        "",
        batch,
        f"{batch}status",
        f"{batch}output.jsonl",
        f"{batch}errors.jsonl",
        f"{batch}results.csv",
    ):
        assert carol_client.get(url(alice_project, path)).status_code == 404, path
    assert carol_client.post(url(alice_project, f"{batch}cancel")).status_code == 404
    assert start(carol_client, alice_project, classifier.name, dataset).status_code == 404
    # Her own project: alice's batch, file and model are not there.
    assert carol_client.get(url(carol_project, batch)).status_code == 404
    assert carol_client.get(url(carol_project, f"{batch}results.csv")).status_code == 404
    assert carol_client.post(url(carol_project, f"{batch}cancel")).status_code == 404
    assert job.public_id not in carol_client.get(url(carol_project)).content.decode()
    refused = start(carol_client, carol_project, classifier.name, dataset)
    assert "Choose a processed file of this project." in refused.content.decode()
    own = processed_file(carol_project, "mine.csv", TICKETS.encode())
    refused = start(carol_client, carol_project, classifier.name, own)
    assert html.escape(f"The model '{classifier.name}' does not exist or you do not have access to it.") in (
        refused.content.decode()
    )
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert Job.objects.count() == 1


def test_chat_and_prompt_files_become_the_conversation_before_the_reply(
    alice_client: Any, alice_org: Any, alice_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    Model.objects.create(name="tiny-gpt2", task="generation", limits={"servable": True})
    chat_rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "weight": 1},
            ]
        },
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    chats = processed_file(
        alice_project, "chat.jsonl", "".join(json.dumps(r) + "\n" for r in chat_rows).encode()
    )
    prompts = processed_file(alice_project, "pc.jsonl", b'{"prompt": "Say hi", "completion": "hi"}\n')
    Plan.objects.update(concurrent_batches=5)  # both batches at once
    with django_capture_on_commit_callbacks(execute=False):
        start(alice_client, alice_project, "tiny-gpt2", chats)
        start(alice_client, alice_project, "tiny-gpt2", prompts)
        refused = start(alice_client, alice_project, classifier_row(alice_org).name, chats)
    assert "Classifiers take text" in refused.content.decode()
    built = [lines(job.training_file) for job in Job.objects.order_by("id")]
    assert [line["body"]["messages"] for line in built[0]] == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "2+2?"}],
    ]
    assert built[1][0]["body"]["messages"] == [{"role": "user", "content": "Say hi"}]


def test_a_refused_batch_leaves_no_batch_file_behind(
    alice_client: Any, alice_org: Any, alice_project: Any
) -> None:
    from django.core.files.storage import default_storage

    from apps.billing import quotas

    classifier = classifier_row(alice_org)
    dataset = processed_file(alice_project, "tickets.csv", TICKETS.encode())
    subscription = quotas.subscription_for(alice_org)
    subscription.spend_limit = 0
    subscription.save()
    response = start(alice_client, alice_project, classifier.name, dataset)
    assert response.status_code == 429
    assert "You reached your monthly spend limit" in html.unescape(response.content.decode())
    assert not Job.objects.exists()
    assert list(File.objects.filter(purpose="batch")) == []
    assert default_storage.listdir(f"files/{alice_org.public_id}")[1] == [dataset.public_id]


def test_the_csv_of_an_embeddings_batch_holds_each_vector(alice_client: Any, alice_project: Any) -> None:
    body = {"model": "minilm-l6", "input": ["a cat", "a dog"]}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": body}
    vectors = [{"object": "embedding", "index": i, "embedding": [0.5, -0.25 * i]} for i in (0, 1)]
    output = {
        "custom_id": "a",
        "response": {"status_code": 200, "body": {"object": "list", "data": vectors, "model": "minilm-l6"}},
    }
    job = batch_with_results(alice_project, [line], [output], [])

    response = alice_client.get(url(alice_project, f"{job.public_id}/results.csv"))

    rows = list(csv.reader(io.StringIO(download(response).decode())))
    assert rows[1:] == [
        ["a", "a cat", "[0.5, -0.0]", "", "completed", ""],
        ["a", "a dog", "[0.5, -0.25]", "", "completed", ""],
    ]
