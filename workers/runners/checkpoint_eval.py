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

    def __call__(self, model: Any, tokenizer: Any, device: Any) -> dict[str, Any]:
        from workers.runtime.sft import greedy_answers

        chats: list[list[dict[str, Any]] | None] = []
        for item in self.items:
            try:
                chats.append(input_messages(self.input_messages, item))
            except ActionError:  # an item that lacks what the template names fails, as in a run
                chats.append(None)
        asked = [chat for chat in chats if chat is not None]
        answers = iter(greedy_answers(model, tokenizer, asked, self.max_tokens, device))
        passed = 0
        for item, chat in zip(self.items, chats, strict=True):
            if chat is None:
                continue
            text, prompt_tokens, answer_tokens = next(answers)
            self._bill(prompt_tokens, answer_tokens)
            sample: dict[str, Any] = {
                "output_text": text,
                "choices": [{"message": {"role": "assistant", "content": text}}],
            }
            with contextlib.suppress(ValueError):
                parsed = json.loads(text)
                if isinstance(parsed, dict):
                    sample["output_json"] = parsed
            grades = [graders.grade(criterion, item, sample) for criterion in self.criteria]
            passed += all(grade.passed and grade.error is None for grade in grades)
        return {"eval_score": passed / len(self.items), "eval_passed": passed, "eval_items": len(self.items)}

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
