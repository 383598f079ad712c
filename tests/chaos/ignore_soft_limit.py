"""Imported by a test worker only (`CELERY_WORKER_INCLUDE`), never by a production one: its pool
children ignore the soft time limit, as code stuck in a C call that never returns to Python would.
Only the hard limit stops their jobs (docs/reliability.md, T6)."""

from __future__ import annotations

import signal
from typing import Any

from celery.signals import task_prerun


@task_prerun.connect
def ignore_soft_time_limit(**_: Any) -> None:
    # The pool raises SoftTimeLimitExceeded in the child from its SIGUSR1 handler.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
