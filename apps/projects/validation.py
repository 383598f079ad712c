"""Streaming validation of uploaded datasets.

`validate_stream` reads an upload chunk by chunk (Django's `File.chunks()` or any iterable of
bytes) and returns a `Report`: every bad line with its 1-based physical line number and a hint,
warnings, and row, label and token statistics. It never holds the whole file: memory is a few MB
of buffers plus a hash table of 14 bytes a slot for duplicate detection.

Pure Python with no Django imports, so a Celery worker runs it and tests need no database.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from apps.core.errors import ActionError
from apps.core.text import refuse_unstorable
from apps.projects.formats import (
    BATCH_ENDPOINTS,
    BATCH_JSONL,
    CHAT_JSONL,
    CLASSIFICATION_CSV,
    CLASSIFICATION_FORMATS,
    CLASSIFICATION_JSONL,
    EVAL_JSONL,
    PREFERENCE_JSONL,
    PROMPT_COMPLETION_JSONL,
    TEXT_CSV,
    TEXT_JSONL,
    format_name,
)
from workers.runtime.specs import approx_tokens

PURPOSES = ("fine-tune", "batch", "evals")
MAX_ERRORS = 1000

# Beyond these the label column is almost surely free text, and keeping the labels to count
# them would make memory grow with the file.
MAX_LABELS = 1000
MAX_LABEL_CHARS = 200
# p95 comes from a reservoir sample: exact up to this many rows, a close estimate beyond.
SAMPLE_SIZE = 10_000
# Enough bytes to recognise a binary file and to tell CSV from JSON Lines.
HEAD_BYTES = 8192

CHAT_ROLES = ("system", "user", "assistant", "tool")
# A batch file's stats name at most this many models (the rest are counted as "more").
MAX_BATCH_MODELS = 20
# Top-level keys OpenAI's chat fine-tuning format allows besides "messages".
CHAT_KEYS = frozenset({"tools", "parallel_tool_calls", "functions"})
# The keys of a preference (DPO) row and of its `input` (OpenAI's format).
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
PREFERENCE_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
BATCH_KEYS = frozenset({"custom_id", "method", "url", "body"})

_MAPPABLE_FIELDS = ("text", "label", "prompt", "completion", "messages")
_BOM = b"\xef\xbb\xbf"
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "ZIP archive; .xlsx and .docx files are ZIP archives too"),
    (b"\x1f\x8b", "GZIP archive"),
    (b"\xfd7zXZ\x00", "XZ archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"\x28\xb5\x2f\xfd", "Zstandard archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Office document, .xls or .doc"),
)
# The first three non-space characters have only spaces between them: a linear-time search.
_THREE_VISIBLE = re.compile(r"\S\s*\S\s*\S")
_MISSING: Any = object()  # a key absent from a JSON object, as opposed to null

_HINT_UTF8 = 'save the file as UTF-8 (in Excel: Save As → "CSV UTF-8"); it may be in Latin-1 or Windows-1252'
_HINT_BINARY = "upload a text file (CSV or JSON Lines) saved as UTF-8; export spreadsheets as CSV"
_HINT_HEADER = (
    "the first line is read as the header: add a header line such as text,label, "
    'or map your column names with column_mapping, e.g. {"text": "review", "label": "sentiment"}'
)
_HINT_QUOTES = 'quote fields that contain the delimiter and double quotes inside them: "say ""hi"", ok",pos'
_HINT_EXTRA = "only the fields of the detected format are used; remove the others if they are a mistake"
_HINT_DUPLICATE = "remove repeated rows: they over-weight one example and can leak into the validation split"


class Issue(TypedDict):
    line: int | None
    field: str | None
    message: str
    hint: str


class Report(TypedDict):
    valid: bool
    format: str | None
    rows: int
    errors: list[Issue]
    error_count: int
    warnings: list[Issue]
    warning_count: int
    stats: dict[str, Any]
    summary: str


# ---------------------------------------------------------------------------------------------
# Bounded accumulators
# ---------------------------------------------------------------------------------------------


class _SeenTable:
    """Open-addressing hash set of 8-byte digests, each with the line it was first seen on.

    A Python dict of ints costs ~100 bytes an entry (boxed keys and values plus the table); these
    parallel arrays cost 14 bytes a slot at most 75% full: ~30 MB for a million rows.
    """

    def __init__(self) -> None:
        self._size = 0
        self._allocate(1024)

    def _allocate(self, capacity: int) -> None:
        self._mask = capacity - 1
        self._limit = capacity * 3 // 4  # linear probing slows down past 75% full
        self._keys = array("q", [0]) * capacity  # signed, as hash() is; 0 marks an empty slot
        self._lines = array("I", [0]) * capacity
        self._tags = array("H", [0]) * capacity  # a label id, to tell duplicates from conflicts

    def find_or_add(self, key: int, line: int, tag: int) -> tuple[int, int] | None:
        """Return (first line, tag) when key was seen before; otherwise remember it."""
        slot = key & self._mask
        while found := self._keys[slot]:
            if found == key:
                return self._lines[slot], self._tags[slot]
            slot = (slot + 1) & self._mask
        self._keys[slot], self._lines[slot], self._tags[slot] = key, line, tag
        self._size += 1
        if self._size > self._limit:
            self._grow()
        return None

    def _grow(self) -> None:
        keys, lines, tags = self._keys, self._lines, self._tags
        self._allocate(len(keys) * 2)
        for key, line, tag in zip(keys, lines, tags, strict=True):
            if key:
                slot = key & self._mask
                while self._keys[slot]:
                    slot = (slot + 1) & self._mask
                self._keys[slot], self._lines[slot], self._tags[slot] = key, line, tag


def _digest(text: str) -> int:
    # Python's own 64-bit SipHash: cached on the string, and stable within the run, which is all
    # the table needs. Among a million rows the odds of any collision are about 1 in 37 million.
    return hash(text) or 1  # 0 marks an empty slot in _SeenTable


class _Lengths:
    """min/mean/max exactly, p95 from a reservoir sample (exact up to SAMPLE_SIZE rows)."""

    def __init__(self) -> None:
        self.count = self.total = self.token_total = self.low = self.high = 0
        self._sample: list[int] = []
        self._random = random.Random(0)  # seeded: the same file always gets the same report
        self._weight = 1.0
        self._next = 0  # the next row to enter the full sample

    def add(self, value: int) -> None:
        self.count += 1
        self.total += value
        self.token_total += _tokens(value)
        self.low = value if self.count == 1 else min(self.low, value)
        self.high = max(self.high, value)
        if self.count <= SAMPLE_SIZE:
            self._sample.append(value)
            if self.count == SAMPLE_SIZE:
                self._schedule()
        elif self.count == self._next:
            self._sample[self._random.randrange(SAMPLE_SIZE)] = value
            self._schedule()

    def _schedule(self) -> None:
        # Algorithm L (Li, 1994): jump straight to the next row that enters the sample, so random
        # numbers are drawn O(k log(n/k)) times rather than once a row.
        draw = self._random.random
        self._weight *= math.exp(math.log(1.0 - draw()) / SAMPLE_SIZE)  # 1 - random() is in (0, 1]
        skip = math.log(1.0 - draw()) / math.log1p(-self._weight) if self._weight < 1.0 else 0.0
        self._next = self.count + math.floor(skip) + 1

    def summary(self, convert: Callable[[int], int], total: int) -> dict[str, Any]:
        ordered = sorted(self._sample)
        p95 = ordered[math.ceil(0.95 * len(ordered)) - 1] if ordered else 0  # nearest-rank percentile
        mean = round(total / self.count, 1) if self.count else 0.0
        return {
            "min": convert(self.low),
            "mean": mean,
            "p95": convert(p95),
            "max": convert(self.high),
            "total": total,
        }


def _tokens(chars: int) -> int:
    return approx_tokens(chars)


# ---------------------------------------------------------------------------------------------
# Reading: bytes → physical lines
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    number: int  # 1-based physical line number
    offset: int  # byte offset of the line's first byte in the file
    data: bytes  # with its line ending; empty when the line is longer than the limit
    length: int  # bytes in the line without its ending, even when data was dropped
    ended: bool  # False for a last line with no newline: a sign the file may be cut short


def _read_head(chunks: Iterator[bytes]) -> bytes:
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) >= HEAD_BYTES:
            break
    return bytes(head)


def _split_lines(chunks: Iterable[bytes], offset: int, max_line_bytes: int) -> Iterator[_Line]:
    """Yield physical lines, dropping the bytes of any line longer than max_line_bytes.

    Never holds more than one chunk plus max_line_bytes, whatever the input.
    """
    pending = bytearray()  # the start of a line whose newline has not arrived yet
    dropped = 0  # bytes already discarded from an over-long line in progress
    number = 0
    for chunk in chunks:
        if b"\n" in chunk:
            data = bytes(pending + chunk) if pending else bytes(chunk)
            pending.clear()
            start = 0
            while (end := data.find(b"\n", start)) != -1:
                number += 1
                yield _make_line(number, offset, data[start : end + 1], dropped, True)
                offset += dropped + end + 1 - start  # offset is where the next line starts
                dropped = 0
                start = end + 1
            pending += memoryview(data)[start:]
        else:
            pending += chunk
        if len(pending) > max_line_bytes:
            dropped += len(pending)
            pending.clear()
    if pending or dropped:
        yield _make_line(number + 1, offset, bytes(pending), dropped, False)


def _make_line(number: int, offset: int, data: bytes, dropped: int, ended: bool) -> _Line:
    ending = 2 if data.endswith(b"\r\n") else 1 if ended else 0  # CRLF line endings count as one
    length = dropped + len(data) - ending
    return _Line(number, offset, b"" if dropped else data, length, ended)


def _binary_kind(head: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "it contains NUL bytes" if b"\x00" in head else None


# ---------------------------------------------------------------------------------------------
# One validation run
# ---------------------------------------------------------------------------------------------


class _Run:
    """The state of one validation: issues, statistics and what has been seen so far."""

    def __init__(self, purpose: str, mapping: Mapping[str, str], max_rows: int, max_line_bytes: int) -> None:
        self.purpose = purpose
        self.mapping = mapping
        self.max_rows = max_rows
        self.max_line_bytes = max_line_bytes
        self.format: str | None = None
        self.rows = 0
        self.stopped = False
        self.errors: list[Issue] = []
        self.error_count = 0
        self.warnings: list[Issue] = []
        self.warning_count = 0
        self.lengths = _Lengths()
        self.messages = _Lengths()
        self.seen = _SeenTable()
        self.label_ids: dict[str, int] = {}
        self.too_many_labels = False
        self.label_names: list[str] = []
        self.label_counts: list[int] = []
        self.label_first_lines: list[int] = []
        self.endpoints: dict[str, int] = {}
        self.models: dict[str, int] = {}  # a batch's requests per model, the first MAX_BATCH_MODELS
        self.more_models = False
        self.extra_keys: set[str] = set()

    def error(self, line: int | None, field: str | None, message: str, hint: str) -> None:
        self.error_count += 1  # every error is counted; the first MAX_ERRORS are kept
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(Issue(line=line, field=field, message=message, hint=hint))

    def warn(self, line: int | None, field: str | None, message: str, hint: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_ERRORS:
            self.warnings.append(Issue(line=line, field=field, message=message, hint=hint))

    def name(self, field: str) -> str:
        """The file's name for one of our fields, after column_mapping."""
        return self.mapping.get(field, field)

    def count_row(self, line: int) -> bool:
        """Count a data row; False (and stop) once the file has more than max_rows."""
        if self.rows >= self.max_rows:
            message = f"the file has more than {self.max_rows:,} rows, the limit; validation stopped here"
            self.error(line, None, message, "split the file into smaller files")
            self.stopped = True
            return False
        self.rows += 1
        return True

    def decode(self, line: _Line) -> str | None:
        """The line as text, or None after reporting why it cannot be read."""
        if line.length > self.max_line_bytes:
            message = f"line is {line.length:,} bytes, longer than the limit of {self.max_line_bytes:,} bytes"
            self.error(
                line.number, None, message, "shorten this example; a missing line break can cause this"
            )
            return None
        try:
            text = line.data.decode("utf-8")
        except UnicodeDecodeError as error:
            byte, where = line.data[error.start], line.offset + error.start
            message = (
                f"not valid UTF-8: byte 0x{byte:02X} at byte offset {where:,} (column {error.start + 1})"
            )
            self.error(line.number, None, message, _HINT_UTF8)
            return None
        if "\x00" in text:
            self.error(line.number, None, "line contains a NUL byte", _HINT_BINARY)
            return None
        return text

    def add_label(self, label: str, line: int) -> int:
        """Count one example of label and return its id; MAX_LABELS once there are too many."""
        label_id = self.label_ids.get(label)
        if label_id is None:
            if len(self.label_names) >= MAX_LABELS:
                if not self.too_many_labels:
                    self.too_many_labels = True
                    hint = "check that the label column holds classes, not free text"
                    self.error(line, self.name("label"), f"more than {MAX_LABELS:,} distinct labels", hint)
                return MAX_LABELS
            label_id = self.label_ids[label] = len(self.label_names)
            self.label_names.append(label)
            self.label_counts.append(0)
            self.label_first_lines.append(line)
        self.label_counts[label_id] += 1
        return label_id

    def warn_extra_keys(self, line: int, keys: Iterable[str], hint: str = _HINT_EXTRA) -> None:
        """Warn once per unknown key, on the line where it first appears."""
        # Bounded: keys are cut short, and a file of ever-new keys stops warning after 100.
        new = [key for key in keys if key[:100] not in self.extra_keys]
        if new and len(self.extra_keys) < 100:
            self.extra_keys.update(key[:100] for key in new)
            self.warn(line, None, f"ignoring extra keys: {_quote_list(new)}", hint)


