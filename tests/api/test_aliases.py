"""Model aliases: names resolved at call time, moved only when an eval passes when gated, every move
recorded, rollback in one call; protected aliases for owners and admins; outsiders get 404."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.evals.models import Eval, EvalRun
from apps.jobs.inference import find_model
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.actions import create_api_key
from apps.registry.models import AliasMove, Model, ModelAlias
from tests.api.test_evals import create_eval, error_of
from tests.conftest import wait_for


@pytest.fixture
def tiny_llama(db: None, tiny_llama_dir: Path) -> Any:
    return Model.objects.create(
        name="tiny-llama",
        task="generation",
        artifact_key=f"local:{tiny_llama_dir}",
        context_length=256,
        limits={"servable": True},
    )


def finished_run(
    evaluation: Eval, model: str, passed: int, total: int, status: str = JobStatus.SUCCEEDED
) -> str:
    """A run as its worker leaves it (the worker's side is tested in test_eval_runs and test_sdk_evals)."""
    job = Job.objects.create(
        kind=JobKind.EVAL_RUN,
        organization=evaluation.project.organization,
        project=evaluation.project,
        model_name=model,
        status=status,
        request={"eval_id": evaluation.public_id, "data_source": {"type": "completions"}},
        result={"result_counts": {"passed": passed, "failed": total - passed, "errored": 0, "total": total}},
        finished_at=timezone.now(),
    )
    EvalRun.objects.create(eval=evaluation, job=job, name=model)
    return job.public_id


def key_client(project: Any, user: Any) -> APIClient:
    _, raw = create_api_key(project, "key", user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_an_alias_names_a_model_until_it_moves_and_rolls_back(
    api: Any, alice_project: Any, tiny_chat: Any, tiny_llama: Any
) -> None:
    created = api.post("/v1/aliases", {"name": "bot@prod", "model": "tiny-gpt2"}, format="json")
    assert created.status_code == 200, created.content
    assert created.json() | {"created_at": 0, "updated_at": 0} == {
        "object": "model.alias",
        "name": "bot@prod",
        "model": "tiny-gpt2",
        "protected": False,
        "gate": None,
        "created_at": 0,
        "updated_at": 0,
    }
    assert find_model(alice_project, "bot@prod").name == "tiny-gpt2"

    moved = api.post("/v1/aliases/bot@prod/move", {"model": "tiny-llama"}, format="json").json()
    assert moved["model"] == "tiny-llama" and find_model(alice_project, "bot@prod").name == "tiny-llama"
    back = api.post("/v1/aliases/bot@prod/rollback").json()
    assert back["model"] == "tiny-gpt2" and find_model(alice_project, "bot@prod").name == "tiny-gpt2"
    history = api.get("/v1/aliases/bot@prod/moves").json()["data"]
    assert [(m["kind"], m["from_model"], m["to_model"]) for m in history] == [
        ("rollback", "tiny-llama", "tiny-gpt2"),
        ("move", "tiny-gpt2", "tiny-llama"),
        ("create", None, "tiny-gpt2"),
    ]
    assert {m["moved_by"] for m in history} == {"alice@example.com"}
    assert [a["name"] for a in api.get("/v1/aliases").json()["data"]] == ["bot@prod"]

    # its model deleted, the alias answers why until it is moved
    tiny_chat.delete()
    with pytest.raises(Exception) as refused:
        find_model(alice_project, "bot@prod")
    assert (
        str(refused.value)
        == "The alias 'bot@prod' points to a model that was deleted; move it to another model."
    )
    assert api.delete("/v1/aliases/bot@prod").json() == {
        "object": "model.alias.deleted",
        "name": "bot@prod",
        "deleted": True,
    }
    assert not AliasMove.objects.exists()


@pytest.mark.parametrize(
    ("body", "message", "param", "status"),
    [
        (
            {"name": "prod", "model": "tiny-gpt2"},
            "name must be a name and a label joined by @, such as 'support-bot@prod': lowercase letters, digits, "
            "'.', '_' and '-', at most 31 characters each.",
            "name",
            400,
        ),
        (
            {"name": "bot@prod", "model": "nope"},
            "The model 'nope' does not exist or you do not have access to it.",
            "model",
            404,
        ),
        (
            {"name": "bot@prod", "model": "bot@dev"},
            "An alias points to a model, not to another alias.",
            "model",
            400,
        ),
        (
            {"name": "bot@prod", "model": "tiny-gpt2", "gate": {"eval_id": "eval_nope"}},
            "gate.eval_id: no such eval in this project: 'eval_nope'.",
            "gate.eval_id",
            400,
        ),
        (
            {"name": "bot@prod", "model": "tiny-gpt2", "protected": "yes"},
            "protected must be true or false.",
            "protected",
            400,
        ),
    ],
)
def test_a_bad_alias_is_refused(
    api: Any, tiny_chat: Any, body: dict[str, Any], message: str, param: str, status: int
) -> None:
    assert error_of(api.post("/v1/aliases", body, format="json")) == (status, message, param)
    assert not ModelAlias.objects.exists()


def test_a_second_alias_of_the_same_name_is_refused(api: Any, tiny_chat: Any) -> None:
    api.post("/v1/aliases", {"name": "bot@prod", "model": "tiny-gpt2"}, format="json")
    again = api.post("/v1/aliases", {"name": "bot@prod", "model": "tiny-gpt2"}, format="json")
    assert error_of(again) == (400, "The alias 'bot@prod' already exists in this project.", "name")


def test_a_gated_alias_moves_only_on_a_run_that_passes(
    api: Any, alice_project: Any, tiny_chat: Any, tiny_llama: Any
) -> None:
    evaluation = Eval.objects.get(public_id=create_eval(api)["id"])
    gate = {"eval_id": evaluation.public_id, "min_pass_rate": 0.8, "not_worse": True}
    api.post("/v1/aliases", {"name": "bot@prod", "model": "tiny-gpt2", "gate": gate}, format="json")

    def move(run_id: Any) -> Any:
        return api.post("/v1/aliases/bot@prod/move", {"model": "tiny-llama", "run_id": run_id}, format="json")

    no_run = move(None)
    assert error_of(no_run) == (
        400,
        f"The alias 'bot@prod' moves only with a run of eval {evaluation.public_id} that tiny-llama passed: give its "
        "run_id.",
        "run_id",
    )
    weak = finished_run(evaluation, "tiny-llama", 3, 5)
    assert error_of(move(weak)) == (
        400,
        f"Run {weak} passed 60.0% of its items (3 of 5); 'bot@prod' needs 80.0%.",
        "run_id",
    )
    other = finished_run(evaluation, "tiny-gpt2", 5, 5)
    assert error_of(move(other)) == (400, f"Run {other} sampled tiny-gpt2, not tiny-llama.", "run_id")
    running = finished_run(evaluation, "tiny-llama", 5, 5, status=JobStatus.RUNNING)
    assert error_of(move(running)) == (
        400,
        f"Run {running} has not completed; an alias moves only on a completed run.",
        "run_id",
    )
    # 90% passes the threshold but not the current model's 100% in its latest run
    good = finished_run(evaluation, "tiny-llama", 9, 10)
    assert error_of(move(good)) == (
        400,
        f"Run {good} passed 90.0% (9 of 10), worse than tiny-gpt2's 100.0% (5 of 5) in run {other}.",
        "run_id",
    )
    best = finished_run(evaluation, "tiny-llama", 10, 10)
    assert move(best).json()["model"] == "tiny-llama"
    assert AliasMove.objects.filter(kind="move").get().run_id == best
    assert find_model(alice_project, "bot@prod").name == "tiny-llama"


def test_not_worse_needs_a_run_of_the_current_model(api: Any, tiny_chat: Any, tiny_llama: Any) -> None:
    evaluation = Eval.objects.get(public_id=create_eval(api)["id"])
    gate = {"eval_id": evaluation.public_id, "min_pass_rate": 0.5, "not_worse": True}
    api.post("/v1/aliases", {"name": "bot@prod", "model": "tiny-gpt2", "gate": gate}, format="json")
    run = finished_run(evaluation, "tiny-llama", 5, 5)
    refused = api.post("/v1/aliases/bot@prod/move", {"model": "tiny-llama", "run_id": run}, format="json")
    assert error_of(refused) == (
        400,
        f"'bot@prod' moves only to a model no worse than tiny-gpt2 on eval {evaluation.public_id}, and tiny-gpt2 "
        "has no completed run of it: run the eval on tiny-gpt2 first.",
        "run_id",
    )


def test_a_protected_alias_is_for_owners_and_admins(
    api: Any, alice_project: Any, bob: Any, tiny_chat: Any, tiny_llama: Any
) -> None:
    api.post("/v1/aliases", {"name": "bot@prod", "model": "tiny-gpt2", "protected": True}, format="json")
    member = key_client(alice_project, bob)
    for path, body in [
        ("/v1/aliases/bot@prod/move", {"model": "tiny-llama"}),
        ("/v1/aliases/bot@prod/rollback", None),
        ("/v1/aliases/bot@prod", {"protected": False}),
    ]:
        response = member.post(path, body, format="json")
        assert response.status_code == 403, path
    refused = member.delete("/v1/aliases/bot@prod")
    assert error_of(refused) == (
        403,
        "Only owners and admins can delete the protected alias 'bot@prod'.",
        None,
    )
    made = member.post(
        "/v1/aliases", {"name": "bot@dev", "model": "tiny-gpt2", "protected": True}, format="json"
    )
    assert error_of(made) == (403, "Only owners and admins can create a protected alias.", None)
    # a member reads it and calls through it, and moves a free one
    assert member.get("/v1/aliases/bot@prod").json()["model"] == "tiny-gpt2"
    member.post("/v1/aliases", {"name": "bot@dev", "model": "tiny-gpt2"}, format="json")
    assert (
        member.post("/v1/aliases/bot@dev/move", {"model": "tiny-llama"}, format="json").json()["model"]
        == "tiny-llama"
    )
    assert ModelAlias.objects.get(name="bot@prod").model == tiny_chat


def test_an_outsider_gets_404_and_cannot_name_anothers_alias(
    api: Any, carol_api: Any, carol_project: Any, tiny_chat: Any
) -> None:
    api.post("/v1/aliases", {"name": "bot@prod", "model": "tiny-gpt2"}, format="json")
    for method, path in [
        ("get", "/v1/aliases/bot@prod"),
        ("post", "/v1/aliases/bot@prod"),
        ("delete", "/v1/aliases/bot@prod"),
        ("post", "/v1/aliases/bot@prod/move"),
        ("post", "/v1/aliases/bot@prod/rollback"),
        ("get", "/v1/aliases/bot@prod/moves"),
    ]:
        response = getattr(carol_api, method)(
            path, {"model": "tiny-gpt2"} if method == "post" else None, format="json"
        )
        assert error_of(response) == (404, "No such alias: 'bot@prod'.", "id"), (method, path)
    assert carol_api.get("/v1/aliases").json()["data"] == []
    # carol's project has no such alias: for her the name is no model at all
    with pytest.raises(Exception, match="The model 'bot@prod' does not exist"):
        find_model(carol_project, "bot@prod")


def test_a_batch_runs_on_the_model_its_alias_named_when_it_was_made(
    api: Any, alice_project: Any, tiny_chat: Any, tiny_llama: Any, celery_worker: Any
) -> None:
    from tests.api.test_batches import chat_line, upload_batch

    api.post("/v1/aliases", {"name": "bot@prod", "model": "tiny-gpt2"}, format="json")
    file_id = upload_batch(
        api, [chat_line("a", "hello", model="bot@prod"), chat_line("b", "hi", model="bot@prod")]
    )
    wait_for(lambda: api.get(f"/v1/files/{file_id}").json()["status"] == "processed", timeout=30)
    # moved right after the batch is made: the batch keeps the model it was made for
    batch = api.post(
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        format="json",
    ).json()
    api.post("/v1/aliases/bot@prod/move", {"model": "tiny-llama"}, format="json")
    done = wait_for(
        lambda: (b := api.get(f"/v1/batches/{batch['id']}").json())["status"] == "completed" and b, timeout=60
    )
    assert done["model"] == "tiny-gpt2"
    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
