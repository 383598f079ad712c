"""The parity eval of a job imported from OpenAI (docs/api.md, "Import from OpenAI"): does the model
trained here answer as well as the one it replaces?

At import, when the old fine-tuned model still answers at OpenAI, its answers to the first prompts of
the job's validation file (the training file when it has none) are recorded through the
organization's own key. They become an eval with two criteria, "matches the reference answer" and
"matches OpenAI's answer", and a first run that grades OpenAI's answers (the baseline). When the
recreated fine-tune succeeds, its worker starts a second run that samples the new model on the same
prompts: comparing the two runs says, criterion by criterion and row by row, where the new model is
worse.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
from django.db import transaction

from apps.accounts.models import ApiKey, User
from apps.core.errors import ActionError
from apps.evals import actions, parsing
from apps.evals.models import Eval, EvalRun
from apps.jobs.models import Job, JobEvent
from apps.projects.models import Project

# Rows recorded: enough to see a difference, few enough to record within the import request.
MAX_PARITY_ROWS = 50
# OpenAI's answers are recorded this many at a time.
PARITY_CONCURRENCY = 8
# A fuzzy match at least this close counts as the same answer (rapidfuzz's ratio, 0 to 1).
SAME_ANSWER = 0.8
ANSWER_TOKENS = 512
ROLES = ("system", "developer", "user", "assistant")
# Where the recreated job's request names its parity eval, the baseline run whose items the new
# model answers, and (once started) that run: started once, however often the start is tried.
JOB_KEY = "parity_eval_id"
BASELINE_KEY = "parity_baseline_run_id"
RUN_KEY = "parity_run_id"
ITEM_SCHEMA = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "items": {"type": "object"}},
        "reference": {"type": "string"},
        "openai_answer": {"type": "string"},
    },
    "required": ["messages", "reference", "openai_answer"],
}


def _criterion(name: str, field: str) -> dict[str, Any]:
    return {
        "type": "text_similarity",
        "name": name,
        "input": "{{sample.output_text}}",
        "reference": "{{item." + field + "}}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": SAME_ANSWER,
    }


CRITERIA = [
    _criterion("Matches the reference answer", "reference"),
    _criterion("Matches OpenAI's answer", "openai_answer"),
]


def prompts(content: bytes) -> list[tuple[list[dict[str, Any]], str]]:
    """(prompt messages, reference answer) of the first rows of a chat or preference file whose answer
    is plain text; rows with tool calls or parts are left out, as they cannot be compared as text."""
    found: list[tuple[list[dict[str, Any]], str]] = []
    for line in content.splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # the file is validated after the copy, not before
            continue
        if not isinstance(row, dict):
            continue
        if isinstance(row.get("messages"), list) and row["messages"]:
            *prompt, answer = row["messages"]
        elif isinstance(row.get("input"), dict) and isinstance(row.get("preferred_output"), list):
            prompt, answer = row["input"].get("messages"), (row["preferred_output"] or [None])[0]
        else:
            continue
        if (
            isinstance(prompt, list)
            and prompt
            and all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                for m in prompt
            )
            and isinstance(answer, dict)
            and answer.get("role") == "assistant"
            and isinstance(answer.get("content"), str)
            and not answer.get("tool_calls")
        ):
            found.append(([{"role": m["role"], "content": m["content"]} for m in prompt], answer["content"]))
            if len(found) == MAX_PARITY_ROWS:
                break
    return found


def _answer(client: openai.OpenAI, model: str, messages: list[dict[str, Any]]) -> str:
    completion = client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]  # plain role/content dicts, checked by prompts()
        temperature=0,
        max_completion_tokens=ANSWER_TOKENS,
    )
    return (completion.choices[0].message.content or "") if completion.choices else ""


Recorded = list[dict[str, Any]]


def record(
    client: openai.OpenAI, old_model: str, content: bytes, source_file: str
) -> Recorded | dict[str, Any]:
    """The old model's answers to the file's first prompts, as the parity eval's items, or the
    report of why there are none (the old model was shut down, no row has a text answer, OpenAI
    failed). Made before the job is recreated: the network waits hold no transaction."""
    rows = prompts(content)
    if not rows:
        return skipped(f"The {source_file} has no chat rows with a text answer to compare.")
    try:
        first = _answer(client, old_model, rows[0][0])
    except openai.NotFoundError:
        return skipped(f"{old_model} no longer answers at OpenAI (it was shut down or deleted).")
    except openai.OpenAIError as exc:
        return skipped(f"{old_model} could not be asked at OpenAI: {str(exc).rstrip('.')}.")
    try:
        with ThreadPoolExecutor(PARITY_CONCURRENCY) as pool:
            rest = list(pool.map(lambda row: _answer(client, old_model, row[0]), rows[1:]))
    except openai.OpenAIError as exc:
        return skipped(
            f"{old_model} stopped answering while its answers were recorded: {str(exc).rstrip('.')}."
        )
    return [
        {"messages": prompt, "reference": reference, "openai_answer": answer}
        for (prompt, reference), answer in zip(rows, [first, *rest], strict=True)
    ]


def create(
    project: Project,
    items: Recorded,
    *,
    openai_job_id: str,
    old_model: str,
    job: Job,
    source_file: str,
    api_key: ApiKey | None,
    user: User | None,
) -> dict[str, Any]:
    """The parity eval of the recreated `job` with its baseline run, in the transaction that
    created the job (so the job cannot finish before it knows its eval). Raises ActionError when the
    baseline run is refused (the plan's quota); the caller keeps the job."""
    eval = actions.create_eval(
        project,
        parsing.parse_eval(
            project,
            {
                "name": f"Parity with {old_model}"[: parsing.MAX_NAME],
                "metadata": {"openai_job_id": openai_job_id, "fine_tuning_job_id": job.public_id},
                "data_source_config": {
                    "type": "custom",
                    "item_schema": ITEM_SCHEMA,
                    "include_sample_schema": True,
                },
                "testing_criteria": CRITERIA,
            },
        ),
        user,
    )
    body = {
        "name": f"{old_model} (answers recorded at OpenAI)"[: parsing.MAX_NAME],
        "data_source": {
            "type": "jsonl",
            "source": {
                "type": "file_content",
                "content": [
                    {"item": item, "sample": {"output_text": item["openai_answer"]}} for item in items
                ],
            },
        },
    }
    schema = eval.data_source_config["item_schema"]
    # It calls no model (fuzzy matching only), so it waits for no place among the plan's eval runs.
    baseline = actions.submit_run(
        eval, parsing.parse_run(project, schema, body), body, api_key=api_key, user=user, takes_place=False
    )
    job.request = {**job.request, JOB_KEY: eval.public_id, BASELINE_KEY: baseline.job.public_id}
    job.save(update_fields=["request"])
    return {
        "status": "recorded",
        "eval_id": eval.public_id,
        "openai_run_id": baseline.job.public_id,
        "rows": len(items),
        "message": f"{len(items)} answers of {old_model} recorded from the {source_file}. When "
        f"{job.public_id} succeeds, its model is run on the same prompts in this eval; compare the two runs "
        "to see where it is worse.",
    }


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "eval_id": None, "openai_run_id": None, "rows": 0, "message": reason}


