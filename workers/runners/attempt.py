"""Keeps a running job's lease alive from the worker process's heartbeat thread, and tells the
work loop when to stop.

Every write goes through `apps.jobs.actions`, fenced on the attempt. The loop stops when the
customer cancels or pauses, when another attempt took the job over (fenced), or when this worker
could not reach PostgreSQL for JOB_SELF_FENCE_SECONDS (it assumes the reaper gave the job away).
A shorter outage does not stop it: the work loop's own database calls wait it out (`ride_out`) or
are kept for later (`workers.runners.progress`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections

from apps.core.tenancy import TENANT_MISMATCH_MESSAGE, foreign_references
from apps.jobs import actions
from apps.jobs.models import StopReason

logger = logging.getLogger(__name__)

FENCED = "fenced"
SELF_FENCED = "self_fenced"
# An attempt stopped by money: its own max_cost, or its organization's spend cap. Each leaves its
# StopReason on the job.
BUDGET = "budget"
SPEND_LIMIT = "spend_limit"
MONEY_STOPS = {BUDGET: StopReason.BUDGET_REACHED, SPEND_LIMIT: StopReason.SPEND_LIMIT_REACHED}
# What an unreachable PostgreSQL raises (stopped, restarting, a cut connection). Other database
# errors (a constraint, a bad query) are not outages: waiting would not fix them.
OUTAGE_ERRORS = (OperationalError, InterfaceError)


# SQLSTATEs of a session PostgreSQL ended, whatever class of error the driver maps them to: its
# idle-in-transaction timeout (a worker frozen inside a transaction), and the connection-exception
# (08) and operator-intervention (57P: shutdown, restart) classes.
_ENDED_SESSION = ("25P03", "08", "57P")


def is_outage(exc: BaseException) -> bool:
    """Whether a database error is an outage that waiting and a fresh connection fix: PostgreSQL
    unreachable, or a session it ended. Not a write it refused (a constraint, a bad query)."""
    if isinstance(exc, OUTAGE_ERRORS):
        return True
    sqlstate = getattr(exc.__cause__, "sqlstate", None) or ""
    return isinstance(exc, DatabaseError) and sqlstate.startswith(_ENDED_SESSION)


T = TypeVar("T")


class AttemptGuard:
    """A running attempt's lease, kept by the worker process's heartbeat thread (`_Heartbeats`)
    from its first poll interval on: an attempt that ends sooner (a request answered in
    milliseconds) costs neither a thread nor a database write."""

    def __init__(self, job_pk: int, attempt: int) -> None:
        self.job_pk = job_pk
        self.attempt = attempt
        self.stop_reason: str = ""  # "", "cancel", "pause", "budget", FENCED, SELF_FENCED
        self._progress: dict[str, Any] | None = None
        self._progress_dirty = False
        self._lock = threading.Lock()
        self._polling = threading.Lock()  # held by the heartbeat thread while it polls this attempt
        self._last_ok = self._last_beat = self._last_progress = 0.0

    def __enter__(self) -> AttemptGuard:
        self._last_ok = self._last_beat = self._last_progress = time.monotonic()
        _heartbeats().add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _heartbeats().remove(self)  # after this returns, nothing more is written for this attempt

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

    def ride_out(self, call: Callable[[], T]) -> T | None:
        """`call()`, a database call of the work loop that cannot be put off (the budget check
        before a step, the writes before the attempt ends), waiting out an outage shorter than the
        self-fence: it is tried again on a fresh connection until PostgreSQL answers. None, without
        calling it again, once the attempt is lost: fenced or self-fenced, by the heartbeat thread or
        here after JOB_SELF_FENCE_SECONDS of failures (the same rule, in case the beats stopped).
        `call` must be safe to repeat: a failed call may have committed before its answer was lost."""
        failing_since: float | None = None
        while not self.lost:
            try:
                return call()
            except DatabaseError as exc:
                if not is_outage(exc):
                    raise
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    logger.warning(
                        "job %s: database unreachable from the work loop; waiting", self.job_pk, exc_info=True
                    )
                # Django never reopens a broken connection on its own inside a task: drop it, so the
                # next try reconnects once PostgreSQL is back.
                connections.close_all()
                if now - failing_since >= settings.JOB_SELF_FENCE_SECONDS:
                    logger.error(
                        "job %s: no database for %.0fs; abandoning attempt", self.job_pk, now - failing_since
                    )
                    self.stop_reason = SELF_FENCED
                    return None
                time.sleep(min(1.0, settings.JOB_HEARTBEAT_SECONDS))
        return None

    def _tick(self, now: float) -> bool:
        """One poll of the lease: the heartbeat (with progress) when due, else a read of the stop
        request. False once the attempt is lost and needs no more polls."""
        heartbeat_every = settings.JOB_HEARTBEAT_SECONDS
        progress_every = settings.JOB_PROGRESS_INTERVAL_SECONDS
        with self._lock:
            progress = self._progress if self._progress_dirty else None
        due = now - self._last_beat >= heartbeat_every or (
            progress and now - self._last_progress >= progress_every
        )
        try:
            if due:
                result = actions.heartbeat(self.job_pk, self.attempt, progress)
                written = time.monotonic()
                _warn_if_late(self.job_pk, written - self._last_beat, written - now)
                self._last_beat = now
                if progress is not None:
                    self._last_progress = now
                    with self._lock:
                        self._progress_dirty = self._progress is not progress
            else:
                result = actions.stop_requested(self.job_pk, self.attempt)
            self._last_ok = now
        except DatabaseError:
            logger.warning("job %s: heartbeat failed", self.job_pk, exc_info=True)
            # Django never reopens a broken connection on its own outside a request: drop it, so
            # the next beat reconnects once PostgreSQL is back.
            connections.close_all()
            if now - self._last_ok >= settings.JOB_SELF_FENCE_SECONDS:
                logger.error(
                    "job %s: no database for %.0fs; abandoning attempt", self.job_pk, now - self._last_ok
                )
                self.stop_reason = SELF_FENCED
                return False
            return True
        if result is None:
            logger.warning("job %s: attempt %s was fenced off", self.job_pk, self.attempt)
            self.stop_reason = FENCED
            return False
        if result:
            self.request_stop(result)
        return True


class _Heartbeats:
    """The one thread of a worker process that keeps the leases of its running attempts (a batch
    of requests runs several at once), with its own database connection. It polls often enough
    that a cancel is seen within about a second."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._guards: dict[AttemptGuard, float] = {}  # guard -> when it is next polled
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()

    def add(self, guard: AttemptGuard) -> None:
        # No notify: the thread wakes at least every poll and then sleeps until the next attempt is
        # due, and an attempt is not due before one poll has passed. Waking it here cost a serve
        # worker a GIL hand-off on every request (measured: 5% of a sub-millisecond classification's
        # worker time), for nothing.
        with self._lock:
            self._guards[guard] = time.monotonic() + _poll_seconds()  # its first poll

    def remove(self, guard: AttemptGuard) -> None:
        with self._lock:
            self._guards.pop(guard, None)
        # A poll of it under way ends first, unless PostgreSQL holds it: its write is fenced anyway.
        if guard._polling.acquire(timeout=10):
            guard._polling.release()

    def _run(self) -> None:
        while True:
            poll = _poll_seconds()
            with self._lock:
                now = time.monotonic()
                # Each attempt on its own clock, a poll after it started and every poll after that
                # (its claim wrote heartbeat_at); an attempt added while this sleeps is seen within a poll.
                due = [guard for guard, at in self._guards.items() if at <= now]
            for guard in due:  # outside the lock: a poll may wait on PostgreSQL for seconds
                with guard._polling:
                    with self._lock:
                        if guard not in self._guards:
                            continue  # it ended meanwhile
                    # Its own clock: the polls before it may each have waited seconds on PostgreSQL,
                    # and self-fencing must not come late.
                    if not self._poll(guard, time.monotonic()):
                        self.remove_lost(guard)
                # Next a poll after this one ended: a write PostgreSQL held up is not followed at once
                # by another.
                with self._lock:
                    if guard in self._guards:
                        self._guards[guard] = time.monotonic() + poll
            with self._lock:
                wake = min([*self._guards.values(), time.monotonic() + poll])
            time.sleep(max(0.0, wake - time.monotonic()))

    @staticmethod
    def _poll(guard: AttemptGuard, now: float) -> bool:
        """One attempt's poll. A bug (or a MemoryError) in it must not end the thread that keeps
        every other attempt of this process: it is logged, and the attempt is polled again."""
        try:
            return guard._tick(now)
        except Exception:
            logger.exception("job %s: heartbeat poll failed", guard.job_pk)
            return True

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def remove_lost(self, guard: AttemptGuard) -> None:
        with self._lock:
            self._guards.pop(guard, None)


