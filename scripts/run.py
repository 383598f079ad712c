"""`make run`: the whole product on one machine, with a demo account.

Finds or starts PostgreSQL and Redis (embedded under var/ unless DATABASE_URL / REDIS_URL are
set), migrates, prepares the offline models, seeds the demo account, then runs web, a GPU-queue
worker, a default-queue worker and beat until Ctrl-C, which stops them all.

Each of those runs in a process group of its own, and stopping one stops its whole group: gunicorn's
workers and celery's pool children too, which would otherwise outlive their parent and keep the port
(or a task) after Ctrl-C. The web port is checked before anything starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import services  # noqa: E402

ROOT = services.ROOT
VAR = services.VAR
PY = sys.executable
BIN = Path(PY).parent
DEMO_EMAIL = "demo@modelworks.localhost"
DEMO_PASSWORD = "modelworks-demo"  # noqa: S105 - a local demo account, printed on purpose
# How long a stopped group may take to finish (gunicorn drains requests, celery its tasks) before it
# is killed.
STOP_SECONDS = 20.0
PROC = Path("/proc")


def persistent_secret(name: str, make: str = "token") -> str:
    """A random secret kept under var/, so sessions and encrypted keys survive restarts."""
    path = VAR / name
    if not path.exists():
        VAR.mkdir(parents=True, exist_ok=True)
        if make == "fernet":
            import base64

            value = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        else:
            value = secrets.token_urlsafe(50)
        path.write_text(value)
        path.chmod(0o600)
    return path.read_text().strip()


def web_command(port: str) -> list[str]:
    # saas/gunicorn_conf.py: the keep-alive that outlives a proxy's, and an access log without the
    # tokens of invitation and password-reset links, as in production.
    return [
        str(BIN / "gunicorn"),
        "-c",
        "saas/gunicorn_conf.py",
        "saas.wsgi",
        "-b",
        f"127.0.0.1:{port}",
        "-k",
        "gthread",
        "--workers",
        "2",
        "--threads",
        "32",
        "--timeout",
        "120",
    ]


# --- The web port ----------------------------------------------------------------------------------
def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether gunicorn could bind `host:port` now (with SO_REUSEADDR, as gunicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on `port`, from the kernel's tables (Linux)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def _command_line(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    # Arguments are NUL-separated; the message shows them on one line.
    return " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())


def port_holders(port: int) -> list[tuple[int, str]]:
    """(PID, command line) of each process listening on `port`, where this system tells (Linux's
    /proc, for processes we may look into); empty when it cannot."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    holders: list[tuple[int, str]] = []
    if not wanted:
        return holders
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:  # gone, or not ours to look into
            continue
        if links & wanted:
            holders.append((int(entry.name), _command_line(int(entry.name))))
    return sorted(holders)


def port_taken_message(port: int) -> str:
    holders = port_holders(port)
    if holders:
        who = "; ".join(f"PID {pid} ({command[:120] or 'command unknown'})" for pid, command in holders)
        stop = f"Stop it (kill {' '.join(str(pid) for pid, _ in holders)})"
    else:
        who = "another process (this system did not say which)"
        stop = "Stop it"
    return (
        f"Port {port} is already in use by {who}. It may be an earlier `make run` that did not stop. "
        f"{stop}, or start on another port: PORT={port + 1} make run"
    )


