"""A batch is held to the plan as requests are: its models, the spend cap (chunk by chunk, billed as
it runs), the number of batches at once, and the tokens per minute. Each test performs a way a
batch used to get work without paying, and shows it no longer does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from apps.billing import ratelimit
from apps.billing.models import Plan, UsageRecord
from apps.jobs import inference
from apps.jobs.models import Job, JobStatus
from apps.jobs.queue import RUN_BATCH, RUN_PROXY_BATCH, task_for
from tests.api.test_proxy import NO_KEY
from tests.conftest import Worker, billed, purge_queues, use_plan, wait_for, worker_env
from tests.dashboard.test_batches import processed_file
from tests.fake_openai import FakeOpenAI

OPENAI = "openai:gpt-4o-mini"


def request_line(
    custom_id: str, model: str = "tiny-gpt2", text: str = "hello", max_tokens: int = 4
) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def batch_file(project: Any, lines: list[dict[str, Any]]) -> Any:
    return processed_file(
        project, "requests.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode(), "batch"
    )


def create(api: Any, file: Any) -> Any:
    return api.post(
        "/v1/batches",
        {"input_file_id": file.public_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        format="json",
    )


def lines_of(api: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    data = b"".join(api.get(f"/v1/files/{file_id}/content").streaming_content)
    return [json.loads(line) for line in data.splitlines()]


def finished(api: Any, batch_id: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (b := api.get(f"/v1/batches/{batch_id}").json())["status"] in ("completed", "failed", "cancelled")
            and b
        ),
        timeout=timeout,
    )


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def proxy_worker(fake: FakeOpenAI, queues: str = "gpu,serve,default") -> Worker:
    """A worker whose proxy calls the fake. It consumes what is already queued: tests that use it
    purge the queues when they start, before they submit."""
    return Worker(
        queues=queues,
        env=worker_env(
            {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-platform-1", "OPENAI_API_KEY_FILE": ""}
        ),
    )


# --- Submission --------------------------------------------------------------------------------------
def test_a_free_organization_cannot_batch_openai_models(api: Any, alice_project: Any, catalog: None) -> None:
    # given a file of openai:* requests, which the Free plan does not include
    file = batch_file(alice_project, [request_line("a", OPENAI), request_line("b", OPENAI)])
    # when alice submits it as a batch
    response = create(api, file)
    # then it is refused before it starts, naming the model, and no job exists
    assert response.status_code == 403
    assert response.json()["error"] == {
        "message": f"The Free plan does not include '{OPENAI}', which requests in {file.public_id} call. "
        "Upgrade under Billing, or leave those requests out.",
        "type": "invalid_request_error",
        "param": "input_file_id",
        "code": "model_not_allowed",
    }
    assert not Job.objects.exists()


def test_batches_at_once_are_capped_by_the_plan(api: Any, alice_project: Any, tiny_chat: Any) -> None:
    assert Plan.objects.get(slug="free").concurrent_batches == 1
    file = batch_file(alice_project, [request_line("a")])
    assert create(api, file).status_code == 200
    second = create(api, file)
    assert second.status_code == 429
    assert second.headers["x-should-retry"] == "false"
    assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert second.json()["error"]["message"] == (
        "You have 1 batch(es) running or queued, the most the Free plan allows at once. Wait for one to "
        "finish, cancel one, or upgrade under Billing."
    )
    # once the first ends, a new one fits
    Job.objects.update(status=JobStatus.CANCELLED)
    assert create(api, file).status_code == 200


def test_a_batch_is_refused_when_work_in_progress_holds_the_rest_of_the_cap(
    api: Any, alice_org: Any, alice_project: Any, tiny_chat: Any
) -> None:
    from apps.billing.quotas import subscription_for

    subscription = subscription_for(alice_org)
    subscription.spend_limit = 2_000_000
    subscription.save(update_fields=["spend_limit"])
    # requests in flight hold the whole allowance
    Job.objects.create(
        kind="generation",
        organization=alice_org,
        project=alice_project,
        model_name="tiny-gpt2",
        status=JobStatus.RUNNING,
        reserved_cost=2_000_000,
    )
    response = create(api, batch_file(alice_project, [request_line("a")]))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert response.json()["error"]["message"] == (
        "This month's allowance of $2.00 is taken: $0.00 spent and $2.00 held by fine-tunes, batches and "
        "requests in progress. Retry when they finish, raise your spend limit under Billing, or upgrade."
    )


@pytest.mark.integration
def test_a_batch_of_openai_requests_runs_without_a_gpu_worker(
    transactional_db: None, api: Any, pro: Any, alice_project: Any, upstream: FakeOpenAI
) -> None:
    purge_queues()
    # given a Pro organization's batch whose every request goes to OpenAI
    file = batch_file(alice_project, [request_line(str(i), OPENAI) for i in range(12)])
    response = create(api, file)
    assert response.status_code == 200, response.content
    job = Job.objects.get(public_id=response.json()["id"])
    assert job.model_name == OPENAI and task_for(job) == RUN_PROXY_BATCH
    # when only a worker without the gpu queue runs
    worker = proxy_worker(upstream, queues="default")
    try:
        done = finished(api, job.public_id)
    finally:
        worker.stop()
    # then the batch ran there, every request proxied and billed once
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert len(upstream.requests) == 12
    job.refresh_from_db()
    assert billed(job) == {
        "input_tokens": done["usage"]["input_tokens"],
        "output_tokens": done["usage"]["output_tokens"],
    }
    # a batch of local models still goes to the gpu queue
    local = batch_file(alice_project, [request_line("x")])
    assert task_for(Job.objects.get(public_id=create(api, local).json()["id"])) == RUN_BATCH


def test_without_any_openai_key_each_line_fails_saying_where_to_add_one(
    transactional_db: None, api: Any, pro: Any, alice_project: Any, upstream: FakeOpenAI
) -> None:
    purge_queues()
    file = batch_file(alice_project, [request_line(str(i), OPENAI) for i in range(3)])
    job_id = create(api, file).json()["id"]
    worker = Worker(
        queues="default",
        env=worker_env(
            {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "", "OPENAI_API_KEY_FILE": ""}
        ),
    )
    try:
        done = finished(api, job_id)
    finally:
        worker.stop()

    assert done["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    errors = lines_of(api, done["error_file_id"])
    assert {line["custom_id"] for line in errors} == {"0", "1", "2"}
    assert {json.dumps(line["response"]["body"]["error"], sort_keys=True) for line in errors} == {
        json.dumps(
            {
                "code": "provider_not_configured",
                "message": NO_KEY,
                "param": "body.model",
                "type": "invalid_request_error",
            },
            sort_keys=True,
        )
    }
    assert upstream.requests == []


# --- While it runs -----------------------------------------------------------------------------------
@pytest.mark.integration
def test_each_line_is_checked_against_the_plan_when_it_runs(
    transactional_db: None,
    api: Any,
    pro: Any,
    alice_org: Any,
    alice_project: Any,
    upstream: FakeOpenAI,
    tiny_chat: Any,
) -> None:
    purge_queues()
    # given a batch of openai:* requests submitted on Pro, and the organization back on Free before
    # it starts (a downgrade, or a file whose report names no models)
    file = batch_file(alice_project, [request_line(str(i), OPENAI) for i in range(3)])
    response = create(api, file)
    assert response.status_code == 200, response.content
    use_plan(alice_org, "free")
    # when a worker runs it
    worker = proxy_worker(upstream)
    try:
        done = finished(api, response.json()["id"])
    finally:
        worker.stop()
    # then no request reached OpenAI: each line is in the error file with model_not_allowed
    assert upstream.requests == []
    assert done["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    errors = lines_of(api, done["error_file_id"])
    assert [line["response"]["status_code"] for line in errors] == [403, 403, 403]
    assert errors[0]["response"]["body"]["error"] == {
        "message": f"The Free plan does not include '{OPENAI}'. Upgrade under Billing.",
        "type": "invalid_request_error",
        "param": "body.model",
        "code": "model_not_allowed",
    }
    assert not UsageRecord.objects.exists()


@pytest.mark.integration
def test_a_batch_stops_at_the_spend_cap_billed_for_what_ran(
    api: Any, alice_org: Any, alice_project: Any, celery_worker: Worker, tiny_chat: Any
) -> None:
    from apps.billing.quotas import subscription_for

    # given room in the spend limit for about three requests at their largest
    line = request_line("x", text="hello there", max_tokens=4)
    _, parsed = inference.parse_chat(alice_project, line["body"])
    largest = inference.largest_cost(tiny_chat, parsed)
    assert largest > 0
    subscription = subscription_for(alice_org)
    subscription.spend_limit = 3 * largest + largest // 2
    subscription.save(update_fields=["spend_limit"])
    file = batch_file(alice_project, [request_line(f"r{i}", text="hello there") for i in range(20)])
    # when the batch runs
    response = create(api, file)
    assert response.status_code == 200, response.content
    done = finished(api, response.json()["id"])
    # then it stopped with spend_limit_reached, kept what ran, and was billed for exactly that
    assert done["status"] == "failed"
    ran = done["request_counts"]["completed"]
    assert 3 <= ran <= 4 and done["request_counts"]["failed"] == 0
    assert done["errors"]["data"][0]["code"] == "spend_limit_reached"
    assert done["errors"]["data"][0]["message"] == (
        f"The organization's spend limit was reached: the batch stopped after {ran} of 20 requests, billed for "
        "those. Their results are in the output and error files. Raise the limit under Billing and submit the "
        "remaining requests as a new batch."
    )
    assert len(lines_of(api, done["output_file_id"])) == ran
    job = Job.objects.get(public_id=done["id"])
    assert billed(job) == {
        "input_tokens": done["usage"]["input_tokens"],
        "output_tokens": done["usage"]["output_tokens"],
    }
    # never more than the cap plus one request
    assert job.billed_cost <= subscription.spend_limit + largest
    assert job.reserved_cost == 0


@pytest.mark.integration
def test_a_batch_counts_against_the_tokens_per_minute(
    api: Any, alice_org: Any, alice_project: Any, celery_worker: Worker, tiny_chat: Any
) -> None:
    from apps.billing.quotas import subscription_for

    plan = subscription_for(alice_org).plan
    # given a line that alone needs more tokens than the plan allows in a minute
    small, big = request_line("small"), request_line("big", max_tokens=200)
    small_tokens = inference.estimate_tokens(inference.parse_chat(alice_project, small["body"])[1])
    big_tokens = inference.estimate_tokens(inference.parse_chat(alice_project, big["body"])[1])
    Plan.objects.filter(pk=plan.pk).update(tokens_per_minute=150)
    response = create(api, batch_file(alice_project, [small, big]))
    done = finished(api, response.json()["id"])
    # then that line fails with rate_limit_exceeded, and the other's tokens were counted
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    (error,) = lines_of(api, done["error_file_id"])
    assert error["custom_id"] == "big" and error["response"]["status_code"] == 429
    assert error["response"]["body"]["error"]["message"] == (
        f"This request may use {big_tokens} tokens, more than the 150 tokens per minute of the Free plan. Lower "
        "its max_tokens or shorten it, or upgrade under Billing."
    )
    # (the sliding window may already weigh the count less if a minute boundary passed)
    assert ratelimit.peek(f"org:{alice_org.pk}:tokens", 150, 1).remaining >= 150 - small_tokens
    assert ratelimit.peek(f"org:{alice_org.pk}:tokens", 150, 1).remaining < 150