def _poll_seconds() -> float:
    return min(1.0, settings.JOB_HEARTBEAT_SECONDS, settings.JOB_PROGRESS_INTERVAL_SECONDS)


_service: _Heartbeats | None = None
_service_lock = threading.Lock()


def _heartbeats() -> _Heartbeats:
    """The process's heartbeat thread, started on first use, and again in a forked child (which
    inherits the object but not the thread) or should it ever have died."""
    global _service
    with _service_lock:
        if _service is None or _service.pid != os.getpid() or not _service.alive:
            _service = _Heartbeats()
        return _service


def _warn_if_late(job_pk: int, gap: float, write: float) -> None:
    """A beat that came past half the stale threshold put the lease at risk: the reaper takes the job
    once no beat lands for JOB_STALE_SECONDS. Say how late, and whether the write or the wake-up
    (a starved CPU, a long call holding the GIL) was slow, before it costs an attempt."""
    if gap >= settings.JOB_STALE_SECONDS / 2:
        logger.warning(
            "job %s: heartbeat %.1fs after the last one (the write took %.1fs); the job counts as lost at %gs",
            job_pk,
            gap,
            write,
            settings.JOB_STALE_SECONDS,
        )


def hard_time_limit() -> float | None:
    """The hard time limit (seconds) the pool enforces on the task running now: the message's own,
    else the task's. None outside a worker task, or without a limit."""
    from celery import current_task

    request = getattr(current_task, "request", None)  # the proxy has no request outside a task
    if request is None or request.called_directly:
        return None
    message_limit = (request.timelimit or (None, None))[0]
    return message_limit or current_task.time_limit or None


