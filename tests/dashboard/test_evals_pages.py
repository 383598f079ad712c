"""Evals pages: the list, an eval with its criteria and runs, a run's report (pass rates, items,
filters, live status, cancel), two runs side by side, and outsiders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.evals.actions import create_eval
from apps.evals.models import Eval, EvalOutputItem, EvalRun
from apps.evals.parsing import parse_eval
from apps.jobs.models import Job, JobKind, JobStatus
from apps.registry.models import Model
from tests.conftest import login
from tests.dashboard.test_content_security_policy import problems

JUDGE = "judge-chat"
TEMPLATE = [{"role": "user", "content": "Label this ticket: {{item.ticket}}"}]
TICKETS = [
    {"ticket": "I was charged twice", "label": "billing"},
    {"ticket": "The app crashes <b>now</b>", "label": "bug"},
    {"ticket": "Love the new look", "label": "praise"},
]


def url(project: Any, path: str = "") -> str:
    return f"/projects/{project.public_id}/evals/{path}"


def run_url(project: Any, run: EvalRun, path: str = "") -> str:
    return url(project, f"{run.eval.public_id}/runs/{run.job.public_id}/{path}")


@pytest.fixture
def judge(db: None) -> Model:
    return Model.objects.create(name=JUDGE, task="generation", limits={"servable": True})


def make_eval(project: Any, user: Any, name: str = "Ticket triage") -> Eval:
    body = {
        "name": name,
        "data_source_config": {
            "type": "custom",
            "item_schema": {
                "type": "object",
                "properties": {"ticket": {"type": "string"}, "label": {"type": "string"}},
                "required": ["ticket", "label"],
            },
            "include_sample_schema": True,
        },
        "testing_criteria": [
            {
                "type": "string_check",
                "name": "Right label",
                "input": "{{sample.output_text}}",
                "reference": "{{item.label}}",
                "operation": "ilike",
            },
            {
                "type": "score_model",
                "name": "Polite",
                "model": JUDGE,
                "input": [{"role": "user", "content": "How polite is {{sample.output_text}}?"}],
                "pass_threshold": 0.5,
            },
        ],
    }
    return create_eval(project, parse_eval(project, body), user)


def judged(score: float, conclusion: str) -> dict[str, Any]:
    """A judge's sample, as the score_model grader keeps it."""
    answer = {"steps": [{"description": "Read the reply.", "conclusion": conclusion}], "result": score}
    return {
        "input": [{"role": "user", "content": "How polite is it?"}],
        "output": [{"role": "assistant", "content": json.dumps(answer)}],
        "model": JUDGE,
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14, "cached_tokens": 0},
    }


def result(evaluation: Eval, index: int, score: float, passed: bool, **extra: Any) -> dict[str, Any]:
    criterion = evaluation.testing_criteria[index]
    return {
        "name": criterion["name"],
        "type": criterion["type"],
        "id": criterion["id"],
        "score": score,
        "passed": passed,
        "sample": None,
        **extra,
    }


def sample(index: int, answer: str | None, error: str = "") -> dict[str, Any]:
    """A completions run's item sample, as the worker writes it."""
    return {
        "input": [{"role": "user", "content": f"Label this ticket: {TICKETS[index]['ticket']}"}],
        "output": [] if answer is None else [{"role": "assistant", "content": answer}],
        "model": "tiny-chat",
        "usage": {"total_tokens": 12, "completion_tokens": 2, "prompt_tokens": 10, "cached_tokens": 0},
        "error": {"code": "context_length_exceeded", "message": error} if error else None,
    }


