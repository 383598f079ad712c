"""Import from OpenAI against a local stand-in that speaks OpenAI's fine-tuning and files endpoints:
jobs listed over pages, a job's files copied and validated, the job recreated on an open base with
what could not be carried over, a deleted file and a reinforcement job skipped saying why."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from apps.core.crypto import encrypt
from apps.evals import parity as parity_module
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.models import File, FileStatus
from tests.api.test_evals import error_of
from tests.api.test_sdk_adapters import tiny_llama_base  # noqa: F401  (a fixture)
from tests.conftest import Worker, purge_queues, wait_for, worker_env
from tests.fake_openai import FakeAccount, FakeOpenAI, fine_tuning_job, server_error

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
    assert error_of(api.post("/v1/imports/openai", {"jobs": [".."], "base_model": "x"}, format="json")) == (
        400,
        "jobs must be a list of 1 to 20 OpenAI fine-tuning job ids (ftjob-…).",
        "jobs",
    )
    assert error_of(api.post("/v1/imports/openai", {"jobs": ["ftjob-1"]}, format="json")) == (
        400,
        "Missing required parameter: 'base_model'.",
        "base_model",
    )


def test_an_imported_job_gets_a_parity_eval_that_grades_the_new_model_against_openais_answers(
    api: Any,
    account: tuple[FakeAccount, FakeOpenAI],
    transactional_db: None,
    tiny_llama_base: Any,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    """The old model still answers: its answers to the validation prompts are recorded and graded
    (the baseline), and once the recreated job succeeds its model answers the same prompts in the
    same eval, so the two runs compare criterion by criterion. The Free plan runs one batch or eval run
    at a time: a new model's run that finds the place taken waits for it, then starts."""
    from apps.evals.models import Eval, EvalRun

    purge_queues()
    worker = Worker(env=worker_env({"PARITY_RETRY_SECONDS": "1"}))
    request.addfinalizer(worker.stop)

    state, fake = account
    old = "ft:gpt-4o-mini-2024-07-18:acme:support-bot:AbC123"
    state.add_file("file-train", CHATS, "support.jsonl")
    state.add_file("file-valid", b"".join(CHATS.splitlines(keepends=True)[:4]), "support-valid.jsonl")
    # the old model gets q0 and q2 right, and q1 and q3 wrong
    state.models[old] = lambda messages: (
        "a" + messages[-1]["content"][1:] if messages[-1]["content"] in ("q0", "q2") else "I do not know."
    )
    state.jobs = [
        fine_tuning_job(
            "ftjob-abc",
            "file-train",
            validation_file="file-valid",
            fine_tuned_model=old,
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}},
            },
        )
    ]
    response = api.post(
        "/v1/imports/openai", {"jobs": ["ftjob-abc"], "base_model": "tiny-llama-base"}, format="json"
    )
    assert response.status_code == 200, response.content
    (created,) = response.json()["data"]
    parity = created["parity"]
    job = Job.objects.get(public_id=created["fine_tuning_job_id"])
    assert parity["status"] == "recorded" and parity["rows"] == 4, parity
    assert parity["message"] == (
        f"4 answers of {old} recorded from the validation file. When {job.public_id} succeeds, its model is "
        "run on the same prompts in this eval; compare the two runs to see where it is worse."
    )
    chats = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert sorted(r.body["messages"][-1]["content"] for r in chats) == ["q0", "q1", "q2", "q3"]
    assert {r.body["model"] for r in chats} == {old} and {r.body["temperature"] for r in chats} == {0}
    assert {r.headers["authorization"] for r in chats} == {f"Bearer {ORG_KEY}"}
    eval = Eval.objects.get(public_id=parity["eval_id"])
    assert eval.name == f"Parity with {old}"
    assert eval.metadata == {"openai_job_id": "ftjob-abc", "fine_tuning_job_id": job.public_id}

    # the baseline: OpenAI's answers match themselves, and the reference half the time
    baseline = api.get(f"/v1/evals/{eval.public_id}/runs/{parity['openai_run_id']}")
    wait_for(lambda: api.get(baseline.wsgi_request.path).json()["status"] == "completed", timeout=60)
    shown = api.get(baseline.wsgi_request.path).json()
    assert shown["name"] == f"{old} (answers recorded at OpenAI)"
    assert shown["result_counts"] == {"errored": 0, "failed": 2, "passed": 2, "total": 4}
    by_name = {r["testing_criteria"].rsplit("-", 5)[0]: r for r in shown["per_testing_criteria_results"]}
    assert (
        by_name["Matches the reference answer"]["passed"],
        by_name["Matches OpenAI's answer"]["passed"],
    ) == (
        2,
        4,
    )

    # the recreated job trains; at its success a batch holds the plan's one place, so the new
    # model's run waits, and starts once the place frees
    blocker = Job.objects.create(
        kind=JobKind.BATCH,
        organization=job.organization,
        project=job.project,
        model_name="tiny-llama-base",
        request={},
        status=JobStatus.QUEUED,
        published_at=timezone.now(),
    )
    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED, timeout=180)
    job.refresh_from_db()
    waiting = wait_for(lambda: job.events.filter(message__contains="waits for a place").first(), timeout=30)
    assert re.fullmatch(
        f"The parity run on {eval.public_id} waits for a place: You have [12] batch\\(es\\) running or "
        "queued, the most the Free plan allows at once.",
        waiting.message,
    ), waiting.message
    assert EvalRun.objects.filter(eval=eval).count() == 1
    Job.objects.filter(pk=blocker.pk).update(status=JobStatus.CANCELLED)
    wait_for(lambda: EvalRun.objects.filter(eval=eval).count() == 2, timeout=30)
    new = EvalRun.objects.filter(eval=eval).exclude(job__public_id=parity["openai_run_id"]).get()
    assert new.job.model_name == job.fine_tuned_model.name
    assert new.name == f"{job.fine_tuned_model.name} (this fine-tune)"
    assert job.events.filter(
        message=f"Parity run {new.job.public_id} started on {eval.public_id}: the new model answers the prompts "
        "OpenAI's model answered."
    ).exists()
    # started once: a second try (a redelivered task) finds it started
    assert (
        parity_module.start_new_model_run(Job.objects.select_related("fine_tuned_model").get(pk=job.pk))
        == "none"
    )
    assert EvalRun.objects.filter(eval=eval).count() == 2
    path = f"/v1/evals/{eval.public_id}/runs/{new.job.public_id}"
    wait_for(lambda: api.get(path).json()["status"] in ("completed", "failed"), timeout=120)
    run = api.get(path).json()
    assert run["status"] == "completed", run
    assert run["result_counts"]["total"] == 4 and run["result_counts"]["errored"] == 0, [
        (i["status"], i["sample"]) for i in api.get(f"{path}/output_items").json()["data"]
    ]
    items = api.get(f"{path}/output_items").json()["data"]
    assert sorted(i["datasource_item"]["messages"][-1]["content"] for i in items) == ["q0", "q1", "q2", "q3"]
    assert all(i["sample"]["model"] == job.fine_tuned_model.name for i in items)