# ---------------------------------------------------------------------------------------------
# Per-format row checks. Each reports its own errors and returns the row's character count,
# or None when the row is invalid (invalid rows stay out of the statistics).
# ---------------------------------------------------------------------------------------------


def _check_classification(run: _Run, line: int, text: Any, label: Any) -> int | None:
    text_ok = _check_text_value(run, line, text)
    label_text = _check_label(run, line, label)
    if not text_ok or label_text is None:
        return None
    _warn_short_text(run, line, text)
    _check_text_repeat(run, line, text, run.add_label(label_text, line))
    return len(text)


def _check_unlabelled(run: _Run, line: int, text: Any) -> int | None:
    if not _check_text_value(run, line, text):
        return None
    _warn_short_text(run, line, text)
    _check_text_repeat(run, line, text, 0)  # one "label" for all: repeats are duplicates
    return len(text)


def _check_text_value(run: _Run, line: int, text: Any) -> bool:
    """True for a non-blank string; otherwise the error is reported."""
    name = run.name("text")
    if not isinstance(text, str):
        run.error(line, name, _type_error(name, "a string", text), f'add the text as "{name}": "..."')
        return False
    if text == "" or text.isspace():
        run.error(line, name, f"{name} is empty", "fill in the text or remove the row")
        return False
    return True


