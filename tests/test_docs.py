"""The project explains itself: code, tests and docs cite the project's own `docs/`, never a
document that is not in the repository; every citation names a section that exists; and every
test `docs/` names as evidence is defined where it says."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from tests.conftest import ROOT

DOCS = ROOT / "docs"
RELIABILITY = ROOT / "docs/reliability.md"
# Not the repository's own text: the virtualenv, local data, git's store, caches and build output.
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "var",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "node_modules",
    "build",
    "dist",
    "test-artifacts",
    "staticfiles",
}
# Design notes, the house style and reference material kept outside the repository. A reader of the
# repository cannot open them, so nothing in it may send them there. Inside docs/, the name of the
# reliability page without its folder is a relative link to docs/reliability.md itself.
OUTSIDE_DOCUMENT = re.compile(r"(?<![\w/-])(?:DESIGN|STYLE|openai-api)\.md")
UNPREFIXED_RELIABILITY = re.compile(r"(?<![\w/-])reliability\.md")
SECTION_CITATION = re.compile(r'docs/(\w+)\.md,\s+"([^"]+)"')
CHECK_CITATION = re.compile(r"docs/reliability\.md,\s+T(\d+)")
TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def repository_texts() -> Iterator[tuple[Path, str]]:
    """Every text file of the working tree, with its contents."""
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = sorted(d for d in subdirectories if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(directory) / name
            if path.is_symlink() or path.suffix == ".pyc":
                continue
            data = path.read_bytes()
            if b"\0" not in data:  # binary files hold no citations
                yield path, data.decode("utf-8", errors="replace")


@cache
def headings(doc: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")}


def test_nothing_cites_a_document_outside_the_repository() -> None:
    found = []
    for path, text in repository_texts():
        relative = path.relative_to(ROOT)
        for number, line in enumerate(text.splitlines(), start=1):
            outside = OUTSIDE_DOCUMENT.search(line)
            unprefixed = relative.parts[0] != "docs" and UNPREFIXED_RELIABILITY.search(line)
            if outside or unprefixed:
                found.append(f"{relative}:{number}: {line.strip()}")
    assert found == []


def test_every_citation_names_a_section_of_the_doc() -> None:
    checks = {int(n) for n in re.findall(r"^### T(\d+)\. ", RELIABILITY.read_text(), re.M)}
    assert checks == set(range(1, 39))
    cited, broken = 0, []
    for path, text in repository_texts():
        for doc, section in SECTION_CITATION.findall(text):
            cited += 1
            name = re.sub(r"\s*\n\s*#?\s*", " ", section).strip()  # a citation wrapped over lines
            if not (DOCS / f"{doc}.md").exists() or name not in headings(DOCS / f"{doc}.md"):
                broken.append(f'{path.relative_to(ROOT)}: docs/{doc}.md, "{name}"')
        for number in CHECK_CITATION.findall(text):
            cited += 1
            if int(number) not in checks:
                broken.append(f"{path.relative_to(ROOT)}: docs/reliability.md, T{number}")
    assert broken == []
    assert cited > 40  # the code does cite the docs


def test_every_test_the_docs_name_exists() -> None:
    references = [
        (doc, file, name)
        for doc in sorted(DOCS.glob("*.md"))
        for file, name in TEST_REFERENCE.findall(doc.read_text())
    ]
    assert sum(doc == RELIABILITY for doc, _, _ in references) > 100
    missing = []
    for doc, file, name in references:
        path = ROOT / file
        defined = path.exists() and any(
            isinstance(node, ast.FunctionDef) and node.name == name
            for node in ast.parse(path.read_text()).body
        )
        if not defined:
            missing.append(f"{doc.relative_to(ROOT)}: {file}::{name}")
    assert missing == []