OUT_OF_MEMORY_MESSAGE = (
    "The job ran out of memory on its worker and was stopped. It will not be retried: use a smaller "
    "batch size, shorter examples or a smaller base model, then start a new job."
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, or torch's allocation failures (CPU: a RuntimeError from its allocator;
    CUDA: OutOfMemoryError), recognised without importing torch here."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def run_claimed(job_id: str, run: Any, *, with_files: bool = True) -> None:
    """Claims the job (a duplicate delivery claims nothing and returns) and runs it. A bug in
    `run` fails the job with `internal_error` instead of leaving it running until the reaper,
    and tells a waiting request at once. Running out of memory fails it with `out_of_memory`:
    the same job on the same worker would run out again, so it is not retried."""
    job = actions.claim(job_id, time_limit=hard_time_limit(), with_files=with_files)
    if job is None:
        return
    foreign = foreign_references(job)
    if foreign:  # a forged or corrupted message: never open another organization's data
        logger.error("job %s refers to rows outside its organization: %s", job_id, ", ".join(foreign))
        _fail(job, {"code": "tenant_mismatch", "message": TENANT_MISMATCH_MESSAGE, "param": foreign[0]})
        return
    try:
        run(job)
    except Exception as exc:
        if not is_out_of_memory(exc):
            logger.exception("job %s failed unexpectedly", job_id)
            message = "The job failed because of an internal error. Retry, and contact us with the job id if it persists."
            _fail(job, {"code": "internal_error", "message": message, "param": None})
            raise
        logger.warning("job %s ran out of memory: %s", job_id, exc)
    else:
        return
    # Out of the except block: the traceback, and the frames holding the buffers that did not fit, are
    # gone, so recording the failure has memory to work with.
    _fail(job, {"code": "out_of_memory", "message": OUT_OF_MEMORY_MESSAGE, "param": None})


def drop_interrupted_connections() -> None:
    """Closes each database connection an exception left in the middle of a command, so that the
    write recording the failure reconnects. The soft time limit's signal (or any exception raised
    from a signal handler) can land while a query waits on PostgreSQL: psycopg then keeps the
    connection busy, and every later query on it fails with "another command is already in
    progress", so the failure would go unrecorded and the job be re-run as if its worker had died."""
    from psycopg.pq import TransactionStatus

    for connection in connections.all(initialized_only=True):
        raw = connection.connection
        if raw is not None and raw.info.transaction_status == TransactionStatus.ACTIVE:
            connection.close()


def _fail(job: Any, error: dict[str, Any]) -> None:
    from apps.jobs import relay
    from apps.jobs.models import JobStatus

    drop_interrupted_connections()
    if (
        actions.finish(job.pk, job.attempt, JobStatus.FAILED, error=error, message=error["message"])
        is not None
    ):
        relay.push(job.public_id, {"type": "error", "status": 500, **error})