def _warn_short_text(run: _Run, line: int, text: str) -> None:
    if _THREE_VISIBLE.search(text) is None:
        name = run.name("text")
        hint = "remove the row or give it more text; a text this short teaches the model little"
        run.warn(line, name, f"{name} is nearly empty ({_quote(text)})", hint)


def _check_label(run: _Run, line: int, label: Any) -> str | None:
    """The label as a string (numbers become "1", "2"), or None after reporting why not."""
    name = run.name("label")
    # A tuple, not `str | int | float`, which would build a union object on every row.
    if isinstance(label, bool) or not isinstance(label, (str, int, float)):
        hint = 'use a class name such as "positive" or a number such as 1'
        run.error(line, name, _type_error(name, "a string or a number", label), hint)
        return None
    if isinstance(label, float) and label.is_integer():
        label = int(label)  # 1.0 and 1 are the same class
    label_text = label if isinstance(label, str) else str(label)
    if not label_text or label_text.isspace():
        run.error(line, name, f"{name} is empty", "give every row a label, or remove the row")
        return None
    if len(label_text) > MAX_LABEL_CHARS:
        message = f"{name} is {len(label_text):,} characters long; the limit is {MAX_LABEL_CHARS}"
        run.error(line, name, message, "labels are short class names; check which column holds them")
        return None
    return label_text


def _check_text_repeat(run: _Run, line: int, text: str, label_id: int) -> None:
    # Keyed by text alone, so one lookup finds both exact duplicates and conflicting labels.
    seen = run.seen.find_or_add(_digest(text), line, label_id)
    if seen is None:
        return
    first_line, first_id = seen
    if first_id == label_id:
        run.warn(line, None, f"duplicate of line {first_line}", _HINT_DUPLICATE)
    elif MAX_LABELS not in (label_id, first_id):
        labels = f"{_quote(run.label_names[label_id])} here, {_quote(run.label_names[first_id])} there"
        message = f"same text as line {first_line} but a different label ({labels})"
        run.warn(line, run.name("label"), message, "give each text one label, or remove the conflicting rows")


def _check_chat(run: _Run, line: int, row: dict[str, Any]) -> int | None:
    name = run.name("messages")
    messages = row.get(name, _MISSING)
    run.warn_extra_keys(line, (key for key in row if key not in CHAT_KEYS and key != name))
    if not isinstance(messages, list) or not messages:
        problem = f"{name} is empty" if isinstance(messages, list) else _type_error(name, "a list", messages)
        hint = 'give a list of messages: [{"role": "user", ...}, {"role": "assistant", ...}]'
        run.error(line, name, problem, hint)
        return None
    checked = [
        _check_message(run, line, f"{name}[{index}]", message) for index, message in enumerate(messages)
    ]
    if None in checked:
        return None
    if not any(message["role"] == "assistant" for message in messages):
        message = "no assistant message; each example needs at least one assistant reply to learn from"
        run.error(line, name, message, 'add a message with "role": "assistant" and the reply to learn')
        return None
    run.messages.add(len(messages))
    _check_row_repeat(run, line, row)
    # The chat template writes the tool definitions into the prompt: they are trained tokens too.
    tools = row.get("tools")
    tool_chars = len(json.dumps(tools)) if isinstance(tools, list) else 0
    return sum(chars for chars in checked if chars is not None) + tool_chars