def test_a_shut_down_model_or_a_job_without_one_gets_no_parity_eval_and_says_why(
    api: Any,
    account: tuple[FakeAccount, FakeOpenAI],
    tiny_llama_base: Any,  # noqa: F811
) -> None:
    from apps.evals.models import Eval

    state, fake = account
    state.add_file("file-train", CHATS, "support.jsonl")
    state.jobs = [
        fine_tuning_job("ftjob-old", "file-train", fine_tuned_model="ft:gpt-3.5-turbo-0125:acme::Old1"),
        fine_tuning_job("ftjob-failed", "file-train", status="failed"),
    ]

    def imported(job_id: str) -> dict[str, Any]:
        response = api.post(
            "/v1/imports/openai", {"jobs": [job_id], "base_model": "tiny-llama-base"}, format="json"
        )
        assert response.status_code == 200, response.content
        (result,) = response.json()["data"]
        assert result["status"] == "created", result
        # the Free plan trains one job at a time: this one is stopped to make room for the next
        Job.objects.filter(public_id=result["fine_tuning_job_id"]).update(status=JobStatus.CANCELLED)
        return result

    assert imported("ftjob-failed")["parity"]["message"] == (
        "ftjob-failed made no model (failed): there is none to compare."
    )
    assert imported("ftjob-old")["parity"] == {
        "status": "skipped",
        "eval_id": None,
        "openai_run_id": None,
        "rows": 0,
        "message": "ft:gpt-3.5-turbo-0125:acme::Old1 no longer answers at OpenAI (it was shut down or deleted).",
    }
    # a model that fails, and a file whose answers are all tool calls, say so too
    state.models["ft:gpt-4o-mini:acme::Down1"] = lambda messages: server_error()
    state.jobs.append(
        fine_tuning_job("ftjob-down", "file-train", fine_tuned_model="ft:gpt-4o-mini:acme::Down1")
    )
    down = imported("ftjob-down")["parity"]["message"]
    assert down.startswith("ft:gpt-4o-mini:acme::Down1 could not be asked at OpenAI: Error code: 500"), down
    tools = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
    }
    state.add_file("file-tools", (json.dumps(tools) + "\n").encode() * 12, "tools.jsonl")
    state.models["ft:gpt-4o-mini:acme::Tools1"] = lambda messages: "unused"
    state.jobs.append(
        fine_tuning_job(
            "ftjob-tools",
            "file-train",
            validation_file="file-tools",
            fine_tuned_model="ft:gpt-4o-mini:acme::Tools1",
        )
    )
    assert imported("ftjob-tools")["parity"]["message"] == (
        "The validation file has no chat rows with a text answer to compare."
    )
    # one question asked of the shut-down model, from the training file as there was no validation file
    chats = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert [(r.body["model"], r.body["messages"]) for r in chats] == [
        ("ft:gpt-3.5-turbo-0125:acme::Old1", [{"role": "user", "content": "q0"}]),
        ("ft:gpt-4o-mini:acme::Down1", [{"role": "user", "content": "q0"}]),
    ]
    assert not Eval.objects.exists()


