"""OpenAI's OpenAPI spec as JSON Schema: load it once, validate a response body against a component.

The spec is an OpenAPI 3.1 document that still carries some OpenAPI 3.0 habits a JSON Schema
(2020-12) validator does not read: `nullable: true` beside a type, and the boolean form of
`exclusiveMinimum`/`exclusiveMaximum`. `to_json_schema` rewrites those first; `$ref`s resolve
through a `referencing` registry holding the whole document.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parent / "openai-openapi.yaml"
BASE = "urn:openai-openapi"


def to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 keywords → JSON Schema 2020-12, recursively.

    `{type: string, nullable: true}` becomes `{anyOf: [{type: string}, {type: "null"}]}`, and
    `{minimum: 0, exclusiveMinimum: true}` becomes `{exclusiveMinimum: 0}` (a validator would
    otherwise read `true` as the number 1)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items()}
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # `false` just goes; `true` moves the bound into the keyword.
        if isinstance(out.get(exclusive), bool) and out.pop(exclusive) and bound in out:
            out[exclusive] = out.pop(bound)
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def registry() -> Registry:
    with SPEC.open() as stream:
        document = yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    resource = Resource.from_contents(to_json_schema(document), default_specification=DRAFT202012)
    return Registry().with_resource(BASE, resource)


def component_names() -> set[str]:
    contents = registry().contents(BASE)
    return set(contents["components"]["schemas"])


def violations(instance: Any, component: str) -> list[str]:
    """Every way `instance` breaks `#/components/schemas/<component>`, one line each, with the JSON
    path of the offending value (for an `anyOf`/`oneOf`, the closest branch's reasons follow)."""
    if component not in component_names():
        raise KeyError(f"the spec has no component schema {component!r}")
    validator = Draft202012Validator({"$ref": f"{BASE}#/components/schemas/{component}"}, registry=registry())
    lines: list[str] = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        lines.append(_describe(error))
    return lines


def _describe(error: ValidationError) -> str:
    line = f"{error.json_path}: {_short(error.message)}"
    if error.context:
        # The branch that got furthest explains best why an anyOf/oneOf matched none.
        closest = max(error.context, key=lambda e: (len(e.absolute_path), -len(e.context or [])))
        line += f" (closest: {closest.json_path}: {_short(closest.message)})"
    return line


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


def assert_matches(instance: Any, component: str) -> None:
    """Fails listing every violation of the component's schema, so a regression reads at once."""
    found = violations(instance, component)
    assert not found, f"{len(found)} violation(s) of OpenAI's {component}:\n  " + "\n  ".join(found)