def _check_message(run: _Run, line: int, field: str, message: Any) -> int | None:
    if not isinstance(message, dict):
        hint = 'write each message as {"role": "user", "content": "..."}'
        run.error(line, field, _type_error("message", "an object", message), hint)
        return None
    role = message.get("role", _MISSING)
    if role not in CHAT_ROLES:
        found = "role is missing" if role is _MISSING else f"unknown role {_quote(role)}"
        run.error(line, f"{field}.role", f"{found}; expected one of {', '.join(CHAT_ROLES)}", "fix the role")
        return None
    content = message.get("content", _MISSING)
    # An assistant turn that only calls tools has no content (OpenAI's format allows null).
    if not isinstance(content, str) and not (content in (None, _MISSING) and "tool_calls" in message):
        hint = "give every message its text as a string"
        run.error(line, f"{field}.content", _type_error("content", "a string", content), hint)
        return None
    if "weight" in message and not _check_weight(run, line, field, message["weight"], role):
        return None
    calls = message.get("tool_calls")
    call_chars = len(json.dumps(calls)) if isinstance(calls, list) else 0  # rendered as JSON
    return (len(content) if isinstance(content, str) else 0) + call_chars


def _check_weight(run: _Run, line: int, field: str, weight: Any, role: str) -> bool:
    if role != "assistant":
        message = f"weight is only allowed on assistant messages, not on a {role} message"
        run.error(
            line, f"{field}.weight", message, "remove weight; it marks which assistant replies to train on"
        )
        return False
    if isinstance(weight, bool) or weight not in (0, 1):
        hint = "use 1 to train on this reply and 0 to skip it"
        run.error(line, f"{field}.weight", f"weight must be 0 or 1, got {_quote(weight)}", hint)
        return False
    return True


def _check_prompt_completion(run: _Run, line: int, row: dict[str, Any]) -> int | None:
    prompt_name, completion_name = run.name("prompt"), run.name("completion")
    prompt, completion = row.get(prompt_name, _MISSING), row.get(completion_name, _MISSING)
    run.warn_extra_keys(line, (key for key in row if key not in (prompt_name, completion_name)))
    for name, value in ((prompt_name, prompt), (completion_name, completion)):
        if not isinstance(value, str):
            run.error(line, name, _type_error(name, "a string", value), f'add "{name}": "..."')
    if isinstance(completion, str) and not completion.strip():
        run.error(
            line, completion_name, f"{completion_name} is empty", "give the text the model should produce"
        )
        return None
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return None
    _check_row_repeat(run, line, row)
    return len(prompt) + len(completion)


def _check_preference(run: _Run, line: int, row: dict[str, Any]) -> int | None:
    """OpenAI's DPO row: a conversation that ends with the user's turn, and one preferred and one
    non-preferred assistant reply to it. Every problem of the row is reported, not just the first."""
    run.warn_extra_keys(line, (key for key in row if key not in PREFERENCE_KEYS))
    prompt_chars = _check_preference_input(run, line, row.get("input", _MISSING))
    replies = [
        _check_preference_output(run, line, name, row.get(name, _MISSING)) for name in PREFERENCE_KEYS[1:]
    ]
    preferred, rejected = replies
    if preferred is not None and rejected is not None and preferred == rejected:
        run.error(
            line,
            "non_preferred_output",
            "preferred_output and non_preferred_output have the same content",
            "a pair teaches only where the two replies differ: give a worse reply as non_preferred_output",
        )
        return None
    if prompt_chars is None or preferred is None or rejected is None:
        return None
    run.messages.add(len(row["input"]["messages"]))
    _check_row_repeat(run, line, row)
    return prompt_chars + len(preferred) + len(rejected)


def _check_preference_input(run: _Run, line: int, value: Any) -> int | None:
    if not isinstance(value, dict):
        hint = 'give the conversation so far: "input": {"messages": [{"role": "user", "content": "..."}]}'
        run.error(line, "input", _type_error("input", "an object", value), hint)
        return None
    run.warn_extra_keys(line, (f"input.{key}" for key in value if key not in PREFERENCE_INPUT_KEYS))
    messages = value.get("messages", _MISSING)
    if not isinstance(messages, list) or not messages:
        problem = (
            "input.messages is empty"
            if isinstance(messages, list)
            else _type_error("input.messages", "a list", messages)
        )
        hint = 'give the conversation the replies answer: [{"role": "user", "content": "..."}]'
        run.error(line, "input.messages", problem, hint)
        return None
    checked = [
        _check_message(run, line, f"input.messages[{index}]", message)
        for index, message in enumerate(messages)
    ]
    if None in checked:
        return None
    if messages[-1]["role"] != "user":
        run.error(
            line,
            f"input.messages[{len(messages) - 1}].role",
            f"the last input message must be from the user, not {_quote(messages[-1]['role'])}",
            "end input.messages with the user's turn; the two outputs are the replies to it",
        )
        return None
    return sum(chars for chars in checked if chars is not None)


def _check_preference_output(run: _Run, line: int, name: str, value: Any) -> str | None:
    """The reply's text, or None after reporting what is wrong with it."""
    hint = f'give exactly one reply: "{name}": [{{"role": "assistant", "content": "..."}}]'
    if not isinstance(value, list) or len(value) != 1:
        problem = (
            f"{name} must hold exactly 1 message, got {len(value)}"
            if isinstance(value, list)
            else _type_error(name, "a list of one message", value)
        )
        run.error(line, name, problem, hint)
        return None
    message = value[0]
    if not isinstance(message, dict):
        run.error(line, f"{name}[0]", _type_error("message", "an object", message), hint)
        return None
    role = message.get("role", _MISSING)
    if role != "assistant":
        found = "role is missing" if role is _MISSING else f"role is {_quote(role)}"
        run.error(line, f"{name}[0].role", f"{found}; the reply must be an assistant message", hint)
        return None
    content = message.get("content", _MISSING)
    if not isinstance(content, str):
        run.error(line, f"{name}[0].content", _type_error("content", "a string", content), hint)
        return None
    if not content.strip():
        run.error(line, f"{name}[0].content", "content is empty", "give the text of the reply")
        return None
    return content


