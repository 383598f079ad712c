"""Constrained decoding and tool calls in the runtime, on the tiny random GPT-2: a model that
knows nothing, so anything that parses does so because of the grammar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from workers.runtime.constrain import (  # noqa: E402
    GrammarError,
    json_schema_grammar,
    request_grammar,
    tool_call_grammar,
)
from workers.runtime.generate import GenerateRequestError, generate, generate_batch  # noqa: E402
from workers.runtime.models import LoadedModel, load_model  # noqa: E402
from workers.runtime.specs import GenerateRequest  # noqa: E402
from workers.runtime.tools import CHATML_TOOLS_TEMPLATE, ToolCallStream, render  # noqa: E402

CHAT = ({"role": "user", "content": "hello how are you today"},)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "mood": {"enum": ["happy", "sad"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), device="cpu", dtype="float32")


def valid_person(text: str) -> bool:
    value = json.loads(text)
    return (
        set(value) == {"name", "age", "mood"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 12
        and type(value["age"]) is int
        and 0 <= value["age"] <= 150
        and value["mood"] in ("happy", "sad")
    )


def test_a_random_model_writes_json_that_validates_at_any_temperature(gpt2: LoadedModel) -> None:
    grammar = json_schema_grammar(PERSON, strict=True)

    results = [
        generate(gpt2, GenerateRequest(messages=CHAT, max_tokens=120, temperature=t, seed=s, grammar=grammar))
        for t, s in ((0, None), (1.0, 1), (2.0, 2))
    ]

    for result in results:
        choice = result.choices[0]
        assert choice.finish_reason == "stop", choice.text
        assert valid_person(choice.text), choice.text


def test_unconstrained_rows_of_the_same_batch_are_untouched(gpt2: LoadedModel) -> None:
    plain = GenerateRequest(messages=CHAT, max_tokens=16, temperature=0)
    alone = generate(gpt2, plain).choices[0].text

    together = generate_batch(
        gpt2,
        [
            plain,
            GenerateRequest(
                messages=CHAT, max_tokens=120, temperature=0, grammar=json_schema_grammar(PERSON, strict=True)
            ),
        ],
    )

    assert together[0].choices[0].text == alone
    assert valid_person(together[1].choices[0].text)


def test_each_of_n_choices_follows_the_grammar(gpt2: LoadedModel) -> None:
    grammar = json_schema_grammar(PERSON, strict=True)
    result = generate(gpt2, GenerateRequest(messages=CHAT, max_tokens=120, n=3, seed=5, grammar=grammar))
    assert len(result.choices) == 3
    assert all(valid_person(choice.text) for choice in result.choices)


def test_a_budget_too_small_for_the_json_ends_with_length(gpt2: LoadedModel) -> None:
    grammar = json_schema_grammar(PERSON, strict=True)
    choice = generate(
        gpt2, GenerateRequest(messages=CHAT, max_tokens=3, temperature=0, grammar=grammar)
    ).choices[0]
    assert choice.finish_reason == "length"
    assert choice.text.startswith("{")


def test_a_required_tool_call_is_always_well_formed(gpt2: LoadedModel) -> None:
    tools = ({"type": "function", "function": WEATHER}, {"type": "function", "function": TIME})
    grammar = request_grammar(None, list(tools), "required", parallel_tool_calls=False)

    for seed in range(3):
        text = (
            generate(
                # the tools are not rendered (the tiny model reads 256 tokens): the grammar alone decides
                gpt2,
                GenerateRequest(messages=CHAT, max_tokens=160, seed=seed, grammar=grammar),
            )
            .choices[0]
            .text
        )
        parser = ToolCallStream(frozenset({"get_weather", "get_time"}))
        parser.feed(text)
        parser.finish()
        assert len(parser.calls) == 1, text
        call = parser.calls[0]["function"]
        arguments = json.loads(call["arguments"])
        if call["name"] == "get_weather":
            assert set(arguments) == {"city"} and len(arguments["city"]) <= 10
        else:
            assert arguments == {}
        assert parser.message_content is None


def test_a_named_tool_choice_calls_that_function(gpt2: LoadedModel) -> None:
    tools = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]
    grammar = request_grammar(None, tools, {"type": "function", "function": {"name": "get_time"}})
    text = (
        generate(gpt2, GenerateRequest(messages=CHAT, max_tokens=160, temperature=0, grammar=grammar))
        .choices[0]
        .text
    )
    assert text == '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


def test_bad_schemas_are_refused_with_the_compiler_message() -> None:
    with pytest.raises(GrammarError, match="Invalid type: objet"):
        json_schema_grammar({"type": "objet"}, strict=True)
    with pytest.raises(GrammarError, match="unclosed group"):
        json_schema_grammar({"type": "string", "pattern": "(("}, strict=True)
    with pytest.raises(GrammarError, match="Unknown format: colour"):
        json_schema_grammar({"type": "string", "format": "colour"}, strict=True)
    # not strict: what cannot be enforced is ignored, as OpenAI's non-strict schemas are hints
    assert json_schema_grammar({"type": "string", "format": "colour"}, strict=False)
    with pytest.raises(GrammarError):
        tool_call_grammar([{"name": "f", "parameters": {"type": "objet"}}], parallel=True)


def test_a_model_without_a_chatml_or_tool_template_cannot_call_tools(gpt2: LoadedModel) -> None:
    tokenizer = gpt2.tokenizer
    own = tokenizer.chat_template
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    try:
        with pytest.raises(GenerateRequestError, match="cannot call tools") as caught:
            generate(gpt2, GenerateRequest(messages=CHAT, tools=({"type": "function", "function": TIME},)))
        assert caught.value.param == "tools"
    finally:
        tokenizer.chat_template = own


def test_the_tool_template_renders_a_whole_tool_conversation_turn_by_turn(gpt2: LoadedModel) -> None:
    tools = [{"type": "function", "function": WEATHER}]
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"},
        {"role": "assistant", "content": "It is -3 C and snowing."},
    ]

    text = render(gpt2.tokenizer, conversation, tools)

    assert gpt2.tokenizer.chat_template != CHATML_TOOLS_TEMPLATE  # the tiny model's own has no tools
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '\n<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n-3 C, snow\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is -3 C and snowing.<|im_end|>\n"
    ) in text
    # each prefix with a generation prompt is a prefix of the whole: what training relies on
    for end in (2, 4):  # the turns before each assistant reply
        assert conversation[end]["role"] == "assistant"
        assert text.startswith(render(gpt2.tokenizer, conversation[:end], tools, add_generation_prompt=True))
    # without tools the model's own template is used, unchanged
    plain = [{"role": "user", "content": "hi"}]
    assert render(gpt2.tokenizer, plain) == gpt2.tokenizer.apply_chat_template(plain, tokenize=False)


def test_tool_calls_are_read_from_streamed_text_in_any_split() -> None:
    text = (
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n[{"name": "get_time", "arguments": {}}]\n</tool_call>'
    )
    for size in (1, 3, 7, len(text)):
        parser = ToolCallStream(frozenset({"get_weather", "get_time"}))
        events = []
        for start in range(0, len(text), size):
            events += parser.feed(text[start : start + size])
        events += parser.finish()
        content = "".join(value for kind, value in events if kind == "content")
        calls = [value for kind, value in events if kind == "call"]
        # the whitespace before a call is layout: what streams is exactly the content stored
        assert content == parser.message_content == "Let me look."
        assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
            (0, "get_weather", '{"city": "Oslo"}'),
            (1, "get_time", "{}"),
        ]
        assert calls == parser.calls and all(
            c["id"].startswith("call_") and len(c["id"]) == 29 for c in calls
        )


def test_text_that_only_looks_like_a_tool_call_stays_content() -> None:
    for text in (
        "a <tool_ mention and <b>bold</b>",
        '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',  # not an offered function
        "<tool_call>\nnot json\n</tool_call>",
    ):
        parser = ToolCallStream(frozenset({"get_time"}))
        events = parser.feed(text) + parser.finish()
        assert parser.calls == []
        assert "".join(value for _, value in events) == text == parser.message_content


def test_a_call_left_open_at_the_end_still_counts() -> None:
    parser = ToolCallStream(frozenset({"get_time"}))
    parser.feed('<tool_call>\n{"name": "get_time", "arguments": {}}')
    [(kind, call)] = parser.finish()
    assert kind == "call" and call["function"] == {"name": "get_time", "arguments": "{}"}


def test_whitespace_around_calls_never_streams_and_a_reply_in_words_keeps_all_of_it() -> None:
    parser = ToolCallStream(frozenset({"get_time"}))
    events = parser.feed("\n  ") + parser.feed(
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n'
    )
    events += parser.finish()
    assert [kind for kind, _ in events] == ["call"] and parser.message_content is None

    words = ToolCallStream(frozenset({"get_time"}))
    events = words.feed("It is noon.\n") + words.feed("  ") + words.finish()
    assert "".join(value for _, value in events) == words.message_content == "It is noon.\n  "


def test_a_tool_schema_with_defs_resolves_against_its_own_root(gpt2: LoadedModel) -> None:
    # what pydantic writes for a nested model: a $ref into the schema's own $defs
    nested = {
        "name": "book",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"guest": {"$ref": "#/$defs/Guest"}},
            "required": ["guest"],
            "additionalProperties": False,
            "$defs": {
                "Guest": {
                    "type": "object",
                    "properties": {"age": {"type": "integer", "minimum": 1, "maximum": 99}},
                    "required": ["age"],
                    "additionalProperties": False,
                }
            },
        },
    }
    tools = [{"type": "function", "function": nested}, {"type": "function", "function": TIME}]
    named = request_grammar(None, tools, {"type": "function", "function": {"name": "book"}})
    choice = generate(
        gpt2, GenerateRequest(messages=CHAT, max_tokens=160, temperature=0, grammar=named)
    ).choices[0]
    assert choice.finish_reason == "stop"
    call = json.loads(choice.text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert call["name"] == "book" and 1 <= call["arguments"]["guest"]["age"] <= 99


def test_a_schema_cannot_loosen_its_own_compile_options() -> None:
    colour = {"type": "string", "format": "colour", "x-guidance": {"lenient": True}}
    with pytest.raises(GrammarError, match="Unknown format: colour"):
        json_schema_grammar(colour, strict=True)
    # one lenient tool does not make a strict one lenient
    with pytest.raises(GrammarError, match="Unknown format: colour"):
        tool_call_grammar(
            [
                {"name": "a", "parameters": {"type": "string"}},
                {"name": "b", "strict": True, "parameters": colour},
            ],
            parallel=True,
        )


def test_a_schema_too_costly_to_compile_is_refused_within_the_budget() -> None:
    from workers.runtime.constrain import _remembered_problem, bounded_request_problem

    # a 1 KB schema whose emptiness check takes seconds and gigabytes
    costly = {"allOf": [{"type": "string", "pattern": f".*a{i}.*"} for i in range(20)]}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": costly}}
    problem = bounded_request_problem(response_format, None, None, True)
    assert problem is not None and problem[0] == "response_format"
    assert problem[1].startswith("The schema is too complex to enforce: compiling it needs more than ")
    # the verdict is remembered: the same schema again is not compiled again
    hits = _remembered_problem.cache_info().hits
    assert bounded_request_problem(response_format, None, None, True) == problem
    assert _remembered_problem.cache_info().hits == hits + 1
    # an ordinary schema passes, and a bad one names itself
    fine = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    assert bounded_request_problem(fine, None, None, True) is None
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "objet"}}}]
    assert bounded_request_problem(None, tools, "auto", True) == (
        "tools[0].function.parameters",
        "Invalid schema for function 'f': Invalid type: objet",
    )


def test_with_tool_choice_auto_an_answer_is_words_or_well_formed_calls(gpt2: LoadedModel) -> None:
    from workers.runtime.constrain import Constraint
    from workers.runtime.generate import _vocab_size, eos_token_ids

    tools = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]
    grammar = request_grammar(None, tools, "auto")

    def accepted(text: str) -> bool:
        constraint = Constraint(gpt2.tokenizer, _vocab_size(gpt2), eos_token_ids(gpt2), grammar)
        ids = gpt2.tokenizer(text, add_special_tokens=False)["input_ids"]
        return bool(constraint.matcher.validate_tokens(ids) == len(ids))

    assert accepted("hello, no tool is needed <here>")
    assert accepted('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert not accepted('<tool_call>\n{"name": "rm_rf", "arguments": {}}')  # not an offered function
    assert not accepted('<tool_call>\n{"name": "get_weather", "arguments": {"town": "Oslo"}}')
    # and a sampled answer is one or the other
    text = (
        generate(gpt2, GenerateRequest(messages=CHAT, max_tokens=60, seed=1, grammar=grammar)).choices[0].text
    )
    assert accepted(text)


def test_a_grammar_in_error_ends_its_row_instead_of_failing_the_batch(
    gpt2: LoadedModel,
) -> None:
    from workers.runtime.constrain import Constraint, apply_constraints
    from workers.runtime.generate import _vocab_size, eos_token_ids

    vocab = _vocab_size(gpt2)
    constraint = Constraint(
        gpt2.tokenizer, vocab, eos_token_ids(gpt2), json_schema_grammar(PERSON, strict=True)
    )
    constraint.accept(gpt2.tokenizer("x", add_special_tokens=False)["input_ids"][0])  # not JSON: an error
    assert constraint.complete

    logits = torch.randn((2, vocab))
    masked = apply_constraints(logits, [None, constraint])

    # the unconstrained row is untouched; the broken one may only end (never a row of all -inf,
    # which would make sampling fail for the whole batch)
    assert torch.equal(masked[0], logits[0])
    assert torch.isfinite(masked[1]).nonzero().flatten().tolist() == sorted(eos_token_ids(gpt2))