def make_run(
    evaluation: Eval,
    name: str,
    items: list[dict[str, Any]],
    *,
    user: Any = None,
    status: str = JobStatus.SUCCEEDED,
    progress: dict[str, Any] | None = None,
    data_source: dict[str, Any] | None = None,
) -> EvalRun:
    """A run with its job and output items. A finished one has the result its worker would leave:
    the counts of its items, overall and per criterion."""
    counts = {"passed": 0, "failed": 0, "errored": 0}
    tallies = {c["id"]: {"passed": 0, "failed": 0} for c in evaluation.testing_criteria}
    for item in items:
        counts[{"pass": "passed", "fail": "failed", "error": "errored"}[item["status"]]] += 1
        for graded in item["results"]:
            tallies[graded["id"]]["passed" if graded["passed"] else "failed"] += 1
    finished = status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    source = data_source or {
        "type": "completions",
        "model": "tiny-chat",
        "input_messages": {"type": "template", "template": TEMPLATE},
        "source": {"type": "file_content", "content": [{"item": ticket} for ticket in TICKETS]},
        "sampling_params": {"temperature": 0.2},
    }
    job = Job.objects.create(
        kind=JobKind.EVAL_RUN,
        organization=evaluation.project.organization,
        project=evaluation.project,
        created_by=user,
        model_name="tiny-chat" if source["type"] == "completions" else "",
        status=status,
        request={"eval_id": evaluation.public_id, "data_source": source, "local": True},
        progress=progress or {"total": len(items), "completed": len(items)},
        result={
            "result_counts": {**counts, "total": len(items)},
            "per_testing_criteria_results": [
                {"testing_criteria": key, **value} for key, value in tallies.items()
            ],
            "per_model_usage": [
                {
                    "model_name": "tiny-chat",
                    "invocation_count": len(items),
                    "prompt_tokens": 30,
                    "completion_tokens": 6,
                    "total_tokens": 36,
                    "cached_tokens": 0,
                }
            ],
        }
        if finished
        else None,
        finished_at=timezone.now() if finished else None,
    )
    run = EvalRun.objects.create(eval=evaluation, job=job, name=name)
    EvalOutputItem.objects.bulk_create(
        [
            EvalOutputItem(
                run=run, datasource_item=TICKETS[item["datasource_item_id"] % len(TICKETS)], **item
            )
            for item in items
        ]
    )
    return run


def baseline_items(evaluation: Eval) -> list[dict[str, Any]]:
    """1 of 3 passed: a right label, a wrong one, and an item the model could not answer."""
    return [
        {
            "datasource_item_id": 0,
            "status": "pass",
            "results": [
                result(evaluation, 0, 1.0, True),
                result(evaluation, 1, 0.9, True, sample=judged(0.9, "Courteous and direct.")),
            ],
            "sample": sample(0, "billing"),
        },
        {
            "datasource_item_id": 1,
            "status": "fail",
            "results": [
                result(evaluation, 0, 0.0, False),
                result(evaluation, 1, 0.8, True, sample=judged(0.8, "Polite enough.")),
            ],
            "sample": sample(1, "praise <script>alert(1)</script>"),
        },
        {
            "datasource_item_id": 2,
            "status": "error",
            "results": [],
            "sample": sample(2, None, error="The input is too long for the model."),
        },
    ]


def candidate_items(evaluation: Eval) -> list[dict[str, Any]]:
    """2 of 3 passed: item 1 now passes, item 2 is answered, rightly but curtly."""
    return [
        {
            "datasource_item_id": 0,
            "status": "pass",
            "results": [
                result(evaluation, 0, 1.0, True),
                result(evaluation, 1, 1.0, True, sample=judged(1.0, "Very kind.")),
            ],
            "sample": sample(0, "billing"),
        },
        {
            "datasource_item_id": 1,
            "status": "pass",
            "results": [
                result(evaluation, 0, 1.0, True),
                result(evaluation, 1, 0.7, True, sample=judged(0.7, "Fine.")),
            ],
            "sample": sample(1, "bug"),
        },
        {
            "datasource_item_id": 2,
            "status": "fail",
            "results": [
                result(evaluation, 0, 1.0, True),
                result(evaluation, 1, 0.3, False, sample=judged(0.3, "Curt.")),
            ],
            "sample": sample(2, "praise"),
        },
    ]


@pytest.fixture
def two_runs(alice: Any, alice_project: Any, judge: Model) -> dict[str, Any]:
    evaluation = make_eval(alice_project, alice)
    a = make_run(evaluation, "baseline", baseline_items(evaluation), user=alice)
    b = make_run(evaluation, "candidate", candidate_items(evaluation), user=alice)
    return {"eval": evaluation, "a": a, "b": b}


