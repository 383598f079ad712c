"""The Django ↔ ML boundary (DESIGN.md §3), proved in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
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


def test_the_runners_import_no_torch() -> None:
    out = run_python(
        """
import os, pkgutil, importlib, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas.settings")
import django
django.setup()
import workers.runners as runners
names = [m.name for m in pkgutil.walk_packages(runners.__path__, "workers.runners.")]
for name in names:
    importlib.import_module(name)
heavy = sorted(m for m in ("torch", "transformers", "tokenizers", "safetensors") if m in sys.modules)
print(len(names), heavy)
"""
    )
    count, heavy = out.split(" ", 1)
    assert int(count) >= 6
    assert heavy.strip() == "[]"


def package_imports(package: str) -> dict[str, set[str]]:
    """Each module of `package` (dotted) and the modules of it that it imports, inside functions too."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.joinpath(*package.split(".")).glob("*.py")):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module == package:
                imported.update(f"{package}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        graph[f"{package}.{path.stem}"] = {name for name in imported if name.startswith(f"{package}.")}
    return graph


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None


def test_the_runners_import_each_other_without_a_cycle() -> None:
    graph = package_imports("workers.runners")
    assert "workers.runners.distill" in graph["workers.runners.finetune"]  # the graph sees imports at all
    assert_no_cycle(graph)


def test_the_runtime_modules_import_each_other_without_a_cycle() -> None:
    graph = package_imports("workers.runtime")
    # the run uses the LM data and LoRA modules; they never need the run
    assert {"workers.runtime.lm_data", "workers.runtime.lora"} <= graph["workers.runtime.sft"]
    assert "workers.runtime.sft" not in graph["workers.runtime.lm_data"] | graph["workers.runtime.lora"]
    assert_no_cycle(graph)
