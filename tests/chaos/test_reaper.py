"""The reaper never takes a job away from a healthy worker (reliability.md T9 d): several jobs run
while the machine is CPU-bound, the reaper runs every second with the scaled stale threshold, and
every job finishes in its first attempt."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from apps.jobs import actions
from apps.jobs.models import Job, JobEvent, JobStatus
from tests.chaos.conftest import finished, job_row, submit_fine_tune, upload
from tests.conftest import sentiment_csv, use_plan, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# A busy loop that ends by itself, even if the test that started it is killed.
BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def cpu_hogs(count: int, seconds: float = 300) -> Iterator[None]:
    """`count` processes that keep a core busy each, for the block's duration."""
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=seconds)]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_t9d_under_cpu_load_the_reaper_takes_no_healthy_job(
    api: Any, alice_org: Any, tiny_base: Any, start_worker: Any
) -> None:
    use_plan(alice_org, "team")  # several fine-tunes at once
    start_worker(concurrency=4)  # four jobs heartbeat at once, on cores the hogs keep busy
    file_id = upload(api, sentiment_csv(60))
    reaped: Counter[str] = Counter()
    oldest_heartbeat = 0.0  # seconds, over the running jobs at each reaper run (reported, not asserted)
    with cpu_hogs(3 * (os.cpu_count() or 2)):
        job_ids = [submit_fine_tune(api, epochs=8, file_id=file_id) for _ in range(8)]

        def all_finished() -> bool:
            nonlocal oldest_heartbeat
            now = timezone.now()
            for beat in Job.objects.filter(status=JobStatus.RUNNING).values_list("heartbeat_at", flat=True):
                oldest_heartbeat = max(oldest_heartbeat, (now - beat).total_seconds())
            reaped.update(actions.reap())  # every second, as beat would
            return all(finished(job_id) for job_id in job_ids)

        wait_for(all_finished, timeout=300, interval=1.0, message="the jobs did not finish under load")
    print(f"T9d: reaper counts {dict(reaped)}; oldest heartbeat seen {oldest_heartbeat:.1f}s")
    lost = list(
        JobEvent.objects.filter(message__startswith="Worker lost").values_list("job__public_id", "message")
    )
    assert lost == [], "the reaper took jobs from healthy workers"
    assert reaped["requeued"] == reaped["failed"] == reaped["timed_out"] == 0, reaped
    for job in map(job_row, job_ids):
        assert job.status == JobStatus.SUCCEEDED, (job.public_id, job.error)
        assert job.attempt == 1
        assert list(job.usage.values_list("unit", "quantity")) == [("trained_tokens", job.trained_tokens)]
