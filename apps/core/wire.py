"""Objects as OpenAI sends them: a field it leaves out when unset is left out here too.

OpenAI's spec types such fields as plain values (`cancelled_at: integer`), not as nullable ones,
so a `null` breaks strict clients and schema validators even where the Python SDK, which reads a
missing and a null field alike, would accept it. Fields the spec lists as required and nullable
(a job's `finished_at`, `error`) stay, as `null`. docs/api.md lists which fields are omitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def omit_unset(body: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """`body` without those of `fields` whose value is None; the order of the rest is kept."""
    unset = {field for field in fields if body.get(field) is None}
    return {key: value for key, value in body.items() if key not in unset}