def _check_row_repeat(run: _Run, line: int, row: dict[str, Any]) -> None:
    # Canonical JSON, so that key order or spacing does not hide a duplicate.
    seen = run.seen.find_or_add(_digest(json.dumps(row, sort_keys=True)), line, 0)
    if seen is not None:
        run.warn(line, None, f"duplicate of line {seen[0]}", _HINT_DUPLICATE)


def _check_batch(run: _Run, line: int, row: dict[str, Any]) -> int | None:
    run.warn_extra_keys(
        line, (key for key in row if key not in BATCH_KEYS), "only custom_id, method, url and body are read"
    )
    ok = _check_custom_id(run, line, row.get("custom_id", _MISSING))
    method = row.get("method", _MISSING)
    if method != "POST":
        got = "it is missing" if method is _MISSING else f"got {_quote(method)}"
        run.error(line, "method", f'method must be "POST", {got}', 'set "method": "POST"')
        ok = False
    url = row.get("url", _MISSING)
    if url in BATCH_ENDPOINTS:
        run.endpoints[url] = run.endpoints.get(url, 0) + 1
    else:
        problem = "url is missing" if url is _MISSING else f"url {_quote(url)} is not supported"
        run.error(line, "url", f"{problem}; use one of {', '.join(BATCH_ENDPOINTS)}", "fix the url")
        ok = False
    body = row.get("body", _MISSING)
    ok = _check_batch_body(run, line, body) and ok
    return _body_chars(body) if ok else None


def _check_custom_id(run: _Run, line: int, custom_id: Any) -> bool:
    hint = "give every request its own custom_id, such as request-1; results are matched back by it"
    if not isinstance(custom_id, str) or not custom_id:
        got = "it is missing" if custom_id is _MISSING else f"got {_quote(custom_id)}"
        run.error(line, "custom_id", f"custom_id must be a non-empty string, {got}", hint)
        return False
    seen = run.seen.find_or_add(_digest(custom_id), line, 0)
    if seen is not None:
        run.error(line, "custom_id", f"custom_id {_quote(custom_id)} is already used on line {seen[0]}", hint)
        return False
    return True


def _check_batch_body(run: _Run, line: int, body: Any) -> bool:
    if not isinstance(body, dict):
        hint = 'put the request in "body": {"model": "...", ...}'
        run.error(line, "body", _type_error("body", "an object", body), hint)
        return False
    model = body.get("model", _MISSING)
    if not isinstance(model, str) or not model:
        got = "it is missing" if model is _MISSING else f"got {_quote(model)}"
        run.error(
            line, "body.model", f"body.model must be a model name, {got}", 'add "model": "..." to the body'
        )
        return False
    if model in run.models or len(run.models) < MAX_BATCH_MODELS:
        run.models[model] = run.models.get(model, 0) + 1
    else:
        run.more_models = True
    return True


def _body_chars(body: dict[str, Any]) -> int:
    """Characters of the text a batch request sends, for the token estimate."""
    messages = body.get("messages")
    texts = (
        [message.get("content") for message in messages if isinstance(message, dict)]
        if isinstance(messages, list)
        else []
    )
    for key in ("prompt", "input"):
        value = body.get(key)
        texts.extend(value if isinstance(value, list) else [value])
    return sum(len(text) for text in texts if isinstance(text, str))


# ---------------------------------------------------------------------------------------------
# JSON Lines
# ---------------------------------------------------------------------------------------------


def _check_eval_row(run: _Run, line: int, row: dict[str, Any]) -> int | None:
    """An eval's data row, as OpenAI's: {"item": {...}} and, for a run that grades given answers,
    "sample": {...}. Whether the item fits an eval's item_schema is checked by each run."""
    ok = True
    if not isinstance(row.get("item"), dict):
        got = "it is missing" if "item" not in row else f"got {_json_type(row['item'])}"
        run.error(line, "item", f"item must be an object, {got}", 'write each row as {"item": {...}}')
        ok = False
    if "sample" in row and not isinstance(row["sample"], dict):
        run.error(
            line,
            "sample",
            f"sample must be an object, got {_json_type(row['sample'])}",
            "remove it or make it an object",
        )
        ok = False
    run.warn_extra_keys(
        line, (key for key in row if key not in ("item", "sample")), "only item and sample are read"
    )
    return len(json.dumps(row.get("item"))) if ok else None


def _check_classification_row(run: _Run, line: int, row: dict[str, Any]) -> int | None:
    text_name, label_name = run.name("text"), run.name("label")
    run.warn_extra_keys(line, (key for key in row if key not in (text_name, label_name)))
    return _check_classification(run, line, row.get(text_name, _MISSING), row.get(label_name, _MISSING))


def _check_unlabelled_row(run: _Run, line: int, row: dict[str, Any]) -> int | None:
    text_name = run.name("text")
    run.warn_extra_keys(line, (key for key in row if key != text_name))
    return _check_unlabelled(run, line, row.get(text_name, _MISSING))


_JSONL_CHECKS: dict[str, Callable[[_Run, int, dict[str, Any]], int | None]] = {
    CLASSIFICATION_JSONL: _check_classification_row,
    TEXT_JSONL: _check_unlabelled_row,
    CHAT_JSONL: _check_chat,
    PROMPT_COMPLETION_JSONL: _check_prompt_completion,
    BATCH_JSONL: _check_batch,
    PREFERENCE_JSONL: _check_preference,
    EVAL_JSONL: _check_eval_row,
}


def _validate_jsonl(run: _Run, lines: Iterator[_Line]) -> None:
    detected = run.format is not None
    for line, row in _json_objects(run, lines):
        if not detected:  # the first object decides, and an unknown shape is reported once
            detected = True
            run.format = _detect_jsonl_format(run, line, row)
        if run.format is not None:
            chars = _JSONL_CHECKS[run.format](run, line.number, row)
            if chars is not None:
                run.lengths.add(chars)


def _json_objects(run: _Run, lines: Iterator[_Line]) -> Iterator[tuple[_Line, dict[str, Any]]]:
    for line in lines:
        if line.length == 0 or line.data.isspace():
            continue  # blank lines are harmless
        if not run.count_row(line.number):
            return
        text = run.decode(line)
        row = None if text is None else _parse_json(run, line, text)
        if row is not None:
            yield line, row


