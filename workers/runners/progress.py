"""A fine-tune's progress as the job row shows it: the runtime's progress events → throttled
progress, metric events, stored checkpoints, and the budget check before each step."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connection

from apps.billing.pricing import cost_of
from apps.core.storage import job_prefix, upload_dir
from apps.jobs import actions
from apps.jobs.admission import SpendShare
from apps.jobs.models import Job, StopReason
from apps.registry.actions import fine_tuned_name
from workers.runners.attempt import BUDGET, FENCED, SPEND_LIMIT, AttemptGuard

logger = logging.getLogger(__name__)

# Progress writes kept while PostgreSQL is briefly unreachable (the heartbeat thread self-fences
# the attempt if the outage lasts longer than JOB_SELF_FENCE_SECONDS).
MAX_PENDING_WRITES = 500
STOP_MESSAGES = {
    reason: f"{reason.label}: the job stopped early and kept the best model so far." for reason in StopReason
}


class ProgressReporter:
    """Turns the runtime's progress events into throttled progress, metric events, checkpoints
    and the budget check."""

    def __init__(self, job: Job, guard: AttemptGuard) -> None:
        self.job = job
        self.guard = guard
        self.started = time.monotonic()
        self.first_step: int | None = None
        self.step = 0
        self.trained_tokens = 0
        self.last_metrics_step = -1
        self.share = SpendShare(job)  # the job's share of the organization's spend cap
        # The name the model will have; checkpoints are callable as `<name>:ckpt-step-N`.
        self.model_name = fine_tuned_name(
            job.model_name, job.organization, (job.request or {}).get("suffix") or "", job.public_id
        )
        self.pending: list[Any] = []  # writes that met a database outage, oldest first
        # Spent before training began (a distillation's teacher), billed with the training.
        self.extra_cost = 0
        self.extra_usage: dict[str, int] = {}
        self.extra_models: dict[str, str] = {}
        self.max_step_tokens = 0  # the most tokens one step has trained so far

    def should_stop(self) -> bool:
        if self.step:
            reason = self.budget_reason(self.extra_cost + self._next_step_cost())
            if reason:
                self.guard.request_stop(reason)
        return self.guard.should_stop()

    def budget_reason(self, cost: int) -> str:
        """ "budget" when a total cost of `cost` would pass the job's max_cost, "spend_limit" when
        the organization's spend cap leaves the job no room for it, else ""."""
        if self.job.max_cost is not None and cost > self.job.max_cost:
            return BUDGET
        # Asking for the rest of the estimate at once (at least a tenth more) keeps the lock rare.
        ahead = max((self.job.estimated_cost or 0) - cost, cost // 10)
        if not self.share.allows(cost, ahead=ahead):
            if self.share.fenced:  # another attempt owns the job now
                self.guard.request_stop(FENCED)
                return FENCED
            return SPEND_LIMIT
        return ""

    def usage(self, trained_tokens: int) -> dict[str, int]:
        """The job's running counts to bill: the tokens trained so far and the teacher's units."""
        return {"trained_tokens": trained_tokens, **self.extra_usage}

    def log(self, message: str) -> None:
        self._write(actions.add_event, message)

    def _next_step_cost(self) -> int:
        # The next step costs at most what the costliest step so far did: steps differ in tokens
        # (batches are padded per batch, not to a fixed length), and an average would let the bill
        # pass max_cost by a step. The first batch is the widest, so it sets the bound early.
        return cost_of(self.job.model_name, "trained_tokens", self.trained_tokens + self.max_step_tokens)

    def on_event(self, event: Any) -> None:
        if self.guard.lost:
            return
        if event.kind == "step":  # (a resumed run's banner, before its first step, carries its count)
            self.max_step_tokens = max(self.max_step_tokens, event.trained_tokens - self.trained_tokens)
        self.step, self.trained_tokens = event.step, max(self.trained_tokens, event.trained_tokens)
        if event.kind == "step":
            self._progress(event)
            every = max(1, event.total_steps // 200)  # at most ~200 points on the loss curve
            if event.step - self.last_metrics_step >= every:
                self.last_metrics_step = event.step
                keys = ("train_loss", "train_mean_token_accuracy")  # the second from SFT only
                self._metrics(event, {key: event.metrics.get(key) for key in keys})
        elif event.kind == "eval":
            self._metrics(event, event.metrics, message=_eval_message(event))
        elif event.kind == "checkpoint" and event.checkpoint_dir:
            key = f"{job_prefix('checkpoints', self.job.organization.public_id, self.job.public_id)}/step-{event.step}"
            upload_dir(Path(event.checkpoint_dir), key)
            # The checkpoint is callable as a model once saved: the work up to it is billed with it.
            self._write(
                actions.add_checkpoint, step=event.step, epoch=event.epoch, metrics=event.metrics,
                artifact_key=key, model_name=f"{self.model_name}:ckpt-step-{event.step}",
                trained_tokens=event.trained_tokens, usage=self.usage(event.trained_tokens),
                usage_models=self.extra_models,
            )  # fmt: skip
        elif event.kind == "log" and event.message:
            self.log(event.message)

    def _write(self, action: Any, *args: Any, **kwargs: Any) -> None:
        """A fenced write from the training loop. A short database outage does not end the attempt:
        the write waits here (in order) and goes out with the next one; the heartbeat thread decides
        when the outage is too long."""
        self.pending.append((action, args, kwargs))
        self.flush()

    def flush(self) -> None:
        while self.pending and not self.guard.lost:
            action, args, kwargs = self.pending[0]
            try:
                written = action(self.job.pk, self.job.attempt, *args, **kwargs)
            except DatabaseError:
                if len(self.pending) == 1:  # the first failure of an outage
                    logger.warning(
                        "job %s: progress write failed; kept for later", self.job.public_id, exc_info=True
                    )
                connection.close()  # a broken connection stays broken until closed
                del self.pending[:-MAX_PENDING_WRITES]
                return
            self.pending.pop(0)
            if not written:  # another attempt owns the job now
                self.guard.request_stop(FENCED)
        if self.guard.lost:
            self.pending.clear()

    def _progress(self, event: Any) -> None:
        # The rate is timed from the end of this attempt's first step: when that step began is not
        # known (it follows the model's loading), so there is no estimate until a second step ends.
        if self.first_step is None:
            self.first_step, self.started = event.step, time.monotonic()
        done = event.step - self.first_step
        rate = done / max(time.monotonic() - self.started, 1e-6)
        remaining = max(event.total_steps - event.step, 0)
        self.guard.set_progress(
            {
                "step": event.step,
                "total_steps": event.total_steps,
                "epoch": event.epoch,
                "percent": round(100 * event.step / max(event.total_steps, 1), 1),
                "eta_seconds": round(remaining / rate) if rate > 0 else None,
                "trained_tokens": event.trained_tokens,
            }
        )

    def _metrics(self, event: Any, metrics: dict[str, Any], message: str | None = None) -> None:
        data = {"step": event.step, "total_steps": event.total_steps, "epoch": event.epoch}
        data.update(
            {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        )
        self._write(
            actions.add_event, message or f"Step {event.step}/{event.total_steps}", type="metrics", data=data
        )


def _eval_message(event: Any) -> str:
    metrics = event.metrics
    parts = [f"Epoch {event.epoch} evaluated"]
    if "valid_loss" in metrics:
        parts.append(f"valid_loss {metrics['valid_loss']:.4f}")
    if "accuracy" in metrics:
        parts.append(f"accuracy {metrics['accuracy']:.3f}")
    return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
