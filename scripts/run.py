"""`make run`: the whole product on one machine, with a demo account.

Finds or starts PostgreSQL and Redis (embedded under var/ unless DATABASE_URL / REDIS_URL are
set), migrates, prepares the offline models, seeds the demo account, then runs web, a GPU-queue
worker, a default-queue worker and beat until Ctrl-C, which stops them all.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import services  # noqa: E402

ROOT = services.ROOT
VAR = services.VAR
PY = sys.executable
BIN = Path(PY).parent
DEMO_EMAIL = "demo@modelworks.localhost"
DEMO_PASSWORD = "modelworks-demo"  # noqa: S105 - a local demo account, printed on purpose


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
    return [str(BIN / "gunicorn"), "-c", "saas/gunicorn_conf.py", "saas.wsgi", "-b", f"127.0.0.1:{port}",
            "-k", "gthread", "--workers", "2", "--threads", "32", "--timeout", "120"]  # fmt: skip


def main() -> int:
    env = dict(os.environ)
    port = env.setdefault("PORT", "8000")
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
        "gpu-worker": [str(BIN / "celery"), "-A", "saas", "worker", "-Q", "gpu", "-c", "1",
                       "-n", "gpu@%h", "-l", "info"],
        "serve-worker": [str(BIN / "celery"), "-A", "saas", "worker", "-Q", "serve", "-c", "1",
                         "-n", "serve@%h", "-l", "info"],
        "default-worker": [str(BIN / "celery"), "-A", "saas", "worker", "-Q", "default", "-c", "2",
                           "-n", "default@%h", "-l", "info"],
        "beat": [str(BIN / "celery"), "-A", "saas", "beat", "-s", beat_schedule, "-l", "info"],
    }  # fmt: skip
    processes = {name: subprocess.Popen(cmd, cwd=ROOT, env=env) for name, cmd in commands.items()}

    print(
        "\n"
        f"  Modelworks is running at http://127.0.0.1:{port}/\n"
        f"  Demo login:  {demo['email']} / {DEMO_PASSWORD}\n"
        f"  API key:     {demo['api_key']}\n"
        f"  Try it:      OpenAI(base_url='http://127.0.0.1:{port}/v1', api_key='{demo['api_key']}')\n"
        "  Ctrl-C stops everything.\n",
        flush=True,
    )

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} exited with {process.returncode}; stopping the rest.", flush=True)
                exit_code = 1
                stopping = True
        time.sleep(0.5)

    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    if redis_process is not None:
        redis_process.terminate()
        redis_process.wait(timeout=10)
    print("Stopped.", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
