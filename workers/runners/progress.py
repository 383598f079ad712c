"""A fine-tune's progress as the job row shows it: the runtime's progress events → throttled
progress, metric events, stored checkpoints, and the budget check before each step."""

from __future__ import annotations

import logging
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection

from apps.billing.pricing import cost_of
from apps.core.storage import job_prefix, upload_dir
from apps.jobs import actions
from apps.jobs.admission import SpendShare
from apps.jobs.models import Job, StopReason
from apps.registry.actions import fine_tuned_name
from workers.runners.attempt import BUDGET, FENCED, SPEND_LIMIT, AttemptGuard, is_outage

logger = logging.getLogger(__name__)

# Progress writes kept while PostgreSQL is briefly unreachable (the heartbeat thread self-fences
# the attempt if the outage lasts longer than JOB_SELF_FENCE_SECONDS).
MAX_PENDING_WRITES = 500
# Per-step metrics are written in batches: at most this many rows, or every progress interval.
METRICS_BATCH_ROWS = 200
# The ETA follows an exponential moving average of the step rate, measured over windows of at
# least this long: it settles instead of jumping with every slow or fast step.
RATE_WINDOW_SECONDS = 1.0
RATE_SMOOTHING = 0.2  # the newest window's weight
STOP_MESSAGES = {
    reason: f"{reason.label}: the job stopped early and kept the best model so far." for reason in StopReason
}


class StepRate:
    """Steps a second, as an exponential moving average over windows of RATE_WINDOW_SECONDS or
    more: one slow step (an evaluation, a checkpoint) moves it a little, a lasting change fully
    within a few windows. None until the first window is measured: the first steps (warm-up,
    caches) mislead."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.mark: tuple[float, int] | None = None  # (time, step) where the current window began

    def update(self, now: float, step: int) -> float | None:
        if self.mark is None:
            self.mark = (now, step)
        elif now - self.mark[0] >= RATE_WINDOW_SECONDS:
            window = (step - self.mark[1]) / (now - self.mark[0])
            self.rate = window if self.rate is None else self.rate + RATE_SMOOTHING * (window - self.rate)
            self.mark = (now, step)
        return self.rate


class ProgressReporter:
    """Turns the runtime's progress events into throttled progress, metric events, checkpoints
    and the budget check."""

    def __init__(self, job: Job, guard: AttemptGuard) -> None:
        self.job = job
        self.guard = guard
        self.step = 0
        self.trained_tokens = 0
        self.share = SpendShare(job)  # the job's share of the organization's spend cap
        # The name the model will have; checkpoints are callable as `<name>:ckpt-step-N`.
        self.model_name = fine_tuned_name(
            job.model_name, job.organization, (job.request or {}).get("suffix") or "", job.public_id
        )
        self.pending: list[Any] = []  # writes that met a database outage, oldest first
        self.outage = False  # the last try to write met an outage (logged once per outage)
        # Spent before training began (a distillation's teacher), billed with the training.
        self.extra_cost = 0
        self.extra_usage: dict[str, int] = {}
        self.extra_models: dict[str, str] = {}
        self.max_step_tokens = 0  # the most tokens one step has trained so far
        self.step_rows: list[tuple[str, dict[str, Any]]] = []  # per-step metrics not written yet
        self.rows_queued_at = time.monotonic()
        self.rate = StepRate()
        self.last_progress: dict[str, Any] = {}
        self.valid_examples: int | None = None  # the size of the validation set, from the run's banner

    def should_stop(self) -> bool:
        if self.step:
            # The next step's cost reads the price table now and then: with the budget check, it
            # waits out a short outage instead of ending the attempt (the step must not run unchecked).
            reason = self.guard.ride_out(
                lambda: self._budget_reason(self.extra_cost + self._next_step_cost())
            )
            if reason:
                self.guard.request_stop(reason)
        return self.guard.should_stop()

    def budget_reason(self, cost: int) -> str:
        """ "budget" when a total cost of `cost` would pass the job's max_cost, "spend_limit" when
        the organization's spend cap leaves the job no room for it, else "". Asking the cap for
        more waits out a short outage; an attempt lost meanwhile gets its stop reason."""
        reason = self.guard.ride_out(lambda: self._budget_reason(cost))
        return self.guard.stop_reason if reason is None else reason

    def _budget_reason(self, cost: int) -> str:
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
        self._write(actions.add_event, without_paths(message))

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
            self._step_metrics(event)
        elif event.kind == "eval":
            self._metrics(event, event.metrics, message=_eval_message(event))
        elif event.kind == "checkpoint" and event.checkpoint_dir:
            key = f"{job_prefix('checkpoints', self.job.organization.public_id, self.job.public_id)}/step-{event.step}"
            upload_dir(Path(event.checkpoint_dir), key)
            # The checkpoint is callable as a model once saved: the work up to it is billed with it.
            self._write(
                actions.add_checkpoint,
                step=event.step,
                epoch=event.epoch,
                metrics=_json_safe(event.metrics),
                artifact_key=key,
                model_name=f"{self.model_name}:ckpt-step-{event.step}",
                trained_tokens=event.trained_tokens,
                usage=self.usage(event.trained_tokens),
                usage_models=self.extra_models,
            )
        elif event.kind == "log" and event.message:
            if isinstance(event.metrics.get("valid_examples"), int):
                self.valid_examples = event.metrics["valid_examples"]
            self.log(event.message)

    def _write(self, action: Any, *args: Any, **kwargs: Any) -> None:
        """A fenced write from the training loop. A short database outage does not end the attempt:
        the write waits here (in order) and goes out with the next one; the heartbeat thread decides
        when the outage is too long."""
        self._queue_step_rows()  # the steps before this write go out before it
        self.pending.append((action, args, kwargs))
        self.flush()

    def _queue_step_rows(self) -> None:
        if self.step_rows:
            self.pending.append((actions.add_metrics, (self.step_rows,), {}))
            self.step_rows = []
        self.rows_queued_at = time.monotonic()

    def flush(self) -> None:
        """Writes what is pending, in order; during an outage it stays pending (the training goes on)
        and goes out with a later write, or with `drain`."""
        try:
            self._write_pending()
        except DatabaseError as exc:
            if not is_outage(exc):
                raise
            if not self.outage:
                logger.warning(
                    "job %s: progress write failed; kept for later", self.job.public_id, exc_info=True
                )
                self.outage = True
            connection.close()  # a broken connection stays broken until closed
            del self.pending[:-MAX_PENDING_WRITES]

    def drain(self) -> None:
        """Writes everything pending before the attempt ends (its finish reads the events and
        follows the checkpoints), waiting out a short outage; nothing once the attempt is lost."""
        self.guard.ride_out(self._write_pending)
        if self.guard.lost:
            self.pending.clear()

    def _write_pending(self) -> None:
        # Each write is fenced on the attempt and safe to repeat should its answer be lost: a bill
        # is of the job's running counts, so one already on the books adds nothing the second time.
        self._queue_step_rows()
        while self.pending and not self.guard.lost:
            action, args, kwargs = self.pending[0]
            written = action(self.job.pk, self.job.attempt, *args, **kwargs)
            self.pending.pop(0)
            self.outage = False
            if not written:  # another attempt owns the job now
                self.guard.request_stop(FENCED)
        if self.guard.lost:
            self.pending.clear()

    def _progress(self, event: Any) -> None:
        rate = self.rate.update(time.monotonic(), event.step)
        remaining = max(event.total_steps - event.step, 0)
        self.last_progress = {
            "step": event.step,
            "total_steps": event.total_steps,
            "epoch": event.epoch,
            "percent": round(100 * event.step / max(event.total_steps, 1), 1),
            # None until the first window is measured: the first steps (warm-up, caches) mislead.
            "eta_seconds": round(remaining / rate) if rate else None,
            "trained_tokens": event.trained_tokens,
        }
        self.guard.set_progress(self.last_progress)

    def final_progress(self, steps: int, succeeded: bool) -> dict[str, Any]:
        """The progress a finished attempt leaves: its last step, and 100% when the job succeeded
        (early stopping and max_cost end a job before its planned last step)."""
        total = self.last_progress.get("total_steps") or steps
        percent = 100.0 if succeeded else round(100 * steps / max(total, 1), 1)
        return {
            **self.last_progress,
            "step": steps,
            "total_steps": total,
            "percent": percent,
            "eta_seconds": 0,
        }

    def _step_metrics(self, event: Any) -> None:
        """Every step's metrics go to the loss curve and the results file, written in batches."""
        data = {"step": event.step, "total_steps": event.total_steps, "epoch": event.epoch}
        # the token accuracy from SFT only, the rewards from DPO only
        for key in (
            "train_loss",
            "train_mean_token_accuracy",
            "train_rewards_margin",
            "train_rewards_accuracy",
        ):
            value = event.metrics.get(key)
            if _is_metric(value):
                data[key] = value
        # The message says so when the loss is NaN or infinite (a diverged run); the curve skips it.
        loss = event.metrics.get("train_loss")
        message = f"Step {event.step}/{event.total_steps}" + (
            f": train_loss {loss:.4f}" if isinstance(loss, int | float) and not isinstance(loss, bool) else ""
        )
        self.step_rows.append((message, data))
        interval = settings.JOB_PROGRESS_INTERVAL_SECONDS
        if len(self.step_rows) >= METRICS_BATCH_ROWS or time.monotonic() - self.rows_queued_at >= interval:
            self.flush()

    def _metrics(self, event: Any, metrics: dict[str, Any], message: str | None = None) -> None:
        data = {"step": event.step, "total_steps": event.total_steps, "epoch": event.epoch}
        data.update({k: v for k, v in metrics.items() if _is_metric(v)})
        self._write(
            actions.add_event, message or f"Step {event.step}/{event.total_steps}", type="metrics", data=data
        )


