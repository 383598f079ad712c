"""The boundary of docs/architecture.md, "The Django ↔ ML boundary", proved in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_web_side_never_imports_torch() -> None:
    out = run_python(
        """
import os, pkgutil, importlib, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas.settings")
import django
django.setup()
import apps
names = [m.name for m in pkgutil.walk_packages(apps.__path__, "apps.") if ".migrations" not in m.name]
for name in names:
    importlib.import_module(name)
import workers.tasks, saas.urls, saas.wsgi, saas.asgi
heavy = sorted(m for m in ("torch", "transformers", "tokenizers", "safetensors") if m in sys.modules)
print(len(names), heavy)
"""
    )
    count, heavy = out.split(" ", 1)
    assert int(count) > 20
    assert heavy.strip() == "[]"


def test_runtime_never_imports_django() -> None:
    out = run_python(
        """
import pkgutil, importlib, sys
import workers.runtime as runtime
names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "workers.runtime.")]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m == "django" or m.startswith(("django.", "apps.", "saas")))
print(len(names), leaked)
"""
    )
    count, leaked = out.split(" ", 1)
    assert int(count) >= 1
    assert leaked.strip() == "[]"