def _parse_json(run: _Run, line: _Line, text: str) -> dict[str, Any] | None:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        # Columns count within the line without its ending, where json.loads saw one more line.
        column = min(error.pos, len(text.rstrip("\r\n"))) + 1
        message = f"invalid JSON: {error.msg} (column {column})"
        hint = "write each example as one complete JSON object on a single line"
        if not line.ended:
            message += "; the file may be truncated"
            hint = "the last line stops mid-object: upload the complete file again"
        elif text.strip() in ("{", "["):
            hint = "the file looks pretty-printed: JSON Lines needs each object on a single line"
        run.error(line.number, None, message, hint)
        return None
    except RecursionError:
        run.error(line.number, None, "invalid JSON: nested too deeply", "flatten this example")
        return None
    except ValueError:  # Python refuses to parse integers of more than 4,300 digits
        run.error(line.number, None, "invalid JSON: a number is too long", "write long numbers as strings")
        return None
    if not isinstance(row, dict):
        run.error(
            line.number, None, f"expected a JSON object, got {_json_type(row)}", "write each line as {...}"
        )
        return None
    try:
        # A \u0000 or lone \ud800 escape decodes to text the database cannot store: in a label or a
        # model name it would reach the report, whose write failed (and the file stayed `uploaded`).
        refuse_unstorable(row)
    except ActionError as error:
        run.error(
            line.number, error.param, error.message, "remove the character: it cannot be stored as text"
        )
        return None
    return row


def _detect_jsonl_format(run: _Run, line: _Line, row: dict[str, Any]) -> str | None:
    name = run.name
    if any(key in row for key in PREFERENCE_KEYS):
        return PREFERENCE_JSONL
    if name("messages") in row:
        return CHAT_JSONL
    if name("prompt") in row and name("completion") in row:
        return PROMPT_COMPLETION_JSONL
    if name("text") in row and name("label") in row:
        return CLASSIFICATION_JSONL
    if name("text") in row:
        return TEXT_JSONL
    expected = (
        f'"{name("messages")}" (chat), "{name("prompt")}" and "{name("completion")}", '
        '"input", "preferred_output" and "non_preferred_output" (preference), '
        f'"{name("text")}" and "{name("label")}" (classification), or "{name("text")}" alone (unlabelled)'
    )
    found = _quote_list(list(row)) if row else "none"
    hint = "use one of these formats, or map your keys with column_mapping"
    run.error(
        line.number, None, f"cannot tell the dataset format: expected {expected}; keys found: {found}", hint
    )
    return None


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


class _RecordTooLong(Exception):
    pass


class _CsvFeed:
    """Hands decoded physical lines to csv.reader and tracks where each record starts.

    csv.reader pulls one physical line at a time, so physical line numbers survive quoted
    newlines. A line that cannot be decoded is reported here and its record marked bad.
    """

    def __init__(self, run: _Run, lines: Iterator[_Line]) -> None:
        self._run = run
        self._lines = lines
        self._record_bytes = 0
        self.line_number = 0  # the last physical line handed to the reader
        self.last_ended = True
        self.record_is_bad = False

    def __iter__(self) -> _CsvFeed:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.line_number, self.last_ended = line.number, line.ended
        text = self._run.decode(line)
        if text is None:
            self.record_is_bad = True
            if line.length > self._run.max_line_bytes:
                return "\n"
            # Keep the quotes, so that the rest of the record parses the way the file meant it.
            return line.data.decode("utf-8", "replace").replace("\x00", "")
        self._record_bytes += line.length
        # An unbalanced quote would otherwise swallow the rest of the file into one field.
        if self._record_bytes > self._run.max_line_bytes:
            raise _RecordTooLong
        return text

    def start_record(self) -> int:
        self._record_bytes = 0
        self.record_is_bad = False
        return self.line_number + 1


@dataclass(slots=True)
class _Columns:
    text: int
    label: int | None  # None: a file of unlabelled texts
    width: int  # the header's columns, less the empty ones a trailing delimiter leaves at its end
    delimiter: str
    # Whether the trailing empty column that spreadsheets leave has been warned about (once a file).
    trailing_warned: bool = False


def _validate_csv(run: _Run, lines: Iterator[_Line], delimiter: str) -> None:
    run.format = CLASSIFICATION_CSV
    feed = _CsvFeed(run, lines)
    columns: _Columns | None = None
    header_seen = False
    for start, values in _csv_records(run, feed, delimiter):
        if not header_seen:
            header_seen = True
            columns = _read_header(run, start, values, delimiter)
        elif run.count_row(start) and columns is not None and not feed.record_is_bad:
            chars = _check_csv_row(run, start, values, columns)
            if chars is not None:
                run.lengths.add(chars)


