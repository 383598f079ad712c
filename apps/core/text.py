"""Text a client sends that the database cannot store.

PostgreSQL refuses U+0000 (NUL) in every text and jsonb value, and a lone surrogate
(U+D800–U+DFFF) is not a character at all: JSON can carry one as a `\\ud800` escape, but it has
no UTF-8 encoding. Either would fail the first query or write that used it, as a 500. Requests are
checked once, where they come in, and refused with a 400 that names where the character was.
"""

from __future__ import annotations

import re
from typing import Any

from django.utils.datastructures import MultiValueDict

from apps.core.errors import ActionError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _describe(character: str) -> str:
    if character == "\x00":
        return "a NUL character (\\u0000)"
    return f"a lone surrogate (\\u{ord(character):04x})"


def escape_unstorable(text: str) -> str:
    """`text` with each unstorable character written as its JSON escape, safe to put in a response."""
    return _UNSTORABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def refuse_unstorable(value: Any, param: str = "") -> None:
    """Raises a 400 ActionError for the first string in `value` (at any depth, object keys too)
    that holds NUL or a lone surrogate. `param` names `value`; nested strings are named by their
    path, as `metadata.key` or `messages[0].content`."""
    # An explicit stack, not recursion: a deeply nested body must not exhaust Python's stack.
    pending: list[tuple[Any, str]] = [(value, param)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found is not None:
                raise ActionError(
                    f"{where or 'The request body'} contains {_describe(found.group())}; remove it.",
                    param=where or None,
                )
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                named = f"{where}.{escape_unstorable(str(key))}" if where else escape_unstorable(str(key))
                children += [(child, named), (key, named)]
            pending += reversed(children)
        elif isinstance(item, list | tuple):
            pending += reversed([(child, f"{where}[{index}]") for index, child in enumerate(item)])


def refuse_unstorable_fields(fields: MultiValueDict[str, Any]) -> None:
    """`refuse_unstorable` for query parameters or form fields: names and every value, each named
    by its field (uploaded files are not text: Django cleans their names)."""
    for name, values in fields.lists():
        param = escape_unstorable(name)
        refuse_unstorable(name, param)
        for value in values:
            refuse_unstorable(value, param)
