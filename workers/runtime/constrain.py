"""Constrained decoding: output that always parses, for `response_format` JSON modes and for tool
calls a request requires (docs/api.md, "Structured outputs and tools").

A grammar (llguidance's format, built from a JSON schema or a Lark grammar that embeds JSON
schemas) is compiled per request; each constrained row of a batch keeps an `LLMatcher` that says,
before every token, which tokens may come next. Disallowed tokens get -inf logits before sampling,
so whatever the temperature, the text stays inside the grammar, and the row ends as soon as the
grammar is complete.

This module needs only llguidance (no torch) for building and checking grammars, so the web
process refuses a bad schema before any work is queued; masks need torch and run on workers.
"""

from __future__ import annotations

import functools
import json
import weakref
from typing import TYPE_CHECKING, Any

import llguidance

if TYPE_CHECKING:
    import torch

# One fixed JSON layout: `{"a": 1, "b": [2, 3]}`. Flexible whitespace lets a small model pad
# forever with newlines (a known failure of JSON modes); these separators are also the ones the
# tool-call template writes, so a fine-tune sees the layout it was trained on.
JSON_LAYOUT: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


class GrammarError(ValueError):
    """A schema that cannot be turned into a grammar; the message says why."""


def _compile_options(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
    """The schema with our layout and leniency as its compile options: a schema's own
    `x-guidance` is dropped, so no request can loosen a strict schema or change the layout."""
    kept = {key: value for key, value in schema.items() if key != "x-guidance"}
    return {**kept, "x-guidance": {**JSON_LAYOUT, "lenient": not strict}}


def json_schema_grammar(schema: dict[str, Any], *, strict: bool) -> str:
    """Any JSON value the schema allows. `strict` refuses keywords the compiler cannot enforce;
    otherwise they are ignored (OpenAI's non-strict schemas are a hint, not a contract)."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(_compile_options(schema, strict))
    except ValueError as exc:
        raise GrammarError(str(exc)) from exc
    return _checked(grammar)


def tool_call_grammar(functions: list[dict[str, Any]], *, parallel: bool, or_text: bool = False) -> str:
    """One tool call (or several, one per line, when `parallel`) of the given functions, in the
    format the chat template describes: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`.
    With `or_text` (tool_choice "auto"), an answer in words is allowed too: anything that does not
    begin with "<", so an answer that begins a call is a well-formed call.

    Each function's `parameters` is the root of its own embedded JSON grammar, so its `$ref`s
    (`#/$defs/…`, which pydantic writes for nested models) resolve against it, and each is strict
    or lenient on its own."""
    calls = []
    for function in functions:
        parameters = _compile_options(
            function.get("parameters") or {"type": "object"}, bool(function.get("strict"))
        )
        head = json.dumps(f'{TOOL_CALL_OPEN}\n{{"name": "{function["name"]}", "arguments": ')
        calls.append(f"{head} %json {json.dumps(parameters)} {json.dumps('}' + chr(10) + TOOL_CALL_CLOSE)}")
    # Words are anything that does not begin with "<": an answer that does is a call, in full.
    start = ["start: calls | TEXT", "TEXT: /[^<](.|\\n)*/"] if or_text else ["start: calls"]
    rules = [*start, 'calls: call ("\\n" call)*' if parallel else "calls: call", f"call: {' | '.join(calls)}"]
    return _checked(llguidance.LLMatcher.grammar_from_lark("\n".join(rules) + "\n"))


def _checked(grammar: str) -> str:
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(" ".join(line.strip() for line in error.splitlines() if line.strip()))
    return grammar


# ---------------------------------------------------------------------------------------------
# Masks (workers only)
# ---------------------------------------------------------------------------------------------

# Building an LLTokenizer walks the whole vocabulary (~0.3 s for 49k tokens): once per tokenizer.
_TOKENIZERS: weakref.WeakKeyDictionary[Any, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()


def _ll_tokenizer(tokenizer: Any, n_vocab: int, eos_ids: frozenset[int]) -> llguidance.LLTokenizer:
    found = _TOKENIZERS.get(tokenizer)
    if found is None:
        import llguidance.hf

        # Every end-of-sequence id the model may stop on is allowed once the grammar is complete.
        found = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=sorted(eos_ids))
        _TOKENIZERS[tokenizer] = found
    return found


class Constraint:
    """One row's grammar state: which tokens may come next, advanced by each accepted token."""

    def __init__(self, tokenizer: Any, n_vocab: int, eos_ids: frozenset[int], grammar: str) -> None:
        self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, n_vocab, eos_ids), grammar, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        self.n_vocab = n_vocab

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(self.matcher, bitmask, row)

    def accept(self, token_id: int) -> None:
        self.matcher.consume_token(token_id)

    @property
    def complete(self) -> bool:
        """The grammar is finished: nothing but an end of sequence may follow (or it can go no
        further, which a schema that compiles but allows nothing would cause: the row ends)."""
        return self.matcher.is_stopped() or self.matcher.is_error()