# --- Children, each in a process group of its own ------------------------------------------------
def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`. Without /proc: the group leader's
    word, via kill(0)."""
    if not PROC.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses, so split after it.
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def start(command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # A new session makes the child the leader of its own process group (its pgid is its pid), away
    # from the terminal's: Ctrl-C reaches only us, and we stop each group whole.
    return subprocess.Popen(command, cwd=ROOT, env=dict(env), start_new_session=True)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has gone already
        os.killpg(process.pid, sig)


def stop_all(processes: Mapping[str, subprocess.Popen[bytes]], seconds: float = STOP_SECONDS) -> list[str]:
    """SIGTERM to every child's whole group; SIGKILL to the groups still there after `seconds`.
    Returns the names of the groups that had to be killed."""
    for process in processes.values():
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    waiting = dict(processes)
    while waiting and time.monotonic() < deadline:
        for name, process in list(waiting.items()):
            process.poll()  # reaps the leader, so a finished one stops counting
            if not group_members(process.pid):
                del waiting[name]
        time.sleep(0.1)
    for process in waiting.values():
        _signal_group(process, signal.SIGKILL)
    for process in processes.values():
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"process {process.pid} did not exit after SIGKILL", flush=True)
    return list(waiting)


def supervise(
    commands: Mapping[str, list[str]],
    env: Mapping[str, str],
    *,
    stop_seconds: float = STOP_SECONDS,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Runs `commands` until Ctrl-C (SIGINT), SIGTERM or one of them exits, then stops them all.
    0 after a Ctrl-C or SIGTERM, 1 when a child exited by itself."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    processes = {name: start(command, env) for name, command in commands.items()}
    if on_started is not None:
        on_started()
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} exited with {process.returncode}; stopping the rest.", flush=True)
                exit_code = 1
                stopping = True
        time.sleep(0.5)
    print("Stopping…", flush=True)
    for name in stop_all(processes, stop_seconds):
        print(f"{name} did not stop within {stop_seconds:g} s: killed.", flush=True)
    return exit_code


def main() -> int:
    env = dict(os.environ)
    port = env.setdefault("PORT", "8000")
    if not port.isdigit() or not 0 < int(port) < 65536:
        print(f"PORT must be a port number (1-65535), not {port!r}.", file=sys.stderr)
        return 2
    if not port_is_free(int(port)):
        print(port_taken_message(int(port)), file=sys.stderr)
        return 1
    env.setdefault("DEBUG", "true")
    env.setdefault("SECRET_KEY", persistent_secret("secret_key"))
    env.setdefault("FIELD_ENCRYPTION_KEY", persistent_secret("field_encryption_key", "fernet"))
    env.setdefault("SITE_URL", f"http://127.0.0.1:{port}")
    env.setdefault("PYTHONUNBUFFERED", "1")

    (VAR / "staticfiles").mkdir(parents=True, exist_ok=True)
    keep: list[object] = []
    redis_process = None
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"], server = services.embedded_postgres("modelworks")
        keep.append(server)
        print(f"PostgreSQL: embedded, under {VAR / 'postgres'}")
    else:
        print("PostgreSQL: from DATABASE_URL")
    if not env.get("REDIS_URL"):
        env["REDIS_URL"], redis_process = services.embedded_redis()
        print(f"Redis: embedded, {env['REDIS_URL']}")
    else:
        print("Redis: from REDIS_URL")

    def manage(*args: str, capture: bool = False) -> str:
        result = subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=env, check=True, text=True, capture_output=capture
        )
        return result.stdout if capture else ""

    manage("migrate", "--no-input", "-v", "0")
    manage("prepare_models")
    demo = json.loads(manage("create_tenant", DEMO_EMAIL, "--password", DEMO_PASSWORD, capture=True))

    beat_schedule = str(VAR / "celerybeat-schedule")
    commands = {
        "web": web_command(port),
        "gpu-worker": [
            str(BIN / "celery"),
            "-A",
            "saas",
            "worker",
            "-Q",
            "gpu",
            "-c",
            "1",
            "-n",
            "gpu@%h",
            "-l",
            "info",
        ],
        "serve-worker": [
            str(BIN / "celery"),
            "-A",
            "saas",
            "worker",
            "-Q",
            "serve",
            "-c",
            "1",
            "-n",
            "serve@%h",
            "-l",
            "info",
        ],
        "default-worker": [
            str(BIN / "celery"),
            "-A",
            "saas",
            "worker",
            "-Q",
            "default",
            "-c",
            "2",
            "-n",
            "default@%h",
            "-l",
            "info",
        ],
        "beat": [str(BIN / "celery"), "-A", "saas", "beat", "-s", beat_schedule, "-l", "info"],
    }

    def banner() -> None:
        print(
            "\n"
            f"  Modelworks is running at http://127.0.0.1:{port}/\n"
            f"  Demo login:  {demo['email']} / {DEMO_PASSWORD}\n"
            f"  API key:     {demo['api_key']}\n"
            f"  Try it:      OpenAI(base_url='http://127.0.0.1:{port}/v1', api_key='{demo['api_key']}')\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )

    exit_code = supervise(commands, env, on_started=banner)
    if redis_process is not None:
        redis_process.terminate()
        redis_process.wait(timeout=10)
    print("Stopped.", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
