"""Dashboard files pages: upload, list, the validation report, line context, delete."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.models import File
from tests.conftest import login
from workers.tasks import validate_file

pytestmark = pytest.mark.usefixtures("media")

# Line 8 has an empty text, line 10 an empty label; "meh" has a single example.
DATA = (
    b"text,label\n"
    b"Loved every minute of it,positive\n"
    b'"A review that\nspans two lines",positive\n'
    b"Hated every minute of it,negative\n"
    b"Not my kind of film,negative\n"
    b"Fine for a rainy afternoon,positive\n"
    b",negative\n"
    b"Dreadful from start to end,negative\n"
    b"No label here,\n"
    b"So-so,meh\n"
    b"A <b>bold</b> claim,positive\n"
)


def upload(client: Any, project: Any, data: bytes = DATA, name: str = "reviews.csv", **fields: Any) -> Any:
    body = {"file": SimpleUploadedFile(name, data), "purpose": "fine-tune", **fields}
    return client.post(f"/projects/{project.public_id}/files/upload", body, HTTP_ACCEPT="application/json")


def uploaded(client: Any, project: Any, data: bytes = DATA, **fields: Any) -> File:
    response = upload(client, project, data, **fields)
    assert response.status_code == 201, response.content
    return File.objects.get(public_id=response.json()["id"])


def validated(client: Any, project: Any, data: bytes = DATA, **fields: Any) -> File:
    file = uploaded(client, project, data, **fields)
    validate_file(file.public_id)
    file.refresh_from_db()
    return file


def page(client: Any, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, path
    return response.content.decode()


def test_an_upload_answers_json_for_the_progress_bar(
    alice_client: Any, alice: Any, alice_project: Any
) -> None:
    response = upload(alice_client, alice_project)

    assert response.status_code == 201
    file = File.objects.get()
    assert response.json() == {
        "id": file.public_id,
        "status": "uploaded",
        "url": f"/projects/{alice_project.public_id}/files/{file.public_id}/",
    }
    assert (file.project, file.created_by, file.purpose, file.bytes) == (
        alice_project,
        alice,
        "fine-tune",
        len(DATA),
    )
    assert file.content.read() == DATA


def test_an_upload_without_javascript_redirects_to_the_file(alice_client: Any, alice_project: Any) -> None:
    body = {"file": SimpleUploadedFile("reviews.csv", DATA), "purpose": "batch"}

    response = alice_client.post(f"/projects/{alice_project.public_id}/files/upload", body, follow=True)

    file = File.objects.get()
    assert file.purpose == "batch"
    assert response.redirect_chain == [(f"/projects/{alice_project.public_id}/files/{file.public_id}/", 302)]
    assert "Uploaded “reviews.csv”. Validating it now." in response.content.decode()


def test_the_column_mapping_inputs_reach_the_validator(alice_client: Any, alice_project: Any) -> None:
    data = b"review,sentiment\nCrisp dialogue,pos\nA classic,pos\nPredictable,neg\nI fell asleep,neg\n"

    file = validated(alice_client, alice_project, data, column_text="review", column_label=" sentiment ")

    assert file.column_mapping == {"text": "review", "label": "sentiment"}
    assert file.status == "processed"


def test_a_refused_upload_says_why(alice_client: Any, alice_project: Any) -> None:
    url = f"/projects/{alice_project.public_id}/files/upload"

    no_file = alice_client.post(url, {"purpose": "fine-tune"}, HTTP_ACCEPT="application/json")
    bad_purpose = upload(alice_client, alice_project, purpose="assistants")

    assert no_file.status_code == 400
    assert no_file.json() == {"error": "Missing required parameter: 'file'."}
    assert bad_purpose.status_code == 400
    assert bad_purpose.json()["error"].startswith("Invalid value for 'purpose'")
    assert not File.objects.exists()


def test_an_oversize_upload_is_413_and_stores_nothing(
    alice_client: Any, alice_project: Any, settings: Any, media: Path
) -> None:
    settings.MAX_UPLOAD_BYTES = 100

    response = upload(alice_client, alice_project)

    assert response.status_code == 413
    assert response.json() == {"error": "The file is larger than the 100 bytes limit."}
    assert not File.objects.exists()
    assert not [path for path in media.rglob("*") if path.is_file()]


def test_the_upload_needs_the_csrf_token(alice: Any, alice_project: Any) -> None:
    client = login(Client(enforce_csrf_checks=True), alice)
    files_page = client.get(f"/projects/{alice_project.public_id}/files/")
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', files_page.content.decode())
    assert found is not None
    token = found.group(1)

    refused = upload(client, alice_project)
    accepted = client.post(
        f"/projects/{alice_project.public_id}/files/upload",
        {"file": SimpleUploadedFile("reviews.csv", DATA), "purpose": "fine-tune"},
        HTTP_ACCEPT="application/json",
        HTTP_X_CSRFTOKEN=token,
    )

    assert refused.status_code == 403
    assert accepted.status_code == 201
    assert File.objects.count() == 1


def test_the_page_has_the_upload_form(alice_client: Any, alice_project: Any) -> None:
    html = page(alice_client, f"/projects/{alice_project.public_id}/files/")

    assert f'action="/projects/{alice_project.public_id}/files/upload"' in html
    assert 'enctype="multipart/form-data"' in html
    assert '<option value="fine-tune">' in html and '<option value="batch">' in html
    assert 'name="column_text"' in html and 'name="column_label"' in html
    assert 'id="upload-progress"' in html
    assert "/static/js/upload.js" in html
    assert "No files yet." in html


def test_the_list_shows_status_size_format_and_rows(alice_client: Any, alice_project: Any) -> None:
    waiting = uploaded(alice_client, alice_project, name="waiting.csv")
    good = validated(alice_client, alice_project, b"text,label\na b c,x\nd e f,y\ng h i,x\nj k l,y\n")
    bad = validated(alice_client, alice_project)

    html = page(alice_client, f"/projects/{alice_project.public_id}/files/")

    rows = {
        file_id: html[html.index(file_id) :].split("</tr>")[0]
        for file_id in (waiting.public_id, good.public_id, bad.public_id)
    }
    assert '<span class="badge uploaded">uploaded</span>' in rows[waiting.public_id]
    assert '<span class="badge processed">processed</span>' in rows[good.public_id]
    assert '<span class="badge error">error</span>' in rows[bad.public_id]
    assert "classification_csv" in rows[bad.public_id]
    assert "<td>10</td>" in rows[bad.public_id]  # rows
    assert f"<td>{len(DATA)}\xa0bytes</td>" in rows[bad.public_id]
    assert f"/projects/{alice_project.public_id}/files/{good.public_id}/" in html
    assert (
        html.index(bad.public_id) < html.index(good.public_id) < html.index(waiting.public_id)
    )  # newest first


def test_the_list_costs_the_same_queries_for_many_files(
    alice_client: Any, alice_project: Any, django_assert_max_num_queries: Any
) -> None:
    for _ in range(8):
        validated(alice_client, alice_project)
    url = f"/projects/{alice_project.public_id}/files/"
    alice_client.get(url)

    with django_assert_max_num_queries(12):
        alice_client.get(url)


def test_the_detail_shows_the_report(alice_client: Any, alice_project: Any) -> None:
    file = validated(alice_client, alice_project)
    url = f"/projects/{alice_project.public_id}/files/{file.public_id}/"

    html = page(alice_client, url)

    assert '<span class="badge error">error</span>' in html
    assert file.status_details in html
    assert "classification_csv" in html
    # the errors table, each line linking to its context
    assert '<a href="?line=8#line-8">8</a>' in html
    assert '<a href="?line=10#line-10">10</a>' in html
    assert "text is empty" in html and "label is empty" in html
    assert "fill in the text or remove the row" in html
    # warnings
    assert "label &quot;meh&quot; has only 1 example" in html
    # the first rows, as a table, escaped
    assert "<th>text</th><th>label</th>" in html
    assert "A review that\nspans two lines" in html
    assert "A &lt;b&gt;bold&lt;/b&gt; claim" in html
    # stats
    assert "<th>characters</th>" in html and "<th>tokens (est.)</th>" in html
    # no polling once validated
    assert "hx-trigger" not in html
    # the chart: vendored Chart.js, no CDN, data as JSON
    assert "/static/vendor/chartjs/chart.umd.min.js" in html
    assert "cdn" not in html.lower()
    chart = re.search(r'<script id="label-data" type="application/json">(.*?)</script>', html, re.S)
    assert chart is not None
    assert json.loads(chart.group(1)) == [["positive", 4], ["negative", 3], ["meh", 1]]
    assert 'id="label-chart"' in html


def test_the_chart_data_matches_the_report(alice_client: Any, alice_project: Any) -> None:
    data = b"text,label\n" + b"".join(f"text {i},{i % 3 + 1}\n".encode() for i in range(9))
    file = validated(alice_client, alice_project, data)

    html = page(alice_client, f"/projects/{alice_project.public_id}/files/{file.public_id}/")

    chart = re.search(r'<script id="label-data" type="application/json">(.*?)</script>', html, re.S)
    assert chart is not None
    assert file.validation is not None
    counts = sorted(file.validation["stats"]["labels"].items(), key=lambda item: (-item[1], item[0]))
    assert (
        json.loads(chart.group(1))
        == [[label, count] for label, count in counts]
        == [["1", 3], ["2", 3], ["3", 3]]
    )


def test_a_row_in_context_highlights_its_line(alice_client: Any, alice_project: Any) -> None:
    file = validated(alice_client, alice_project)
    url = f"/projects/{alice_project.public_id}/files/{file.public_id}/"

    html = page(alice_client, url + "?line=8")

    assert "Line 8 in context" in html
    numbers = [int(n) for n in re.findall(r'<tr id="line-(\d+)"', html)]
    assert numbers == [5, 6, 7, 8, 9, 10, 11]
    highlighted = re.findall(
        r'<tr id="line-(\d+)" class="highlight">\s*'
        r'<td class="num mono">\d+</td>\s*<td class="mono text">([^<]*)',
        html,
    )
    assert highlighted == [("8", ",negative")]


def test_a_row_in_context_at_the_edges_of_the_file(alice_client: Any, alice_project: Any) -> None:
    file = validated(alice_client, alice_project)
    url = f"/projects/{alice_project.public_id}/files/{file.public_id}/"

    first = page(alice_client, url + "?line=1")
    last = page(alice_client, url + "?line=12")
    beyond = page(alice_client, url + "?line=500")
    nonsense = page(alice_client, url + "?line=-3")

    assert [int(n) for n in re.findall(r'<tr id="line-(\d+)"', first)] == [1, 2, 3, 4]
    assert [int(n) for n in re.findall(r'<tr id="line-(\d+)"', last)] == [9, 10, 11, 12]
    assert "The file has no line 500." in beyond
    assert "First rows" in nonsense


def test_a_line_number_in_other_digits_shows_the_preview(alice_client: Any, alice_project: Any) -> None:
    file = validated(alice_client, alice_project)
    url = f"/projects/{alice_project.public_id}/files/{file.public_id}/"

    for line in ("²", "٣", "8\n"):
        assert "First rows" in page(alice_client, url + "?line=" + quote(line)), line


def test_the_preview_reads_at_most_twenty_lines(alice_client: Any, alice_project: Any) -> None:
    data = b"".join(
        b'{"text": "row %d", "label": "%s"}\n' % (i, b"ab"[i % 2 : i % 2 + 1]) for i in range(1, 101)
    )
    file = validated(alice_client, alice_project, data)

    html = page(alice_client, f"/projects/{alice_project.public_id}/files/{file.public_id}/")

    assert [int(n) for n in re.findall(r'<tr id="line-(\d+)"', html)] == list(range(1, 21))
    assert "row 20" in html and "row 21" not in html


def test_long_lines_and_binary_bytes_are_cut_and_made_safe(alice_client: Any, alice_project: Any) -> None:
    data = b"text,label\n" + b"x" * 50_000 + b",pos\n\x00\x01\xff,neg\n"
    file = validated(alice_client, alice_project, data)

    html = page(alice_client, f"/projects/{alice_project.public_id}/files/{file.public_id}/?line=3")

    assert "x" * 2000 + '<span class="muted"> … (cut)</span>' in html
    assert "x" * 2001 not in html
    assert "\x00" not in html and "\ufffd\ufffd\ufffd,neg" in html


def test_the_status_fragment_polls_until_validation_is_done(alice_client: Any, alice_project: Any) -> None:
    file = uploaded(alice_client, alice_project)
    detail = f"/projects/{alice_project.public_id}/files/{file.public_id}/"
    fragment_url = detail + "status"

    # while uploaded: the page and the fragment both poll every second
    html = page(alice_client, detail)
    assert f'hx-get="{fragment_url}" hx-trigger="every 1s" hx-swap="outerHTML"' in html
    fragment = alice_client.get(fragment_url, HTTP_HX_REQUEST="true")
    assert 'hx-trigger="every 1s"' in fragment.content.decode()
    assert "HX-Refresh" not in fragment

    # once validated: no more polling, and htmx reloads the page to show the report
    validate_file(file.public_id)
    fragment = alice_client.get(fragment_url, HTTP_HX_REQUEST="true")
    assert fragment["HX-Refresh"] == "true"
    assert "hx-trigger" not in fragment.content.decode()
    assert '<span class="badge error">error</span>' in fragment.content.decode()


def test_download_returns_the_file(alice_client: Any, alice_project: Any) -> None:
    file = uploaded(alice_client, alice_project)

    response = alice_client.get(f"/projects/{alice_project.public_id}/files/{file.public_id}/content")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == DATA
    assert 'filename="reviews.csv"' in response["Content-Disposition"]


def test_delete_removes_the_file_and_its_blob(
    alice_client: Any, alice_project: Any, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    file = uploaded(alice_client, alice_project)
    detail = page(alice_client, f"/projects/{alice_project.public_id}/files/{file.public_id}/")
    assert 'data-confirm="Delete reviews.csv? Jobs that used it keep their results."' in detail

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(
            f"/projects/{alice_project.public_id}/files/{file.public_id}/delete", follow=True
        )

    assert response.redirect_chain == [(f"/projects/{alice_project.public_id}/files/", 302)]
    assert "“reviews.csv” was deleted." in response.content.decode()
    assert not File.objects.exists()
    assert not [path for path in media.rglob("*") if path.is_file()]
    assert (
        alice_client.get(f"/projects/{alice_project.public_id}/files/{file.public_id}/delete").status_code
        == 405
    )


def test_a_file_an_unfinished_job_reads_is_not_deleted(
    alice_client: Any, alice_project: Any, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    file = validated(alice_client, alice_project)
    job = Job.objects.create(
        kind=JobKind.FINE_TUNE,
        project=alice_project,
        organization=alice_project.organization,
        model_name="tiny-bert",
        status=JobStatus.PAUSED,
        training_file=file,
    )
    url = f"/projects/{alice_project.public_id}/files/{file.public_id}/"

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(url + "delete", follow=True)

    assert response.redirect_chain == [(url, 302)]
    assert (
        f"File {file.public_id} is used by fine-tuning job {job.public_id}, which is paused. Cancel the job "
        "or wait for it to finish, then delete the file."
    ) in response.content.decode()
    assert File.objects.filter(pk=file.pk).exists()
    assert [path for path in media.rglob("*") if path.is_file()]  # the content is kept too


def test_teammates_see_the_projects_files(
    client: Any, bob: Any, alice_client: Any, alice_project: Any
) -> None:
    file = uploaded(alice_client, alice_project)

    login(client, bob)

    assert client.get(f"/projects/{alice_project.public_id}/files/{file.public_id}/").status_code == 200


def test_every_files_page_and_action_is_404_for_outsiders(
    alice_client: Any, alice_project: Any, carol: Any, carol_project: Any, media: Path
) -> None:
    file = validated(alice_client, alice_project)
    outsider = login(Client(), carol)
    project = f"/projects/{alice_project.public_id}/files/"
    detail = f"{project}{file.public_id}/"

    for path in (project, detail, detail + "?line=8", detail + "status", detail + "content"):
        assert outsider.get(path).status_code == 404, path
    assert outsider.post(detail + "delete").status_code == 404
    upload_response = upload(outsider, alice_project)
    assert upload_response.status_code == 404
    # nor through her own project's URLs
    assert outsider.get(f"/projects/{carol_project.public_id}/files/{file.public_id}/").status_code == 404
    assert (
        outsider.post(f"/projects/{carol_project.public_id}/files/{file.public_id}/delete").status_code == 404
    )

    assert File.objects.count() == 1
    assert File.objects.get().project == alice_project
    assert file.public_id not in page(outsider, f"/projects/{carol_project.public_id}/files/")


def test_anonymous_visitors_are_sent_to_log_in(client: Any, alice_project: Any) -> None:
    response = client.get(f"/projects/{alice_project.public_id}/files/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert client.post(f"/projects/{alice_project.public_id}/files/upload").status_code == 302
