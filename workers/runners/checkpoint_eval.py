"""A fine-tune scored by an eval (docs/api.md, "Fine-tuning", `eval_id`): at each epoch's end the
model as it is answers the eval's items by greedy decoding, its answers are graded by the eval's
criteria, and the share of items that pass every criterion (`eval_score`) joins the epoch's
metrics, where it picks the checkpoint kept (workers/runtime/training.py, LoopState).

The answers are billed as the base model's inference (prompt and answer tokens), with the
training, and count toward the job's max_cost like its steps.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from apps.billing.pricing import cost_of
from apps.core.errors import ActionError
from apps.jobs import graders
from apps.jobs.actions import usage_key
from workers.runners.evals import input_messages
from workers.runners.progress import ProgressReporter

# As the chat API sends them (apps/jobs/inference.py): a developer message is the model's system one.
ROLES = {"developer": "system"}


class CheckpointScorer:
    """`sft.Scorer` for a job whose request holds an eval snapshot (`apps.evals.checkpoints`)."""

    def __init__(self, snapshot: dict[str, Any], progress: ProgressReporter, base_model: str) -> None:
        self.items: list[dict[str, Any]] = snapshot["items"]
        self.criteria: list[dict[str, Any]] = snapshot["criteria"]
        self.input_messages: dict[str, Any] = snapshot["input_messages"]
        self.max_tokens = int(snapshot["max_tokens"])
        self.progress = progress
        self.input_key = usage_key("input_tokens", base_model)
        self.output_key = usage_key("output_tokens", base_model)
        self.base_model = base_model
        # The counts run over every attempt of the job (what `bill` expects): a resumed attempt goes on
        # from what the earlier ones billed, so its answers are billed and count toward max_cost.
        billed = progress.job.billed_usage or {}
        for key, unit in ((self.input_key, "input_tokens"), (self.output_key, "output_tokens")):
            so_far = int(billed.get(key, 0))
            progress.extra_usage[key] = so_far
            progress.extra_cost += cost_of(base_model, unit, so_far)

    def __call__(self, model: Any, tokenizer: Any, device: Any, max_length: int) -> dict[str, Any]:
        """The epoch's score. An item that cannot be asked (its template names what it lacks, the
        model's chat template refuses it, its prompt fills the training's sequence length) fails and
        costs nothing. Before each answer the job's budget is checked for the costliest answer
        possible, and a cancel or pause ends the scoring: the epoch then has no score."""
        from workers.runtime.sft import greedy_answer

        passed = 0
        worst = cost_of(self.base_model, "input_tokens", max_length) + cost_of(
            self.base_model, "output_tokens", self.max_tokens
        )
        for item in self.items:
            if self._stopped(worst):
                return {}
            try:  # one item rendered at a time: each message may fill up to graders.MAX_RENDERED
                chat = [
                    {"role": ROLES.get(m["role"], m["role"]), "content": m["content"]}
                    for m in input_messages(self.input_messages, item)
                ]
            except ActionError:
                continue
            answer = greedy_answer(model, tokenizer, chat, self.max_tokens, max_length, device)
            if answer is None:
                continue
            text, prompt_tokens, answer_tokens = answer
            self._bill(prompt_tokens, answer_tokens)
            passed += self._passes(item, text)
        return {"eval_score": passed / len(self.items), "eval_passed": passed, "eval_items": len(self.items)}

    def _stopped(self, worst: int) -> bool:
        """A cancel or pause asked for, or the next answer's costliest case past max_cost or the
        spend cap (the job then stops as at a step: budget_reached, keeping its model)."""
        progress = self.progress
        if progress.guard.should_stop():
            return True
        spent = progress.extra_cost + cost_of(self.base_model, "trained_tokens", progress.trained_tokens)
        reason = progress.budget_reason(spent + worst)
        if reason:
            progress.guard.request_stop(reason)
            return True
        return False

    def _passes(self, item: dict[str, Any], text: str) -> bool:
        sample: dict[str, Any] = {
            "output_text": text,
            "choices": [{"message": {"role": "assistant", "content": text}}],
        }
        with contextlib.suppress(ValueError, RecursionError):
            parsed = json.loads(text)
            if isinstance(parsed, dict):
                sample["output_json"] = parsed
        grades = [graders.grade(criterion, item, sample) for criterion in self.criteria]
        return all(grade.passed and grade.error is None for grade in grades)

    def _bill(self, prompt_tokens: int, answer_tokens: int) -> None:
        usage = self.progress.extra_usage
        for key, unit, count in (
            (self.input_key, "input_tokens", prompt_tokens),
            (self.output_key, "output_tokens", answer_tokens),
        ):
            before = usage.get(key, 0)
            usage[key] = before + count
            self.progress.extra_cost += cost_of(self.base_model, unit, before + count) - cost_of(
                self.base_model, unit, before
            )