def start_new_model_run(job: Job, *, waited: bool = False) -> str:
    """Starts the second run of a succeeded imported job's parity eval, its new model on the
    recorded prompts: "started", "none" (no parity eval, or its run started already), "refused"
    (said on the job), or "waiting" while the plan's places for batches and eval runs are all taken
    (the caller tries again later; the first wait is said on the job)."""
    request = job.request or {}
    eval_id = request.get(JOB_KEY)
    if not eval_id or job.fine_tuned_model is None:
        return "none"
    with transaction.atomic():
        # The job's row lock makes the start once-only: a redelivered try finds the run's id.
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if (locked.request or {}).get(RUN_KEY):
            return "none"
        eval = Eval.objects.filter(project_id=job.project_id, public_id=eval_id).first()
        baseline = (
            EvalRun.objects.filter(eval=eval, job__public_id=request.get(BASELINE_KEY))
            .select_related("job")
            .first()
        )
        source = ((baseline.job.request or {}).get("data_source") or {}).get("source") if baseline else None
        if eval is None or not isinstance(source, dict) or source.get("type") != "file_content":
            _say(
                job,
                f"The parity eval {eval_id} or its baseline run is gone: no parity run was started.",
                "warn",
            )
            return "refused"
        body = {
            "name": f"{job.fine_tuned_model.name} (this fine-tune)"[: parsing.MAX_NAME],
            "data_source": {
                "type": "completions",
                "model": job.fine_tuned_model.name,
                "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                # As long an answer as OpenAI's was allowed, within half of a small model's context.
                "sampling_params": {
                    "temperature": 0,
                    "max_completion_tokens": min(ANSWER_TOKENS, job.fine_tuned_model.context_length // 2),
                },
                "source": {
                    "type": "file_content",
                    "content": [{"item": row["item"]} for row in source["content"]],
                },
            },
        }
        try:
            with transaction.atomic():
                parsed = parsing.parse_run(eval.project, eval.data_source_config["item_schema"], body)
                run = actions.submit_run(eval, parsed, body, user=job.created_by)
        except ActionError as exc:
            if exc.code == "concurrency_limit_exceeded":
                if not waited:
                    _say(job, f"The parity run on {eval_id} waits for a place: {exc.message.split('. ')[0]}.")
                return "waiting"
            _say(job, f"The parity run on {eval_id} did not start: {exc.message}", level="warn")
            return "refused"
        locked.request = {**(locked.request or {}), RUN_KEY: run.job.public_id}
        locked.save(update_fields=["request"])
        _say(
            job,
            f"Parity run {run.job.public_id} started on {eval_id}: the new model answers the prompts "
            "OpenAI's model answered.",
        )
    return "started"


def gave_up(job: Job) -> None:
    _say(
        job,
        "The parity run did not start: the plan's places for eval runs stayed taken for a day. Start it from "
        "the eval's page, on this job's model.",
        level="warn",
    )


def _say(job: Job, message: str, level: str = "info") -> None:
    JobEvent.objects.create(job=job, level=level, message=message)
