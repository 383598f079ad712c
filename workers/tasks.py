"""Celery tasks: thin adapters between job rows and the ML runtime (DESIGN.md §3).

Tasks take primitive ids, re-fetch, return quietly if the row is gone or already handled, call
one function, and record the outcome. Heavy imports (torch, transformers) happen inside task
bodies, so importing this module stays cheap and torch-free.
"""

from __future__ import annotations

import socket
from typing import Any

from saas.celery import app


@app.task(name="system.ping", queue="default", ignore_result=False, soft_time_limit=10, time_limit=20)
def ping(payload: Any = None) -> dict[str, Any]:
    """Answers with the host and the payload: proves a real worker consumed the message."""
    return {"pong": payload, "host": socket.gethostname()}
