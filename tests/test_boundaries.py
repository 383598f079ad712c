"""The Django ↔ ML boundary (docs/architecture.md, "The Django ↔ ML boundary"), proved in fresh
interpreters, and the direction of every import, read statically (docs/architecture.md, "Layers")."""

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


# --- Which way imports run (read statically, so an import inside a function counts too) -------------
# The layers, lowest first. A module may import its own unit and any lower layer; the wiring in
# `saas/` sits on top, then the adapters (the API, the dashboard, the Celery side of the workers), then
# jobs, then the apps jobs use, then accounts, then core (docs/architecture.md).
LAYERS = {
    "workers.runtime": 0,
    "apps.core": 1,
    "apps.accounts": 2,
    "apps.projects": 3,
    "apps.registry": 3,
    "apps.billing": 3,
    "apps.jobs": 4,
    "apps.webhooks": 4,
    # Evals are jobs (a run is one) with their own objects: above apps.jobs, below what serves them.
    "apps.evals": 5,
    "apps.api": 6,
    "apps.dashboard": 6,
    "workers": 6,
    "saas": 7,
}
# Edges between units of the same layer, each on purpose.
SIDEWAYS = {
    # A project's uploads are bounded by its organization's plan, and onboarding (a new organization
    # with its default project) gives the organization its Free subscription in the same transaction.
    ("apps.projects", "apps.billing"),
    # A job's status change writes its webhook events in the same transaction (the outbox).
    ("apps.jobs", "apps.webhooks"),
}
# The runtime modules the Django side may import: plain Python, no torch when imported.
# constrain: the web compiles a request's JSON schemas (llguidance, no torch) to refuse a bad one.
RUNTIME_PURE = {
    "workers.runtime.specs",
    "workers.runtime.catalog",
    "workers.runtime.distill",
    "workers.runtime.constrain",
}
ANALYSED = ("apps", "workers", "saas")


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "apps" and len(parts) > 1:
        return ".".join(parts[:2])
    if parts[0] == "workers":
        return "workers.runtime" if parts[1:2] == ["runtime"] else "workers"
    return "saas" if parts[0] == "saas" else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth, relative ones resolved."""
    module = module_of(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package[: len(package) - node.level + 1], *([node.module] if node.module else [])]
                )
            # `from apps import billing` imports the package's submodule.
            found += sorted(
                {(node.lineno, base if unit_of(base) else f"{base}.{a.name}") for a in node.names}
            )
    return found


def import_edges() -> list[tuple[str, str, str]]:
    """(where, importing unit, imported module) for every import of one of our units by another,
    and of django by the runtime."""
    edges = []
    for top in ANALYSED:
        for path in sorted((ROOT / top).rglob("*.py")):
            source = unit_of(module_of(path))
            if "migrations" in path.parts or source is None:  # `apps/__init__.py` only names the package
                continue
            for line, target in imported_modules(path):
                ours = unit_of(target) not in (None, source)
                if ours or (source == "workers.runtime" and target.split(".")[0] == "django"):
                    edges.append((f"{path.relative_to(ROOT)}:{line}", source, target))
    return edges


def is_allowed(source: str, target: str) -> bool:
    target_unit = unit_of(target)
    if target_unit is None:  # django, from the runtime
        return False
    if target_unit == "workers.runtime" and source != "workers":
        return target in RUNTIME_PURE
    return LAYERS[source] > LAYERS[target_unit] or (source, target_unit) in SIDEWAYS


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_of(path)) for top in ANALYSED for path in (ROOT / top).rglob("*.py")}
    assert units - {None} == set(LAYERS)


def test_imports_run_down_the_layers() -> None:
    wrong = [
        f"{where}: {source} imports {target}"
        for where, source, target in import_edges()
        if not is_allowed(source, target)
    ]
    assert wrong == [], "imports against the layers:\n" + "\n".join(wrong)


def test_every_sideways_edge_is_still_needed() -> None:
    used = {(source, unit_of(target)) for _, source, target in import_edges()}
    assert used >= SIDEWAYS


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