def apply_constraints(logits: torch.Tensor, constraints: list[Constraint | None]) -> torch.Tensor:
    """`logits` with every token a row's grammar forbids set to -inf (unconstrained rows as they are)."""
    import llguidance.torch
    import torch

    rows = [i for i, constraint in enumerate(constraints) if constraint is not None]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    bitmask = llguidance.torch.allocate_token_bitmask(len(rows), vocab)
    for k, i in enumerate(rows):
        constraints[i].fill(bitmask, k)  # type: ignore[union-attr]
    # Unpack 32 tokens per int32 word (bit j of word w is token 32·w + j).
    bits = torch.bitwise_left_shift(torch.ones(32, dtype=torch.int32), torch.arange(32, dtype=torch.int32))
    allowed = (bitmask[:, :, None] & bits) != 0
    allowed = allowed.reshape(len(rows), -1)[:, :vocab]
    # A row its grammar allows nothing is left as it is (all -inf would make sampling fail for the
    # whole batch); its next token puts the matcher in error, which ends the row.
    allowed[~allowed.any(dim=-1)] = True
    allowed = allowed.to(logits.device)
    index = torch.tensor(rows, device=logits.device)
    masked = logits.clone()
    masked[index] = logits[index].masked_fill(~allowed, float("-inf"))
    return masked


# ---------------------------------------------------------------------------------------------
# A chat request's grammar
# ---------------------------------------------------------------------------------------------


def required_functions(tools: list[dict[str, Any]] | None, tool_choice: Any) -> list[dict[str, Any]]:
    """The functions a request obliges the model to call: all of them for "required", the named
    one for `{"type": "function", "function": {"name": …}}`, none otherwise."""
    functions = [tool["function"] for tool in tools or []]
    if tool_choice == "required":
        return functions
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        return [function for function in functions if function["name"] == name]
    return []


def request_grammar(
    response_format: dict[str, Any] | None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
) -> str | None:
    """The grammar a chat request's answer must follow, or None for free text."""
    functions = required_functions(tools, tool_choice)
    if functions:
        # A named function is called once, as OpenAI does; "required" may call several.
        parallel = parallel_tool_calls and not isinstance(tool_choice, dict)
        return tool_call_grammar(functions, parallel=parallel)
    if tools and tool_choice in (None, "auto"):
        offered = [tool["function"] for tool in tools]
        return tool_call_grammar(offered, parallel=parallel_tool_calls, or_text=True)
    kind = (response_format or {}).get("type")
    if kind == "json_object":
        return json_schema_grammar({"type": "object"}, strict=False)
    if kind == "json_schema":
        spec = response_format["json_schema"]  # type: ignore[index]
        return json_schema_grammar(spec.get("schema") or {"type": "object"}, strict=bool(spec.get("strict")))
    return None


