"""Tool calling on local chat models: the prompt that offers tools, and the calls read back from
the text (docs/api.md, "Structured outputs and tools").

The format is the Hermes one that Qwen2.5, Hermes and SmolLM3 use: the system turn lists the
functions inside `<tools></tools>`, the model answers each call as
`<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`, and a tool's result comes back
as a user turn inside `<tool_response></tool_response>`. A model whose own chat template renders
tools in that format keeps its template; a ChatML model without tools in its template (SmolLM2)
gets `CHATML_TOOLS_TEMPLATE`, in training and in serving alike, so that a fine-tune on OpenAI's
tool-calling examples is called exactly the way it learned. Any other model cannot call tools.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.runtime.constrain import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

CHATML_TOOLS_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message['content'] %}{{- message['content'] + '\\n' }}{%- endif %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set function = call['function'] %}"
    "{%- set arguments = function['arguments'] %}"
    "{{- '<tool_call>\\n{\"name\": ' + (function['name'] | tojson) + ', \"arguments\": ' }}"
    "{{- arguments if arguments is string else (arguments | tojson) }}"
    "{{- '}\\n</tool_call>' }}"
    "{%- if not loop.last %}{{- '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def uses_tools(messages: Sequence[Mapping[str, Any]], tools: Any) -> bool:
    """Whether a conversation needs a template that knows tools: it offers some, calls some, or
    carries a tool's result."""
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def tool_template(tokenizer: Any) -> str | None:
    """The chat template to render a conversation with tools, or None if the model cannot call
    tools in the Hermes format."""
    own = getattr(tokenizer, "chat_template", None)
    if not isinstance(own, str):
        return None
    if TOOL_CALL_OPEN in own and "tools" in own:
        return own
    if "<|im_start|>" in own:
        return CHATML_TOOLS_TEMPLATE
    return None


def render(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Any = None,
    *,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as text: with the model's own template, or with the tool template when the
    conversation uses tools (ValueError if the model has none)."""
    template = None
    if uses_tools(messages, tools):
        template = tool_template(tokenizer)
        if template is None:
            raise ValueError("the model's chat template has no tool calling")
    text: str = tokenizer.apply_chat_template(
        list(messages),
        tools=tools or None,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    return text


# ---------------------------------------------------------------------------------------------
# Reading calls back
# ---------------------------------------------------------------------------------------------

_ID_ALPHABET = string.ascii_letters + string.digits


def call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _parse_call(body: str, names: frozenset[str]) -> list[dict[str, str]] | None:
    """The calls one `<tool_call>` block holds: an object, or a list of them (SmolLM's own habit);
    None when it is not JSON or names a function the request did not offer."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append({"name": item["name"], "arguments": arguments})
    return calls


@dataclass
class ToolCallStream:
    """A choice's text as it streams, split into message content and tool calls.

    Text that might be the start of a `<tool_call>` block is held back until it is clear; a block
    becomes one call (or several) when it closes, with its id fixed then, so the streamed calls and
    the stored ones are the same. A block that does not parse stays content, as the model wrote it.
    """

    names: frozenset[str]
    calls: list[dict[str, Any]] = field(default_factory=list)
    content: str = ""
    _pending: str = ""
    _held: str = ""  # trailing whitespace, not sent yet

    def feed(self, delta: str) -> list[tuple[str, Any]]:
        """Add text; return ("content", text) and ("call", call) events that became final."""
        self._pending += delta
        events: list[tuple[str, Any]] = []
        while True:
            start = self._pending.find(TOOL_CALL_OPEN)
            if start < 0:
                keep = _partial_suffix(self._pending, TOOL_CALL_OPEN)
                self._content(self._pending[: len(self._pending) - keep], events)
                self._pending = self._pending[len(self._pending) - keep :]
                return events
            end = self._pending.find(TOOL_CALL_CLOSE, start)
            if end < 0:
                self._content(self._pending[:start], events)
                self._pending = self._pending[start:]
                return events
            self._content(self._pending[:start], events)
            block = self._pending[start : end + len(TOOL_CALL_CLOSE)]
            self._pending = self._pending[end + len(TOOL_CALL_CLOSE) :]
            self._block(block, events)

    def finish(self) -> list[tuple[str, Any]]:
        """No more text: a block the model left open (it stopped right after the JSON) still counts."""
        events: list[tuple[str, Any]] = []
        rest, self._pending = self._pending, ""
        if rest.startswith(TOOL_CALL_OPEN):
            self._block(rest, events)
        else:
            self._content(rest, events)
        if not self.calls and self._held:  # a reply in words keeps every character
            self.content += self._held
            events.append(("content", self._held))
        self._held = ""
        return events

    def _block(self, block: str, events: list[tuple[str, Any]]) -> None:
        body = block[len(TOOL_CALL_OPEN) :].removesuffix(TOOL_CALL_CLOSE)
        parsed = _parse_call(body.strip(), self.names)
        if parsed is None:
            self._content(block, events)
            return
        self._held = ""  # whitespace around calls is layout, not content
        for call in parsed:
            full = {
                "index": len(self.calls),
                "id": call_id(),
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            self.calls.append(full)
            events.append(("call", full))

    def _content(self, text: str, events: list[tuple[str, Any]]) -> None:
        # Trailing whitespace is held until it is clear whether text or a call follows, so that
        # what streams is exactly the content stored.
        combined = self._held + text
        kept = combined.rstrip()
        self._held = combined[len(kept) :]
        if kept:
            self.content += kept
            events.append(("content", kept))

    @property
    def message_content(self) -> str | None:
        """The content OpenAI's message carries: None when the reply is only tool calls."""
        if self.calls:
            return self.content or None
        return self.content


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that could begin `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
