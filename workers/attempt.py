"""Keeps a running job's lease alive from a side thread, and tells the work loop when to stop.

Every write goes through `apps.jobs.actions`, fenced on the attempt. The loop stops when the
customer cancels or pauses, when another attempt took the job over (fenced), or when this worker
could not reach PostgreSQL for JOB_SELF_FENCE_SECONDS (it assumes the reaper gave the job away).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections

from apps.jobs import actions

logger = logging.getLogger(__name__)

FENCED = "fenced"
SELF_FENCED = "self_fenced"


class AttemptGuard:
    def __init__(self, job_pk: int, attempt: int) -> None:
        self.job_pk = job_pk
        self.attempt = attempt
        self.stop_reason: str = ""  # "", "cancel", "pause", "budget", FENCED, SELF_FENCED
        self._progress: dict[str, Any] | None = None
        self._progress_dirty = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_pk}", daemon=True)

    def __enter__(self) -> AttemptGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._thread.join(timeout=10)

    @property
    def lost(self) -> bool:
        """True when this attempt must not write anything more."""
        return self.stop_reason in (FENCED, SELF_FENCED)

    def should_stop(self) -> bool:
        return bool(self.stop_reason)

    def request_stop(self, reason: str) -> None:
        if not self.stop_reason:
            self.stop_reason = reason

    def set_progress(self, progress: dict[str, Any]) -> None:
        with self._lock:
            self._progress = progress
            self._progress_dirty = True

    def _run(self) -> None:
        heartbeat_every = settings.JOB_HEARTBEAT_SECONDS
        progress_every = settings.JOB_PROGRESS_INTERVAL_SECONDS
        # Poll often enough that a cancel is seen within about a second.
        poll = min(1.0, heartbeat_every, progress_every)
        last_ok = last_beat = last_progress = time.monotonic()
        try:
            while not self._closed.wait(poll):
                now = time.monotonic()
                with self._lock:
                    progress = self._progress if self._progress_dirty else None
                due = now - last_beat >= heartbeat_every or (
                    progress and now - last_progress >= progress_every
                )
                try:
                    if due:
                        result = actions.heartbeat(self.job_pk, self.attempt, progress)
                        last_beat = now
                        if progress is not None:
                            last_progress = now
                            with self._lock:
                                self._progress_dirty = self._progress is not progress
                    else:
                        result = actions.stop_requested(self.job_pk, self.attempt)
                    last_ok = now
                except DatabaseError:
                    logger.warning("job %s: heartbeat failed", self.job_pk, exc_info=True)
                    # Django never reopens a broken connection on its own inside a task: drop it, so
                    # the next beat reconnects once PostgreSQL is back.
                    connections.close_all()
                    if now - last_ok >= settings.JOB_SELF_FENCE_SECONDS:
                        logger.error(
                            "job %s: no database for %.0fs; abandoning attempt", self.job_pk, now - last_ok
                        )
                        self.stop_reason = SELF_FENCED
                        return
                    continue
                if result is None:
                    logger.warning("job %s: attempt %s was fenced off", self.job_pk, self.attempt)
                    self.stop_reason = FENCED
                    return
                if result:
                    self.request_stop(result)
        finally:
            connections.close_all()


def run_claimed(job_id: str, run: Any) -> None:
    """Claims the job (a duplicate delivery claims nothing and returns) and runs it. A bug in
    `run` fails the job with `internal_error` instead of leaving it running until the reaper,
    and tells a waiting request at once."""
    from apps.jobs import relay
    from apps.jobs.models import JobStatus

    job = actions.claim(job_id)
    if job is None:
        return
    try:
        run(job)
    except Exception:
        logger.exception("job %s failed unexpectedly", job_id)
        message = "The job failed because of an internal error. Retry, and contact us with the job id if it persists."
        error = {"code": "internal_error", "message": message, "param": None}
        if actions.finish(job.pk, job.attempt, JobStatus.FAILED, error=error) is not None:
            relay.push(job_id, {"type": "error", "status": 500, **error})
        raise