# ---------------------------------------------------------------------------------------------
# Checking a request's schemas, bounded
# ---------------------------------------------------------------------------------------------

# Compiling a schema is not bounded by its size: a 1 KB `allOf` of a dozen `pattern`s took 6 s
# and gigabytes to prove non-empty. The web process checks a request's schemas in a forked child
# with a time and memory budget, and refuses what does not fit.
CHECK_SECONDS = 2.0
CHECK_MEMORY_BYTES = 1 << 30
TOO_COMPLEX = "The schema is too complex to enforce: compiling it needs more than {budget}."


def request_problem(
    response_format: dict[str, Any] | None,
    tools: list[dict[str, Any]] | None,
    tool_choice: Any,
    parallel_tool_calls: bool,
) -> tuple[str, str] | None:
    """(param, message) for the first schema of a chat request that cannot be enforced, or None.
    Each schema is compiled on its own first, so that the message names it."""
    schemas: list[tuple[str, str, dict[str, Any], bool]] = [
        (
            f"tools[{index}].function.parameters",
            f"function '{tool['function']['name']}'",
            tool["function"]["parameters"],
            bool(tool["function"].get("strict")),
        )
        for index, tool in enumerate(tools or [])
        if "parameters" in tool["function"]
    ]
    spec = (response_format or {}).get("json_schema") or {}
    if "schema" in spec:
        schemas.append(
            (
                "response_format.json_schema.schema",
                f"response_format '{spec['name']}'",
                spec["schema"],
                bool(spec.get("strict")),
            )
        )
    for param, what, schema, strict in schemas:
        try:
            json_schema_grammar(schema, strict=strict)
        except GrammarError as exc:
            return param, f"Invalid schema for {what}: {exc}"
    try:
        request_grammar(response_format, tools, tool_choice, parallel_tool_calls)
    except GrammarError as exc:
        return "tools" if tools else "response_format", f"Invalid schema: {exc}"
    return None


def bounded_request_problem(*args: Any) -> tuple[str, str] | None:
    """`request_problem` in a forked child limited to CHECK_SECONDS and CHECK_MEMORY_BYTES; a schema
    that needs more is a problem of its own. Verdicts are remembered: a client sends the same
    schemas call after call, and a fork costs ~9 ms where the compile costs ~0.3 ms."""
    return _remembered_problem(json.dumps(args, sort_keys=True))


@functools.lru_cache(maxsize=1024)
def _remembered_problem(key: str) -> tuple[str, str] | None:
    return _forked_problem(*json.loads(key))


def _forked_problem(*args: Any) -> tuple[str, str] | None:
    import os
    import resource
    import select
    import signal
    import time

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compile, write the answer as JSON, and leave without any cleanup
        try:
            os.close(read)
            limit = _address_space() + CHECK_MEMORY_BYTES
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            data = json.dumps(request_problem(*args)).encode()
            while data:
                data = data[os.write(write, data) :]
        finally:
            os._exit(0)
    os.close(write)
    poller = select.poll()  # not select.select: a busy web process may hold descriptors past 1024
    poller.register(read, select.POLLIN)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHECK_SECONDS
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                os.kill(pid, signal.SIGKILL)
                budget = f"{CHECK_SECONDS:g} s"
                return _where(args), TOO_COMPLEX.format(budget=budget)
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    if not chunks:  # the child died: out of memory, most likely
        return _where(args), TOO_COMPLEX.format(budget=f"{CHECK_MEMORY_BYTES >> 20} MiB of memory")
    answer = json.loads(b"".join(chunks))
    return None if answer is None else (answer[0], answer[1])


def _where(args: tuple[Any, ...]) -> str:
    return "tools" if args[1] else "response_format"


def _address_space() -> int:
    """This process's virtual memory size: the child's limit is counted on top of it."""
    with open("/proc/self/statm") as statm:
        import os

        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