def _csv_records(run: _Run, feed: _CsvFeed, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank records with the line each starts on; malformed ones are reported and counted."""
    reader = csv.reader(feed, delimiter=delimiter, strict=True)
    while not run.stopped:
        start = feed.start_record()
        try:
            values = next(reader)
        except StopIteration:
            return
        except (_RecordTooLong, csv.Error) as error:
            # The reader starts afresh on the next call, at the line after the bad record.
            run.error(start, None, _csv_error_message(run, feed, error), _csv_error_hint(error))
            run.count_row(start)
            continue
        # Skip blank lines, and the rows of bare delimiters that spreadsheets leave behind.
        if any(values) and not (len(values) == 1 and values[0].isspace()):
            yield start, values


def _csv_error_message(run: _Run, feed: _CsvFeed, error: Exception) -> str:
    if isinstance(error, _RecordTooLong):
        return f"record runs past {run.max_line_bytes:,} bytes; a quoted field is probably never closed"
    if "unexpected end of data" in str(error):
        truncated = "" if feed.last_ended else "; the file may be truncated"
        return f"a quoted field starting here is never closed{truncated}"
    if "field larger than field limit" in str(error):
        return f"a field is longer than {csv.field_size_limit():,} characters"
    return f"malformed CSV: {error}"


def _csv_error_hint(error: Exception) -> str:
    if "field larger than field limit" in str(error):
        return "shorten the text, or look for an unbalanced double quote that runs into later lines"
    return _HINT_QUOTES


def _delimiter_name(delimiter: str) -> str:
    return "a tab" if delimiter == "\t" else f'a "{delimiter}"'


def _read_header(run: _Run, line: int, values: list[str], delimiter: str) -> _Columns | None:
    names = [value.strip() for value in values]
    # Spreadsheets often end every line with a delimiter: the empty last column is not a column.
    trailing = len(names) - len(list(itertools.dropwhile(lambda name: not name, reversed(names))))
    if trailing:
        names = names[: len(names) - trailing]
        message = (
            f"the header ends with an empty column ({_delimiter_name(delimiter)} at the end of the line)"
        )
        hint = (
            "it is ignored, and so are empty values under it; remove the trailing delimiter to silence this"
        )
        run.warn(line, None, message, hint)
    wanted = [run.name("text"), run.name("label")]
    text, label = (_find_column(names, name) for name in wanted)
    if text is not None and label is None and run.purpose == "fine-tune":
        return _unlabelled_header(run, line, names, text, delimiter, warned=bool(trailing))
    if text is None or label is None:
        missing = [name for name, index in zip(wanted, (text, label), strict=True) if index is None]
        columns = f"column{'s' if len(missing) > 1 else ''} {' and '.join(_quote(name) for name in missing)}"
        message = f"missing required {columns}; columns found: {_quote_list(names)}"
        run.error(line, missing[0], message, _HINT_HEADER)
        return None
    extra = [name for index, name in enumerate(names) if index not in (text, label)]
    if extra:
        hint = "only the text and label columns are used; map other names with column_mapping"
        run.warn(line, None, f"ignoring extra columns: {_quote_list(extra)}", hint)
    return _Columns(text, label, len(names), delimiter, trailing_warned=bool(trailing))


def _unlabelled_header(
    run: _Run, line: int, names: list[str], text: int, delimiter: str, *, warned: bool
) -> _Columns:
    """A header with a text column and no label column: texts for a teacher to label."""
    run.format = TEXT_CSV
    label = run.name("label")
    message = (
        f"no {_quote(label)} column: read as unlabelled texts, usable as a distillation's unlabeled_file; "
        f"columns found: {_quote_list(names)}"
    )
    hint = f"to fine-tune a classifier on this file, add a {_quote(label)} column or map yours with column_mapping"
    run.warn(line, label, message, hint)
    return _Columns(text, None, len(names), delimiter, trailing_warned=warned)


def _find_column(names: list[str], wanted: str) -> int | None:
    if wanted in names:
        return names.index(wanted)
    folded = [name.casefold() for name in names]  # spreadsheets often say "Text" and "Label"
    return folded.index(wanted.casefold()) if wanted.casefold() in folded else None


def _check_csv_row(run: _Run, line: int, values: list[str], columns: _Columns) -> int | None:
    if len(values) > columns.width and not _only_trailing_empties(run, line, values, columns):
        return None
    if columns.label is None:
        if columns.text >= len(values):
            message = f"row has {_plural(len(values), 'value')} but the text is in column {columns.text + 1}"
            run.error(line, run.name("text"), message, "fill in every column; check for a missing delimiter")
            return None
        return _check_unlabelled(run, line, values[columns.text])
    # Short rows are fine while they reach both columns; trailing empty columns are often cut.
    needed = max(columns.text, columns.label) + 1
    if len(values) < needed:
        field = run.name("label") if columns.label >= len(values) else run.name("text")
        message = f"row has {_plural(len(values), 'value')} but the text and label need {needed}"
        run.error(line, field, message, "fill in every column; check for a missing delimiter")
        return None
    return _check_classification(run, line, values[columns.text], values[columns.label])


def _only_trailing_empties(run: _Run, line: int, values: list[str], columns: _Columns) -> bool:
    """A row longer than the header: True when the values past it are empty (a trailing delimiter,
    warned about once a file); otherwise an error, as the text was most likely split in two."""
    extra = values[columns.width :]
    if any(value.strip() for value in extra):
        message = (
            f"row has {_plural(len(values), 'value')} but the header has {_plural(columns.width, 'column')}"
        )
        sep = columns.delimiter
        example = "" if sep == "\t" else f', e.g. "Too{sep} many{sep} columns"{sep}label'
        hint = (
            f"a text that contains {_delimiter_name(sep)} must be in double quotes{example}; "
            "otherwise remove the extra values"
        )
        run.error(line, None, message, hint)
        return False
    if not columns.trailing_warned:
        columns.trailing_warned = True
        message = f"row ends with an empty column past the header ({_delimiter_name(columns.delimiter)} at the end of the line)"
        hint = "empty values past the header are ignored, on this row and any later one"
        run.warn(line, None, message, hint)
    return True


def sniff_delimiter(head: bytes, filename: str) -> str:
    """The delimiter of a CSV: by extension, else the first of , tab ; found in its header line."""
    if filename.lower().endswith(".tsv"):
        return "\t"
    first = next((line for line in head.split(b"\n") if line.strip()), b"")
    # Excel in many European locales writes ";" because "," is their decimal separator.
    return next((char for char in (",", "\t", ";") if char.encode() in first), ",")


# ---------------------------------------------------------------------------------------------
# The whole file
# ---------------------------------------------------------------------------------------------


def validate_stream(
    chunks: Iterable[bytes],
    purpose: str,
    *,
    filename: str = "",
    column_mapping: Mapping[str, str] | None = None,
    max_rows: int = 1_000_000,
    max_line_bytes: int = 1_048_576,
) -> Report:
    """Validate an upload read chunk by chunk; see the module docstring."""
    if purpose not in PURPOSES:
        raise ValueError(f"cannot validate files with purpose {purpose!r}; expected one of {PURPOSES}")
    run = _Run(purpose, {}, max_rows, max_line_bytes)
    run.mapping = _checked_mapping(run, column_mapping or {})
    stream = iter(chunks)
    _validate_content(run, _read_head(stream), stream, filename)
    _finish(run)
    report = Report(
        valid=run.error_count == 0,
        format=run.format,
        rows=run.rows,
        errors=run.errors,
        error_count=run.error_count,
        warnings=run.warnings,
        warning_count=run.warning_count,
        stats=_stats(run),
        summary="",
    )
    report["summary"] = summarize(report)
    return report


def _checked_mapping(run: _Run, mapping: Mapping[str, str]) -> dict[str, str]:
    """The usable part of column_mapping; the rest is reported."""
    usable = {}
    for field, name in mapping.items():
        if field not in _MAPPABLE_FIELDS:
            hint = f"map one of {', '.join(_MAPPABLE_FIELDS)} to a column or key of your file"
            run.error(None, "column_mapping", f"unknown field {_quote(field)} in column_mapping", hint)
        elif not isinstance(name, str) or not name:
            message = f"column_mapping[{_quote(field)}] must be a column name, got {_quote(name)}"
            run.error(None, "column_mapping", message, 'map each field to a name, e.g. {"text": "review"}')
        else:
            usable[field] = name
    return usable


def _validate_content(run: _Run, head: bytes, rest: Iterator[bytes], filename: str) -> None:
    if not head or head == _BOM:
        run.error(None, None, "the file is empty", "upload a file with at least one example")
        return
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        run.error(None, None, "the file is UTF-16 encoded", _HINT_UTF8)
        return
    kind = _binary_kind(head)
    if kind is not None:
        run.error(None, None, f"file looks binary ({kind})", _HINT_BINARY)
        return
    bom = len(_BOM) if head.startswith(_BOM) else 0
    lines = _split_lines(itertools.chain([head[bom:]], rest), bom, run.max_line_bytes)
    if run.purpose == "batch":
        run.format = BATCH_JSONL  # whatever the content looks like
        _validate_jsonl(run, lines)
    elif run.purpose == "evals":
        run.format = EVAL_JSONL
        _validate_jsonl(run, lines)
    elif _is_json_lines(head[bom:], filename):
        _validate_jsonl(run, lines)
    else:
        _validate_csv(run, lines, sniff_delimiter(head[bom:], filename))
    if run.rows == 0:
        header = "a header line and " if run.format in (CLASSIFICATION_CSV, TEXT_CSV) else ""
        run.error(None, None, "the file has no data rows", f"add {header}at least one example")


def _is_json_lines(head: bytes, filename: str) -> bool:
    first = head.lstrip()[:1]
    if first:
        return first in (b"{", b"[")
    return filename.lower().endswith((".jsonl", ".json", ".ndjson"))  # nothing but blank lines so far


def _finish(run: _Run) -> None:
    if run.format in CLASSIFICATION_FORMATS:
        _check_labels(run)
    if len(run.endpoints) > 1:
        message = f"requests use {len(run.endpoints)} different urls: {_quote_list(list(run.endpoints))}"
        run.warn(None, "url", message, "a batch runs against one endpoint; split the file by url")


def _label_counts(run: _Run) -> dict[str, int]:
    counts = zip(run.label_names, run.label_counts, strict=True)
    return dict(sorted(counts, key=lambda item: (-item[1], item[0])))


def _check_labels(run: _Run) -> None:
    counts = _label_counts(run)
    if not counts:
        return  # no valid row: the rows' own errors say why
    name = run.name("label")
    if len(counts) < 2:
        # Invalid rows are not counted, so say so rather than blame the dataset.
        among = " among the valid rows" if run.lengths.count < run.rows else ""
        message = f"found only 1 distinct label{among} ({_quote(next(iter(counts)))}); classification needs 2"
        run.error(None, name, message, "add examples of at least one other label")
        return
    hint = "add more examples of this label (dozens help), or merge it into another"
    for label_id, label in enumerate(run.label_names):  # in file order, so the warnings read top-down
        if run.label_counts[label_id] < 2:
            message = f"label {_quote(label)} has only 1 example"
            run.warn(run.label_first_lines[label_id], name, message, hint)
    (common, most), (rare, fewest) = next(iter(counts.items())), list(counts.items())[-1]
    if most > 10 * fewest:
        message = (
            f"labels are strongly imbalanced: {_quote(common)} has {most:,} examples, "
            f"{_quote(rare)} has {fewest:,} ({most / fewest:.1f}x)"
        )
        hint = "collect more examples of rare labels or downsample common ones; past 10x they get ignored"
        run.warn(None, name, message, hint)


def _stats(run: _Run) -> dict[str, Any]:
    lengths = run.lengths
    stats: dict[str, Any] = {
        "chars": lengths.summary(int, lengths.total),
        "tokens": lengths.summary(_tokens, lengths.token_total),
    }
    if run.format in CLASSIFICATION_FORMATS:
        stats["labels"] = _label_counts(run)
    elif run.format in (CHAT_JSONL, PREFERENCE_JSONL):
        messages = run.messages.summary(int, run.messages.total)
        stats["messages"] = {key: messages[key] for key in ("min", "mean", "max")}
    elif run.format == BATCH_JSONL:
        stats["endpoints"] = dict(run.endpoints)
        # Which models the requests call, so a batch is checked against the plan before it starts.
        stats["models"] = dict(run.models)
        if run.more_models:
            stats["more_models"] = True
    return stats


def summarize(report: Report) -> str:
    """One line for FileObject.status_details."""
    if report["error_count"]:
        first = report["errors"][0]
        where = f"line {first['line']}: " if first["line"] is not None else ""
        return _shorten(f"{_plural(report['error_count'], 'error')} (first: {where}{first['message']})")
    parts = [_plural(report["rows"], "row"), format_name(report["format"])]
    if "labels" in report["stats"]:
        parts.append(_plural(len(report["stats"]["labels"]), "label"))
    if report["warning_count"]:
        parts.append(_plural(report["warning_count"], "warning"))
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Message helpers
# ---------------------------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quote(value: Any, limit: int = 40) -> str:
    """A value as JSON would show it, cut short: user data can be arbitrarily long."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit] + "…"
    return _shorten(json.dumps(value, ensure_ascii=False, default=str), limit + 2)


def _quote_list(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(_quote(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _type_error(name: str, expected: str, value: Any) -> str:
    return (
        f"{name} is missing" if value is _MISSING else f"{name} must be {expected}, got {_json_type(value)}"
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)
