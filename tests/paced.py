"""Imported by a test worker only (`CELERY_WORKER_INCLUDE`), never by a production one: its
training steps and decoding steps take at least TEST_MIN_TRAIN_STEP_SECONDS and
TEST_MIN_DECODE_STEP_SECONDS (0, off, when unset), each step still running as always.

A test that needs work to outlast something (the broker's visibility timeout, a time limit, a page's
progress polls, requests that arrive while a long one decodes) then gets it on any machine: N steps
last at least N times the pace, however fast the CPU. A fast one finished such jobs in a fifth of
the time the tests had assumed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from workers.runtime import generate, training


def _paced(step: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    def paced(*args: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        try:
            return step(*args, **kwargs)
        finally:
            # A time limit's exception (raised from a signal handler) interrupts the sleep as it
            # would the step: the job stops as it would without the pacing.
            time.sleep(max(0.0, seconds - (time.monotonic() - began)))

    return paced


TRAIN_STEP = float(os.environ.get("TEST_MIN_TRAIN_STEP_SECONDS", "0"))
DECODE_STEP = float(os.environ.get("TEST_MIN_DECODE_STEP_SECONDS", "0"))
# Both modules look the names up at each step.
if TRAIN_STEP:
    training.train_step = _paced(training.train_step, TRAIN_STEP)
if DECODE_STEP:
    generate._step = _paced(generate._step, DECODE_STEP)