def test_files_are_listed_over_every_page_and_the_chosen_ones_copied(
    api: Any, account: tuple[FakeAccount, FakeOpenAI], celery_worker: Any
) -> None:
    """A team that wants its data without its jobs: the organization's fine-tune files, every page,
    the chosen ones copied and validated as uploads; a deleted one skipped saying so."""
    state, fake = account
    for i in range(120):
        state.add_file(f"file-{i:03d}", CHATS, f"set-{i:03d}.jsonl")
    state.add_file("file-assistant", b"{}", "notes.txt", purpose="assistants")
    listed = api.get("/v1/imports/openai/files")
    assert listed.status_code == 200, listed.content
    data = listed.json()["data"]
    assert [f["id"] for f in data] == [f"file-{i:03d}" for i in reversed(range(120))]  # newest first
    assert data[0] == {
        "id": "file-119",
        "filename": "set-119.jsonl",
        "bytes": len(CHATS),
        "purpose": "fine-tune",
        "status": "processed",
        "created_at": data[0]["created_at"],
    }
    assert len([r for r in fake.requests if r.path.startswith("/v1/files?")]) == 2  # two pages

    response = api.post(
        "/v1/imports/openai/files", {"files": ["file-007", "file-gone", "file-007"]}, format="json"
    )
    assert response.status_code == 200, response.content
    copied, gone = response.json()["data"]
    file = File.objects.get(public_id=copied["file_id"])
    assert copied == {
        "openai_file_id": "file-007",
        "status": "copied",
        "file_id": file.public_id,
        "error": None,
    }
    assert file.filename == "set-007.jsonl" and file.purpose == "fine-tune" and file.content.read() == CHATS
    wait_for(lambda: File.objects.get(pk=file.pk).status == FileStatus.PROCESSED, timeout=30)
    assert gone == {
        "openai_file_id": "file-gone",
        "status": "skipped",
        "file_id": None,
        "error": {
            "code": "file_not_found",
            "message": "The file file-gone no longer exists at OpenAI (it was deleted).",
            "param": None,
        },
    }
    assert File.objects.count() == 1


def test_a_bad_file_copy_request_is_refused(api: Any, account: tuple[FakeAccount, FakeOpenAI]) -> None:
    message = "files must be a list of 1 to 20 OpenAI file ids (file-…)."
    for body in (
        {"files": []},
        {"files": "file-1"},
        {"files": [""]},
        {"files": [f"file-{i}" for i in range(21)]},
    ):
        assert error_of(api.post("/v1/imports/openai/files", body, format="json")) == (400, message, "files")
    assert error_of(api.post("/v1/imports/openai/files", {"files": ["file-1"], "x": 1}, format="json")) == (
        400,
        "Unrecognized request argument supplied: x",
        "x",
    )
    assert not File.objects.exists()


def test_only_plain_chat_rows_become_parity_prompts() -> None:
    """The copied file is validated after the import reads it: odd rows are passed over, not fatal."""
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"content": "no role"}, {"role": "assistant", "content": "a"}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "parts"}]},
                {"role": "assistant", "content": "a"},
            ]
        },
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "c"}]}]},
        {"messages": [{"role": "user", "content": "q"}]},
        {
            "input": {"messages": [{"role": "user", "content": "dpo q"}]},
            "preferred_output": [{"role": "assistant", "content": "good"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}],
        },
        [1, 2],
    ]
    content = "\n".join(json.dumps(row) for row in rows).encode() + b"\n" + b"[" * 100_000 + b"\nnot json\n"
    assert parity_module.prompts(content) == [
        ([{"role": "user", "content": "q"}], "a"),
        ([{"role": "user", "content": "dpo q"}], "good"),
    ]


def test_an_outage_midway_keeps_what_was_imported_and_says_what_was_not(
    api: Any,
    account: tuple[FakeAccount, FakeOpenAI],
    tiny_llama_base: Any,  # noqa: F811
) -> None:
    state, fake = account
    state.add_file("file-train", CHATS, "support.jsonl")
    state.jobs = [fine_tuning_job("ftjob-a", "file-train"), fine_tuning_job("ftjob-c", "file-train")]
    answer = fake.responder
    fake.responder = lambda path, body: server_error() if path.endswith("/ftjob-down") else answer(path, body)
    response = api.post(
        "/v1/imports/openai",
        {"jobs": ["ftjob-a", "ftjob-down", "ftjob-c"], "base_model": "tiny-llama-base"},
        format="json",
    )
    assert response.status_code == 200, response.content
    done, down, untried = response.json()["data"]
    assert done["status"] == "created" and Job.objects.filter(public_id=done["fine_tuning_job_id"]).exists()
    for row, job_id in ((down, "ftjob-down"), (untried, "ftjob-c")):
        assert row["openai_job_id"] == job_id and row["status"] == "skipped"
        assert row["error"]["code"] == "upstream_unavailable"
        assert row["error"]["message"].startswith("OpenAI could not be reached or answered with an error: ")