def running_run(evaluation: Eval, user: Any, status: str = JobStatus.RUNNING) -> EvalRun:
    criteria = {c["id"]: {"passed": 3, "failed": 1} for c in evaluation.testing_criteria}
    progress = {
        "total": 10,
        "completed": 4,
        "result_counts": {"passed": 3, "failed": 1, "errored": 0},
        "criteria": criteria,
    }
    return make_run(evaluation, "nightly", [], user=user, status=status, progress=progress)


def page(client: Client, path: str, **headers: Any) -> str:
    response = client.get(path, **headers)
    assert response.status_code == 200, path
    assert problems(response) == [], path  # the strict CSP: no inline script or style
    return response.content.decode()


def squash(html: str) -> str:
    return " ".join(html.split())


def body_rows(table: str) -> list[str]:
    return table.split("<tbody>")[1].split("<tr")[1:]


# --- The list --------------------------------------------------------------------------------------
def test_the_list_shows_each_eval_with_its_latest_run(
    alice_client: Client, alice: Any, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    # given: a second eval with no runs
    evaluation = two_runs["eval"]
    idle = make_eval(alice_project, alice, name="Tone only")

    # when
    html = squash(page(alice_client, url(alice_project)))

    # then
    table = html.split('<table id="evals"')[1].split("</table>")[0]
    idle_row, triage = body_rows(table)  # newest first
    assert "Tone only" in idle_row and idle.public_id in idle_row and "No runs yet" in idle_row
    assert f'href="{url(alice_project, evaluation.public_id + "/")}">Ticket triage</a>' in triage
    assert '<td data-label="Criteria">2</td> <td data-label="Runs">2</td>' in triage
    assert '<span class="badge completed">Completed</span>' in triage
    assert ">candidate</a>" in triage  # the latest run
    assert '<strong>66.7%</strong> <span class="help">2 of 3 passed</span>' in triage
    sidebar = html.split('<nav aria-label="Dashboard">')[1]
    assert f'<a href="{url(alice_project)}" class="active" aria-current="page">Evals</a>' in sidebar


def test_the_empty_list_explains_how_to_create_an_eval(alice_client: Client, alice_project: Any) -> None:
    html = page(alice_client, url(alice_project))

    assert "No evals yet" in html
    assert "evaluation = client.evals.create(" in html and "client.evals.runs.create(" in html
    assert "{{ sample.output_text }}" in html  # the grader's template, shown as written
    assert 'href="/docs/guides/api#evals"' in html and 'href="/docs"' in html


# --- An eval ---------------------------------------------------------------------------------------
def test_the_eval_page_shows_its_criteria_and_runs_to_compare(
    alice_client: Client, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    evaluation, a, b = two_runs["eval"], two_runs["a"], two_runs["b"]

    html = squash(page(alice_client, url(alice_project, f"{evaluation.public_id}/")))

    criteria = html.split('<table id="eval-criteria"')[1].split("</table>")[0]
    assert "Right label" in criteria and '<span class="mono">ilike</span>' in criteria
    assert "Polite" in criteria and f'<span class="mono">{JUDGE}</span>' in criteria
    assert '<span class="muted">pass threshold</span> <span class="mono">0.5</span>' in criteria
    runs = html.split('<table id="eval-runs"')[1].split("</table>")[0]
    candidate, baseline = body_rows(runs)  # newest first
    assert ">candidate</a>" in candidate and b.job.public_id in candidate
    assert '<span class="badge completed">Completed</span>' in candidate
    assert '<strong>66.7%</strong> <span class="help">2 of 3 passed</span>' in candidate
    assert (
        '"Passed">2</td> <td class="num" data-label="Failed">1</td> <td class="num" data-label="Errored">0'
        in candidate
    )
    assert ">baseline</a>" in baseline and a.job.public_id in baseline
    assert '<strong>33.3%</strong> <span class="help">1 of 3 passed</span>' in baseline
    assert (
        '"Passed">1</td> <td class="num" data-label="Failed">1</td> <td class="num" data-label="Errored">1'
        in baseline
    )
    # A is the older run, B the newer: ready to compare
    assert (
        f'name="a" value="{a.job.public_id}" aria-label="Compare {a.job.public_id} as run A" checked' in runs
    )
    assert (
        f'name="b" value="{b.job.public_id}" aria-label="Compare {b.job.public_id} as run B" checked' in runs
    )
    assert f'action="{url(alice_project, evaluation.public_id + "/compare")}"' in html


# --- A run -----------------------------------------------------------------------------------------
def test_the_run_page_shows_pass_rates_and_every_item_with_its_grades(
    alice_client: Client, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    run = two_runs["a"]

    raw = page(alice_client, run_url(alice_project, run))
    html = squash(raw)

    status = html.split('id="eval-run-status"')[1].split("</table>")[0]
    assert '<span class="badge completed" id="eval-run-badge">Completed</span>' in status
    assert '<dd class="stat">33.3%</dd>' in status and "<dd>1 of 3</dd>" in status
    assert "hx-trigger" not in raw and "Cancel run" not in raw  # finished: no polling, nothing to cancel
    right, polite = body_rows(status.split('<table id="eval-run-criteria"')[1])
    assert right.startswith("> <td>Right label<br>") and polite.startswith("> <td>Polite<br>")
    assert '<strong>50.0%</strong> <span class="help">1 of 2 passed</span>' in right
    assert '<strong>100.0%</strong> <span class="help">2 of 2 passed</span>' in polite
    assert "tiny-chat</span>: 3 calls, 36 tokens" in html
    items = html.split('<table id="eval-items"')[1].split("</table>")[0]
    assert "<th>Right label</th><th>Polite</th>" in items
    rows = items.split('<tr class="item-')[1:]
    assert [row.split('"')[0] for row in rows] == ["pass", "fail", "error"]
    # item 0: the message sent, the answer, each grade with its score and the judge's reasoning
    assert '<span class="chat-role">user</span> Label this ticket: I was charged twice' in rows[0]
    assert '<td class="eval-text full" data-label="Output">billing</td>' in rows[0]
    assert '<span class="badge pass">Pass</span> <span class="mono">0.9</span>' in rows[0]
    assert "Courteous and direct. Result: 0.9" in rows[0]
    # item 1: user content is escaped, never markup
    assert "The app crashes &lt;b&gt;now&lt;/b&gt;" in rows[1]
    assert "praise &lt;script&gt;alert(1)&lt;/script&gt;" in rows[1] and "<script>alert" not in raw
    assert '<span class="badge fail">Fail</span> <span class="mono">0</span>' in rows[1]
    # item 2: the model's error, and no grades
    assert '<div class="error-text">The input is too long for the model.</div>' in rows[2]
    assert rows[2].count("not graded") == 2 and '<span class="badge error">Error</span>' in rows[2]
    assert "All (3)" in html and "Failures (1)" in html and "Errors (1)" in html and "Passes (1)" in html


def test_the_failures_filter_shows_only_failing_items(
    alice_client: Client, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    run = two_runs["a"]

    failures = squash(page(alice_client, run_url(alice_project, run) + "?status=fail"))
    errors = squash(page(alice_client, run_url(alice_project, run) + "?status=error"))
    passes_of_b = squash(page(alice_client, run_url(alice_project, two_runs["b"]) + "?status=error"))

    items = failures.split('<table id="eval-items"')[1].split("</table>")[0]
    assert items.count('<tr class="item-') == 1 and '<tr class="item-fail">' in items
    assert "The app crashes" in items and "charged twice" not in items and "too long" not in items
    assert '<strong aria-current="page">Failures (1)</strong>' in failures
    assert '<a href="?#items">All (3)</a>' in failures
    assert errors.split('<table id="eval-items"')[1].count('<tr class="item-') == 1
    assert "too long for the model" in errors
    assert "No error items among the 3 graded." in passes_of_b


def test_the_items_are_paged_keeping_the_filter(
    alice_client: Client, alice: Any, alice_project: Any, judge: Model
) -> None:
    evaluation = make_eval(alice_project, alice)
    failing = {"status": "fail", "results": [result(evaluation, 0, 0.0, False)], "sample": sample(0, "no")}
    run = make_run(evaluation, "long", [{**failing, "datasource_item_id": i} for i in range(55)], user=alice)

    first = page(alice_client, run_url(alice_project, run) + "?status=fail")
    second = page(alice_client, run_url(alice_project, run) + "?status=fail&page=2")

    assert first.count('<tr class="item-fail">') == 50 and second.count('<tr class="item-fail">') == 5
    assert 'href="?status=fail&amp;page=2" rel="next"' in first and "Page 1 of 2" in first
    assert 'href="?status=fail&amp;page=1" rel="prev"' in second


def test_a_jsonl_run_shows_each_item_and_the_answer_it_brought(
    alice_client: Client, alice: Any, alice_project: Any, judge: Model
) -> None:
    # given: rows with their answers; the judge garbled its answer on the second
    evaluation = make_eval(alice_project, alice)
    source = {
        "type": "jsonl",
        "source": {"type": "file_content", "content": [{"item": t} for t in TICKETS[:2]]},
    }
    garbled = "The judge's answer could not be parsed: expected a JSON object; got 'Sure!'."
    items = [
        {
            "datasource_item_id": 0,
            "status": "pass",
            "results": [result(evaluation, 0, 1.0, True), result(evaluation, 1, 1.0, True)],
            "sample": {"output_text": "billing"},
        },
        {
            "datasource_item_id": 1,
            "status": "error",
            "results": [result(evaluation, 0, 0.0, False), result(evaluation, 1, 0.0, False, error=garbled)],
            "sample": {"output_text": "praise"},
        },
    ]
    run = make_run(evaluation, "answers", items, user=alice, data_source=source)

    # when
    html = squash(page(alice_client, run_url(alice_project, run)))

    # then: the item is the input, the answer it brought the output
    passed = html.split('<tr class="item-pass">')[1].split("</tr>")[0]
    assert (  # as PostgreSQL's jsonb keeps it: its keys shortest first
        '<code class="eval-json">{&quot;label&quot;: &quot;billing&quot;, '
        "&quot;ticket&quot;: &quot;I was charged twice&quot;}</code>" in passed
    )
    assert '<td class="eval-text full" data-label="Output">billing</td>' in passed
    errored = html.split('<tr class="item-error">')[1].split("</tr>")[0]
    assert (
        '<td class="eval-grade" data-label="Polite"><span class="badge error">Error</span> <span class="mono">0</span>'
        '<div class="help eval-reason">The judge&#x27;s answer could not be parsed: expected a JSON object; '
        "got &#x27;Sure!&#x27;.</div></td>" in errored
    )
    assert '<span class="mono">jsonl</span> · 2 items in the request' in html


def test_a_running_run_polls_its_status_until_it_ends(
    alice_client: Client, alice: Any, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    run = running_run(two_runs["eval"], alice)
    status_url = run_url(alice_project, run, "status")

    html = squash(page(alice_client, run_url(alice_project, run)))
    fragment = alice_client.get(status_url, HTTP_HX_REQUEST="true")

    assert f'hx-get="{status_url}" hx-trigger="every 2s" hx-swap="outerHTML"' in html
    assert '<span class="badge in_progress" id="eval-run-badge">In progress</span>' in html
    assert "4 of 10 items graded (40%)" in html and '<dd class="stat">75.0%</dd>' in html
    assert "Cancel run" in html and "No items graded yet." in html
    assert fragment.status_code == 200 and "HX-Refresh" not in fragment
    assert 'id="eval-run-status"' in fragment.content.decode()
    # when it has finished, the poll reloads the page (for the final items) and stops
    Job.objects.filter(pk=run.job.pk).update(status=JobStatus.SUCCEEDED, result={"result_counts": {}})
    done = alice_client.get(status_url, HTTP_HX_REQUEST="true")
    assert done["HX-Refresh"] == "true" and "hx-trigger" not in done.content.decode()


def test_a_failed_run_shows_its_error(
    alice_client: Client, alice: Any, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    run = make_run(two_runs["eval"], "broke", [], user=alice, status=JobStatus.FAILED)
    Job.objects.filter(pk=run.job.pk).update(
        error={"code": "spend_limit_reached", "message": "The organization's spend limit was reached."}
    )

    html = squash(page(alice_client, run_url(alice_project, run)))

    assert '<span class="badge failed" id="eval-run-badge">Failed</span>' in html
    assert (
        '<strong class="mono">spend_limit_reached</strong>: The organization&#x27;s spend limit was reached.'
        in html
    )
    assert "This run graded no items." in html


# --- Cancelling ------------------------------------------------------------------------------------
def test_the_member_who_started_a_run_cancels_it(
    alice_client: Client, alice: Any, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    running = running_run(two_runs["eval"], alice)
    queued = running_run(two_runs["eval"], alice, status=JobStatus.QUEUED)

    response = alice_client.post(run_url(alice_project, running, "cancel"), follow=True)
    at_once = alice_client.post(run_url(alice_project, queued, "cancel"), follow=True)
    finished = alice_client.post(run_url(alice_project, two_runs["a"], "cancel"), follow=True)

    assert response.redirect_chain == [(run_url(alice_project, running), 302)]
    html = squash(response.content.decode())
    assert "Cancelling: the run stops after the item it is grading; the items graded are kept." in html
    assert '<span class="badge cancelling" id="eval-run-badge">Cancelling</span>' in html
    assert "Cancel run" not in html  # asked once
    assert Job.objects.get(pk=running.job.pk).stop_requested == "cancel"
    assert "Run cancelled." in at_once.content.decode()
    assert Job.objects.get(pk=queued.job.pk).status == JobStatus.CANCELLED
    assert f"Run {two_runs['a'].job.public_id} is already completed." in finished.content.decode()


def test_a_member_may_not_cancel_a_run_someone_else_started(
    alice: Any, bob: Any, erin: Any, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    run = running_run(two_runs["eval"], alice)
    bob_client, erin_client = login(Client(), bob), login(Client(), erin)

    shown = page(bob_client, run_url(alice_project, run))
    refused = bob_client.post(run_url(alice_project, run, "cancel"), follow=True)

    assert "Cancel run" not in shown
    assert refused.status_code == 200
    assert (
        "Only owners and admins, and the member who started it, can cancel this eval run."
        in refused.content.decode().replace("&#x27;", "'")
    )
    assert Job.objects.get(pk=run.job.pk).stop_requested == ""
    # an admin may
    assert "Cancel run" in page(erin_client, run_url(alice_project, run))
    erin_client.post(run_url(alice_project, run, "cancel"))
    assert Job.objects.get(pk=run.job.pk).stop_requested == "cancel"


# --- Two runs side by side -------------------------------------------------------------------------
def test_the_compare_page_shows_both_runs_and_where_they_differ(
    alice_client: Client, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    evaluation, a, b = two_runs["eval"], two_runs["a"], two_runs["b"]
    compare = url(alice_project, f"{evaluation.public_id}/compare?a={a.job.public_id}&b={b.job.public_id}")

    html = squash(page(alice_client, compare))
    only = squash(page(alice_client, compare + "&differ=1"))

    side_a = html.split('id="compare-a"')[1].split('id="compare-b"')[0]
    side_b = html.split('id="compare-b"')[1].split('id="compare-difference"')[0]
    assert ">baseline</a>" in side_a and '<div class="stat">33.3%</div>' in side_a
    assert "1 of 3 passed · 1 failed · 1 errored" in side_a
    assert ">candidate</a>" in side_b and '<div class="stat">66.7%</div>' in side_b
    difference = html.split('id="compare-difference"')[1]
    assert '<div class="stat better">+33.3 pts</div>' in difference
    assert "B passes 1 item A did not, and misses 0 A passed." in difference
    criteria = html.split('<table id="compare-criteria"')[1].split("</table>")[0]
    right, polite = body_rows(criteria)
    assert right.startswith('> <td class="full">Right label<br>') and polite.startswith(
        '> <td class="full">Polite<br>'
    )
    assert '<strong>50.0%</strong> <span class="help">1 of 2</span>' in right
    assert '<strong>100.0%</strong> <span class="help">3 of 3</span>' in right
    assert '<td data-label="B − A" class="num better">+50.0 pts</td>' in right
    assert '<strong>66.7%</strong> <span class="help">2 of 3</span>' in polite
    assert '<td data-label="B − A" class="num worse">-33.3 pts</td>' in polite
    # every item, joined by its row; then only the two whose status changed
    items = html.split('<table id="compare-items"')[1].split("</table>")[0]
    assert items.count("<tr") == 4 and items.count('<tr class="differs">') == 2
    assert "All (3)" in html and "Only where they differ (2)" in html
    differing = only.split('<table id="compare-items"')[1].split("</table>")[0]
    assert differing.count('<tr class="differs">') == 2 and "charged twice" not in differing
    row_1, row_2 = differing.split('<tr class="differs">')[1:]
    assert "The app crashes &lt;b&gt;now&lt;/b&gt;" in row_1
    assert '<span class="badge fail">Fail</span>' in row_1 and '<span class="badge pass">Pass</span>' in row_1
    assert (
        '<td class="eval-text" data-label="A output">praise &lt;script&gt;alert(1)&lt;/script&gt;</td>'
        in row_1
    )
    assert '<td class="eval-text" data-label="B output">bug</td>' in row_1
    assert '<div class="error-text">The input is too long for the model.</div>' in row_2
    assert (
        '<span class="badge error">Error</span>' in row_2 and '<span class="badge fail">Fail</span>' in row_2
    )


def test_compare_needs_two_runs_of_this_eval(
    alice_client: Client, alice: Any, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    evaluation, a = two_runs["eval"], two_runs["a"]
    other = make_eval(alice_project, alice, name="Other")
    stranger = make_run(other, "elsewhere", [], user=alice)
    compare = url(alice_project, f"{evaluation.public_id}/compare")

    # without two runs, the eval's page, where they are picked
    for query in ("", f"?a={a.job.public_id}"):
        response = alice_client.get(compare + query)
        assert response.status_code == 302 and response["Location"] == url(
            alice_project, f"{evaluation.public_id}/"
        )
    # a run that is not this eval's is no page at all
    for query in (
        f"?a={a.job.public_id}&b=evalrun_nope",
        f"?a={a.job.public_id}&b={stranger.job.public_id}",
    ):
        assert alice_client.get(compare + query).status_code == 404, query
    # nor is a run reachable under another eval's address
    assert (
        alice_client.get(url(alice_project, f"{other.public_id}/runs/{a.job.public_id}/")).status_code == 404
    )


# --- Outsiders -------------------------------------------------------------------------------------
def test_an_outsider_gets_404_on_every_page_and_the_cancel(
    carol_client: Client, carol_project: Any, alice: Any, alice_project: Any, two_runs: dict[str, Any]
) -> None:
    evaluation, a, b = two_runs["eval"], two_runs["a"], two_runs["b"]
    running = running_run(evaluation, alice)
    compare = f"{evaluation.public_id}/compare?a={a.job.public_id}&b={b.job.public_id}"
    paths = [
        "",
        f"{evaluation.public_id}/",
        compare,
        f"{evaluation.public_id}/runs/{a.job.public_id}/",
        f"{evaluation.public_id}/runs/{a.job.public_id}/?status=fail",
        f"{evaluation.public_id}/runs/{running.job.public_id}/status",
    ]

    for path in paths:
        assert carol_client.get(url(alice_project, path)).status_code == 404, path
        if path:  # alice's ids under carol's own project are no more reachable
            assert carol_client.get(url(carol_project, path)).status_code == 404, path
    for project in (alice_project, carol_project):
        cancel = url(project, f"{evaluation.public_id}/runs/{running.job.public_id}/cancel")
        assert carol_client.post(cancel).status_code == 404
    assert Job.objects.get(pk=running.job.pk).stop_requested == ""
    assert evaluation.public_id not in carol_client.get(url(carol_project)).content.decode()
