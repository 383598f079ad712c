"""Import from OpenAI against a local stand-in that speaks OpenAI's fine-tuning and files endpoints:
jobs listed over pages, a job's files copied and validated, the job recreated on an open base with
what could not be carried over, a deleted file and a reinforcement job skipped saying why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from apps.core.crypto import encrypt
from apps.jobs.models import Job, JobStatus
from apps.projects.models import File, FileStatus
from tests.api.test_evals import error_of
from tests.api.test_sdk_adapters import tiny_llama_base  # noqa: F401  (a fixture)
from tests.conftest import wait_for
from tests.fake_openai import FakeAccount, FakeOpenAI, fine_tuning_job

ORG_KEY = "sk-org-import-1234"
CHATS = "".join(
    json.dumps(
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    )
    + "\n"
    for i in range(12)
).encode()


@pytest.fixture
def account(settings: Any, alice_org: Any) -> Iterator[tuple[FakeAccount, FakeOpenAI]]:
    state = FakeAccount()
    with FakeOpenAI(responder=state.respond) as fake:
        settings.OPENAI_BASE_URL = fake.base_url
        settings.OPENAI_MAX_RETRIES = 0
        alice_org.openai_api_key_encrypted = encrypt(ORG_KEY)
        alice_org.save(update_fields=["openai_api_key_encrypted"])
        yield state, fake


def test_jobs_are_listed_over_every_page_with_the_organizations_key(
    api: Any, account: tuple[FakeAccount, FakeOpenAI]
) -> None:
    state, fake = account
    state.add_file("file-train", CHATS)
    state.jobs = [fine_tuning_job(f"ftjob-{i:03d}", "file-train") for i in range(150)]
    state.jobs[0]["method"] = {"type": "reinforcement", "reinforcement": {}}
    listed = api.get("/v1/imports/openai/jobs")
    assert listed.status_code == 200, listed.content
    data = listed.json()["data"]
    assert [j["id"] for j in data] == [f"ftjob-{i:03d}" for i in range(150)]
    assert data[0]["importable"] is False and data[1]["importable"] is True
    assert {r.headers["authorization"] for r in fake.requests} == {f"Bearer {ORG_KEY}"}
    assert len([r for r in fake.requests if r.path.startswith("/v1/fine_tuning/jobs")]) == 2  # two pages


def test_a_job_is_recreated_with_its_files_and_what_did_not_carry_over(
    api: Any,
    account: tuple[FakeAccount, FakeOpenAI],
    celery_worker: Any,
    tiny_llama_base: Any,  # noqa: F811
) -> None:
    state, _ = account
    state.add_file("file-train", CHATS, "support.jsonl")
    state.add_file("file-valid", b"".join(CHATS.splitlines(keepends=True)[:4]), "support-valid.jsonl")
    state.jobs = [
        fine_tuning_job(
            "ftjob-abc",
            "file-train",
            validation_file="file-valid",
            fine_tuned_model="ft:gpt-4o-mini-2024-07-18:acme:support-bot:AbC123",
            method={
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 1.5}
                },
            },
            integrations=[{"type": "wandb", "wandb": {"project": "x"}}],
        ),
        fine_tuning_job("ftjob-gone", "file-deleted"),
        fine_tuning_job("ftjob-rft", "file-train", method={"type": "reinforcement", "reinforcement": {}}),
    ]
    response = api.post(
        "/v1/imports/openai",
        {"jobs": ["ftjob-abc", "ftjob-gone", "ftjob-rft", "ftjob-missing"], "base_model": "tiny-llama-base"},
        format="json",
    )
    assert response.status_code == 200, response.content
    created, gone, rft, missing = response.json()["data"]

    assert created["status"] == "created" and created["error"] is None
    assert created["not_mapped"] == [
        "model gpt-4o-mini-2024-07-18: recreated on tiny-llama-base",
        "integrations (Weights & Biases): not offered here; metrics are in the job's events",
    ]
    job = Job.objects.get(public_id=created["fine_tuning_job_id"])
    assert job.model_name == "tiny-llama-base" and job.request["suffix"] == "support-bot"
    assert job.metadata == {
        "openai_job_id": "ftjob-abc",
        "openai_model": "ft:gpt-4o-mini-2024-07-18:acme:support-bot:AbC123",
    }
    # "auto" stays ours to choose; the rest carries over as given (1.5 × the base's learning rate)
    assert job.request["method"]["supervised"]["hyperparameters"] == {
        "n_epochs": 2,
        "learning_rate_multiplier": 1.5,
    }
    assert job.hyperparameters["learning_rate"] == pytest.approx(1.5 * job.request["base_learning_rate"])
    training = File.objects.get(public_id=created["training_file_id"])
    assert training.filename == "support.jsonl" and training.content.read() == CHATS
    # validated as any upload; the job waits for it and then runs
    wait_for(lambda: File.objects.get(pk=training.pk).status == FileStatus.PROCESSED, timeout=30)
    wait_for(
        lambda: (
            Job.objects.get(pk=job.pk).status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.QUEUED)
        ),
        timeout=30,
    )

    assert gone == {
        "openai_job_id": "ftjob-gone",
        "status": "skipped",
        "error": {
            "code": "file_not_found",
            "message": "The training file file-deleted no longer exists at OpenAI (it was deleted); upload the data "
            "here and start the job yourself.",
            "param": None,
        },
    }
    assert rft["status"] == "skipped" and rft["error"]["code"] == "not_mappable"
    assert rft["error"]["message"].startswith(
        "ftjob-rft is a reinforcement fine-tune, which is not offered here"
    )
    assert missing["error"]["message"] == "OpenAI has no fine-tuning job ftjob-missing in this organization."
    assert Job.objects.count() == 1


def test_an_import_needs_the_organizations_own_key(api: Any, settings: Any) -> None:
    settings.OPENAI_API_KEY = "sk-platform"  # the platform's key is never used to read an account
    response = api.post("/v1/imports/openai", {"jobs": ["ftjob-1"], "base_model": "x"}, format="json")
    assert error_of(response) == (
        400,
        "Importing reads your OpenAI account with your organization's own OpenAI key: add it under Settings, "
        "then try again.",
        None,
    )


def test_a_bad_import_request_is_refused(api: Any, account: tuple[FakeAccount, FakeOpenAI]) -> None:
    response = api.post("/v1/imports/openai", {"jobs": [], "base_model": "x"}, format="json")
    assert error_of(response) == (
        400,
        "jobs must be a list of 1 to 20 OpenAI fine-tuning job ids (ftjob-…).",
        "jobs",
    )
    assert error_of(api.post("/v1/imports/openai", {"jobs": ["ftjob-1"]}, format="json")) == (
        400,
        "Missing required parameter: 'base_model'.",
        "base_model",
    )