def _is_metric(value: Any) -> bool:
    """A number the loss curve can show and a JSON column can hold: PostgreSQL refuses NaN and
    infinity in JSON, and such a row, written again and again, would hold back every write after it."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` without NaN or infinite values, which a JSON column cannot hold."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}


def _eval_message(event: Any) -> str:
    metrics = event.metrics
    parts = [f"Epoch {event.epoch} evaluated"]
    if "valid_loss" in metrics:
        parts.append(f"valid_loss {metrics['valid_loss']:.4f}")
    if "accuracy" in metrics:
        parts.append(f"accuracy {metrics['accuracy']:.3f}")
    if "eval_score" in metrics:  # a fine-tune scored by an eval (workers/runners/checkpoint_eval.py)
        parts.append(
            f"eval score {metrics['eval_score']:.1%} ({metrics.get('eval_passed')} of {metrics.get('eval_items')})"
        )
    return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def _worker_roots() -> list[str]:
    roots = {
        settings.VAR_DIR,
        settings.MEDIA_ROOT,
        settings.MODEL_CACHE_DIR,
        tempfile.gettempdir(),
        sys.prefix,
    }
    return sorted(
        (str(root).rstrip("/") for root in roots if str(root) not in ("", "/")), key=len, reverse=True
    )


def without_paths(text: str) -> str:
    """A message for the customer, with any path on this worker cut to its last part. The runtime's
    own messages name no paths; this catches a library's error that quotes one (a model file, a
    tokenizer directory)."""
    for root in _worker_roots():
        text = re.sub(re.escape(root) + r"/(?:[^\s/'\"]+/)*", "", text)
    return text
