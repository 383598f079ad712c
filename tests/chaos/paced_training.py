"""Imported by a test worker only (`CELERY_WORKER_INCLUDE`), never by a production one: each
training step of its fine-tunes takes at least CHAOS_MIN_STEP_SECONDS (0.05 by default), the step
itself running as always. The tests that need a job to outlast a deadline (the broker's visibility
timeout, a time limit) then get one on any machine: a job of N steps lasts at least N times that,
however fast the CPU (a fast one finished the same job in a fifth of the time a test had assumed)."""

from __future__ import annotations

import os
import time
from typing import Any

from workers.runtime import training

_train_step = training.train_step
MIN_STEP_SECONDS = float(os.environ.get("CHAOS_MIN_STEP_SECONDS", "0.05"))


def paced_train_step(*args: Any, **kwargs: Any) -> float:
    began = time.monotonic()
    try:
        return _train_step(*args, **kwargs)
    finally:
        # A time limit's exception (raised from a signal handler) interrupts the sleep as it
        # would the step: the job stops as it would without the pacing.
        time.sleep(max(0.0, MIN_STEP_SECONDS - (time.monotonic() - began)))


training.train_step = paced_train_step  # train() looks the name up at each step
