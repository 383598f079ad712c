"""`make run` (scripts/run.py): Ctrl-C stops every process each child started, so the port is free
for the next run, and a port already taken is named with the process that holds it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc (Linux)")

# A stand-in for gunicorn: the child starts a grandchild that holds the port, as gunicorn's master
# starts the workers that serve it. The grandchild ignores SIGINT, like a worker draining its
# requests; with "ignore-term" it ignores SIGTERM too, like one that never finishes.
STAND_IN = """
import os, signal, socket, subprocess, sys, time
port, mode, role, pids = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if role == "grandchild":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    with open(pids, "a") as f:
        f.write(f"{os.getpid()} {os.getpgid(0)}\\n")
    while True:
        time.sleep(1)
subprocess.Popen([sys.executable, __file__, str(port), mode, "grandchild", pids])
while True:
    time.sleep(1)
"""
# run.py's process management alone, as `make run` uses it, with the stand-in as its only child.
SUPERVISOR = """
import os, sys
sys.path.insert(0, sys.argv[1])
import run
command = [sys.executable, sys.argv[2], sys.argv[3], sys.argv[4], "child", sys.argv[5]]
sys.exit(run.supervise({"stand-in": command}, os.environ, stop_seconds=float(sys.argv[6])))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def can_bind(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def live_processes_of_group(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (an orphan's zombie waits for init, not for us)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, _, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except OSError:
                continue
            if int(pgrp) == pgid and state != "Z":
                found.append(int(entry.name))
    return found


def run_and_interrupt(
    tmp_path: Path, mode: str, stop_seconds: float
) -> tuple[subprocess.CompletedProcess[str], int, int]:
    """Starts the supervisor with the stand-in, waits for the grandchild to hold the port, then
    presses Ctrl-C: SIGINT to the supervisor's whole process group, as a terminal sends it."""
    port = free_port()
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    (tmp_path / "supervisor.py").write_text(SUPERVISOR)
    pids = tmp_path / "pids"
    command = [
        sys.executable,
        str(tmp_path / "supervisor.py"),
        str(ROOT / "scripts"),
        str(tmp_path / "stand_in.py"),
        str(port),
        mode,
        str(pids),
        str(stop_seconds),
    ]
    supervisor = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        wait_for(lambda: answers(port) and pids.exists() and pids.read_text().strip(), timeout=60)
        grandchild, group = (int(value) for value in pids.read_text().split())
        os.killpg(supervisor.pid, signal.SIGINT)
        output, _ = supervisor.communicate(timeout=60)
    finally:  # whatever happened, this test leaves no process behind
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        if pids.exists() and pids.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pids.read_text().split()[1]), signal.SIGKILL)
    return subprocess.CompletedProcess(command, supervisor.returncode, output), port, group


def test_ctrl_c_stops_the_grandchildren_and_frees_the_port(tmp_path: Path) -> None:
    # given a child whose grandchild holds the port and ignores SIGINT
    # when Ctrl-C is pressed
    result, port, group = run_and_interrupt(tmp_path, "drains", stop_seconds=20)

    # then
    assert result.returncode == 0, result.stdout
    assert live_processes_of_group(group) == []
    assert can_bind(port)
    assert "killed" not in result.stdout


def test_a_group_that_outlives_the_deadline_is_killed_whole(tmp_path: Path) -> None:
    # given a grandchild that ignores SIGTERM as well
    started = time.monotonic()

    # when
    result, port, group = run_and_interrupt(tmp_path, "ignore-term", stop_seconds=1)

    # then
    assert result.returncode == 0, result.stdout
    assert "stand-in did not stop within 1 s: killed." in result.stdout
    assert live_processes_of_group(group) == []
    assert can_bind(port)
    assert time.monotonic() - started < 60


HOLDER = "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nprint(s.getsockname()[1], flush=True)\ntime.sleep(120)"


def test_a_taken_port_is_named_with_the_process_that_holds_it() -> None:
    # given another process listening on the port
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        # Nothing may be reached if the check let the start go on.
        env = {
            **os.environ,
            "PORT": str(port),
            "DATABASE_URL": "postgres://nobody@127.0.0.1:9/none",
            "REDIS_URL": "redis://127.0.0.1:9/0",
        }

        # when
        result = subprocess.run(
            [sys.executable, "scripts/run.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        holder.kill()
        holder.wait()

    # then
    command = " ".join([sys.executable, "-c", *HOLDER.split()])[:120]
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Port {port} is already in use by PID {holder.pid} ({command}). It may be an earlier `make run` that "
        f"did not stop. Stop it (kill {holder.pid}), or start on another port: PORT={port + 1} make run\n"
    )


def test_a_port_that_is_not_a_number_is_refused() -> None:
    env = {**os.environ, "PORT": "eighty"}

    result = subprocess.run(
        [sys.executable, "scripts/run.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 2
    assert result.stderr == "PORT must be a port number (1-65535), not 'eighty'.\n"
