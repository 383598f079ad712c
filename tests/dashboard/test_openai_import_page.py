"""The "Import from OpenAI" page: the organization's OpenAI jobs listed with its own key, the ticked
ones recreated on the chosen base with a report of what was imported (the parity eval included),
the page's refusals in words (no key, OpenAI down, nothing ticked), and outsiders get 404."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from apps.core.crypto import encrypt
from apps.jobs.models import Job, JobKind
from apps.projects.models import File
from tests.api.test_openai_import import CHATS, ORG_KEY, account  # noqa: F401  (a fixture)
from tests.api.test_sdk_adapters import tiny_llama_base  # noqa: F401  (a fixture)
from tests.conftest import login
from tests.dashboard.test_aliases_pages import messages_of, table, text
from tests.fake_openai import CREATED, FakeAccount, FakeOpenAI, fine_tuning_job

OLD = "ft:gpt-4o-mini-2024-07-18:acme:support-bot:AbC123"
VALID_BYTES = len(b"".join(CHATS.splitlines(keepends=True)[:3]))
SHOWN_CREATED = datetime.fromtimestamp(CREATED, tz=UTC).strftime("%Y-%m-%d %H:%M")


def page_url(project: Any) -> str:
    return f"/projects/{project.public_id}/fine-tuning/import-openai/"


@pytest.fixture
def jobs(
    account: tuple[FakeAccount, FakeOpenAI],  # noqa: F811
) -> tuple[FakeAccount, FakeOpenAI]:
    """The organization's OpenAI account with a job whose model still answers, and one that is not
    offered here."""
    state, _ = account
    state.add_file("file-train", CHATS, "support.jsonl")
    state.add_file("file-valid", CHATS[:VALID_BYTES], "support-valid.jsonl")
    state.jobs = [
        fine_tuning_job("ftjob-new", "file-train", validation_file="file-valid", fine_tuned_model=OLD),
        fine_tuning_job("ftjob-rft", "file-train", method={"type": "reinforcement", "reinforcement": {}}),
    ]
    state.models[OLD] = lambda messages: "a" + messages[-1]["content"][1:]
    return account


def test_the_page_lists_the_jobs_and_imports_the_ticked_ones_with_a_report(
    client: Any,
    alice: Any,
    alice_project: Any,
    jobs: tuple[FakeAccount, FakeOpenAI],
    tiny_llama_base: Any,  # noqa: F811
) -> None:
    login(client, alice)
    html = client.get(page_url(alice_project)).content.decode()
    assert table(html, "openai-jobs") == [
        [
            "ftjob-new",
            f"{OLD} from gpt-4o-mini-2024-07-18",
            "supervised",
            "succeeded",
            SHOWN_CREATED,
        ],
        [
            "ftjob-rft",
            "gpt-4o-mini-2024-07-18",
            "reinforcement not offered",
            "succeeded",
            SHOWN_CREATED,
        ],
    ]
    assert 'value="ftjob-rft" id="job-ftjob-rft" disabled' in html
    assert "2 jobs, newest first; 1 can be recreated here" in text(html, "import-form")

    response = client.post(page_url(alice_project), {"jobs": ["ftjob-new"], "base_model": "tiny-llama-base"})
    assert response.status_code == 302 and response["Location"] == page_url(alice_project)
    job = Job.objects.get(kind=JobKind.FINE_TUNE)
    html = client.get(page_url(alice_project)).content.decode()
    assert table(html, "import-report") == [
        [
            "ftjob-new",
            f"created {job.public_id} Not carried over: model gpt-4o-mini-2024-07-18: recreated on tiny-llama-base",
            f"3 answers recorded 3 answers of {OLD} recorded from the validation file. When {job.public_id} "
            "succeeds, its model is run on the same prompts in this eval; compare the two runs to see where it "
            "is worse.",
        ]
    ]
    # the report is shown once; the page then lists the jobs again
    assert "import-report" not in client.get(page_url(alice_project)).content.decode()


def test_the_page_copies_the_ticked_files_alone(
    client: Any, alice: Any, alice_project: Any, jobs: tuple[FakeAccount, FakeOpenAI]
) -> None:
    login(client, alice)
    html = client.get(page_url(alice_project)).content.decode()
    assert table(html, "openai-files") == [
        ["file-valid", "support-valid.jsonl", f"{VALID_BYTES} bytes", SHOWN_CREATED],
        ["file-train", "support.jsonl", "1.1 KB", SHOWN_CREATED],
    ]
    response = client.post(page_url(alice_project), {"action": "files"}, follow=True)
    assert messages_of(response) == ["Tick at least one file to copy."]
    client.post(page_url(alice_project), {"action": "files", "files": ["file-valid"]})
    file = File.objects.get()
    assert file.filename == "support-valid.jsonl" and not Job.objects.exists()
    html = client.get(page_url(alice_project)).content.decode()
    assert table(html, "import-report") == [["file-valid", f"copied {file.public_id}"]]


def test_the_page_says_what_is_missing_or_wrong(
    client: Any, alice: Any, alice_org: Any, alice_project: Any, settings: Any
) -> None:
    login(client, alice)
    html = client.get(page_url(alice_project)).content.decode()
    assert text(html, "import-problem") == (
        "Importing reads your OpenAI account with your organization's own OpenAI key: add it under Settings, "
        "then try again. Add your OpenAI key"
    )
    alice_org.openai_api_key_encrypted = encrypt(ORG_KEY)
    alice_org.save(update_fields=["openai_api_key_encrypted"])
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens there
    settings.OPENAI_MAX_RETRIES = 0
    html = client.get(page_url(alice_project)).content.decode()
    assert text(html, "import-problem") == (
        "OpenAI could not be reached or answered with an error: Connection error. Try again in a moment."
    )
    response = client.post(page_url(alice_project), {"base_model": "tiny-llama-base"}, follow=True)
    assert messages_of(response) == ["Tick at least one job to import."]
    response = client.post(page_url(alice_project), {"jobs": ["ftjob-1"]}, follow=True)
    assert messages_of(response) == ["Choose the base model to train on."]
    response = client.post(page_url(alice_project), {"jobs": ["ftjob-1"], "base_model": "x"}, follow=True)
    assert messages_of(response) == [
        "OpenAI could not be reached or answered with an error: Connection error. Try again in a moment."
    ]
    assert not Job.objects.exists()


def test_an_outsider_gets_404(client: Any, carol: Any, alice_project: Any) -> None:
    login(client, carol)
    assert client.get(page_url(alice_project)).status_code == 404
    response = client.post(page_url(alice_project), {"jobs": ["ftjob-1"], "base_model": "x"})
    assert response.status_code == 404
    assert not Job.objects.exists()


def test_a_job_with_an_odd_date_is_listed_without_one(
    client: Any, alice: Any, alice_project: Any, jobs: tuple[FakeAccount, FakeOpenAI]
) -> None:
    state, _ = jobs
    state.jobs[0]["created_at"] = 10**20  # no date a page can show
    login(client, alice)
    rows = table(client.get(page_url(alice_project)).content.decode(), "openai-jobs")
    assert rows[0][0] == "ftjob-new" and rows[0][-1] == ""
