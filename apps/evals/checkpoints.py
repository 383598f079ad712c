"""A fine-tune scored by an eval (`eval_id`, ours; docs/api.md, "Fine-tuning"): what the job keeps
of the eval when it is created, so later edits of the eval or its runs change nothing under a
running job.

The items and the prompts are those of the eval's latest `completions` run (its source, its
`input_messages`, its answer length): the way the team already asks the eval of a model. Only
graders that need no model run at each epoch's end (string_check, text_similarity but cosine, and
multi over those): a judge's or an embedding model's calls inside a training step would hold the
GPU the training holds.
"""

from __future__ import annotations

import json
from typing import Any

from apps.core.errors import ActionError
from apps.evals.models import Eval, EvalRun
from apps.projects.models import Project

# An eval scores each epoch on at most this many items: answering them is part of the epoch's time.
MAX_CHECKPOINT_ITEMS = 100
# An answer's length when the run gave none, as a chat request's default would be too long for this;
# and the most, as every epoch answers every item on the GPU the training holds.
DEFAULT_ANSWER_TOKENS = 128
MAX_ANSWER_TOKENS = 512
# The items a job keeps with its request (read with every job listed): a megabyte at most.
MAX_SNAPSHOT_BYTES = 1_000_000
PARAM = "eval_id"


def snapshot(project: Project, eval_id: Any) -> dict[str, Any]:
    if not isinstance(eval_id, str) or not eval_id:
        raise ActionError("eval_id must be the id of an eval of this project (eval_…).", param=PARAM)
    eval = Eval.objects.filter(project=project, public_id=eval_id).first()
    if eval is None:
        raise ActionError(f"No eval {eval_id} in this project.", param=PARAM, code="eval_not_found")
    for criterion in eval.testing_criteria:
        problem = _needs_a_model(criterion)
        if problem:
            raise ActionError(
                f"The eval's criterion '{criterion.get('name')}' {problem}: a fine-tune is scored at each epoch "
                "only with string_check, text_similarity (but cosine) and multi graders.",
                param=PARAM,
            )
    run = (
        EvalRun.objects.filter(eval=eval, job__request__data_source__type="completions")
        .select_related("job__training_file")
        .order_by("-job_id")
        .first()
    )
    if run is None:
        raise ActionError(
            f"{eval_id} has no completions run to take its items and prompts from: run it once on a model "
            "(a completions data source), then name it here.",
            param=PARAM,
        )
    source = run.job.request["data_source"]
    items = _items(run, source["source"])
    if not items:
        raise ActionError(
            f"The items of {eval_id}'s latest completions run are gone (its file was deleted).", param=PARAM
        )
    size = len(json.dumps(items))
    if size > MAX_SNAPSHOT_BYTES:
        raise ActionError(
            f"The first {len(items)} items of {eval_id}'s latest completions run are {size:,} bytes; a fine-tune "
            f"keeps at most {MAX_SNAPSHOT_BYTES:,} bytes of them. Run the eval on fewer or smaller items first.",
            param=PARAM,
        )
    return {
        "id": eval.public_id,
        "run_id": run.job.public_id,
        "criteria": eval.testing_criteria,
        "items": items,
        "input_messages": source["input_messages"],
        "max_tokens": min(
            (source.get("sampling_params") or {}).get("max_completion_tokens") or DEFAULT_ANSWER_TOKENS,
            MAX_ANSWER_TOKENS,
        ),
    }


def _needs_a_model(criterion: dict[str, Any]) -> str:
    kind = criterion.get("type")
    if kind in ("score_model", "label_model"):
        return f"is a {kind} grader, which asks a model"
    if kind == "text_similarity" and criterion.get("evaluation_metric") == "cosine":
        return "compares embeddings (cosine), which asks a model"
    if kind == "multi" and any(_needs_a_model(sub) for sub in (criterion.get("graders") or {}).values()):
        return "has a sub-grader that asks a model"
    return ""


def _items(run: EvalRun, source: dict[str, Any]) -> list[dict[str, Any]]:
    if source["type"] == "file_content":
        return [row["item"] for row in source["content"][:MAX_CHECKPOINT_ITEMS]]
    file = run.job.training_file
    if file is None:
        return []
    items = []
    with file.content.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                row = json.loads(raw)  # the file passed validation at upload
                if isinstance(row, dict) and isinstance(row.get("item"), dict):
                    items.append(row["item"])
                if len(items) == MAX_CHECKPOINT_ITEMS:
                    break
    return items
