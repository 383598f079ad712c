"""The graders (apps/jobs/graders.py): validation with its exact messages, every operation and metric,
templates, model graders against a judge callable, and multi's formula, which must stay a formula."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from nltk.translate.gleu_score import sentence_gleu
from nltk.translate.meteor_score import meteor_score
from rapidfuzz import fuzz
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu import sentence_bleu

from apps.core.errors import ActionError
from apps.jobs.graders import (
    GRADER_TYPES,
    METRICS,
    PYTHON_REFUSED,
    Grade,
    JudgeReply,
    check_template,
    grade,
    message_text,
    referenced_models,
    render,
    validate_grader,
)
from tests.contract.openapi import assert_matches, registry

P = "testing_criteria[0]"
ITEM = {"label": "Paris", "answer": {"city": "Paris", "tags": ["capital", "france"]}, "n": 3}
SAMPLE = {"output_text": "The capital is Paris.", "output_json": {"city": "Paris"}}


def schema(name: str) -> dict[str, Any]:
    return registry().contents("urn:openai-openapi")["components"]["schemas"][name]


def refused(spec: Any, *, in_eval: bool = True) -> ActionError:
    with pytest.raises(ActionError) as caught:
        validate_grader(spec, param=P, in_eval=in_eval)
    return caught.value


def string_check(**fields: Any) -> dict[str, Any]:
    base = {"type": "string_check", "name": "check", "input": "{{sample.output_text}}", "reference": "x"}
    return {**base, "operation": "eq", **fields}


def similarity(metric: str | None, **fields: Any) -> dict[str, Any]:
    return {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "evaluation_metric": metric,
        "pass_threshold": 0.5,
        **fields,
    }


def score_model(**fields: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "judge-1",
        "input": [
            {"role": "system", "content": "Score the answer from 0 to 1."},
            {"role": "user", "content": "Reference: {{item.label}}\nAnswer: {{ sample.output_text }}"},
        ],
        **fields,
    }


def label_model(**fields: Any) -> dict[str, Any]:
    return {
        "type": "label_model",
        "name": "sentiment",
        "model": "judge-1",
        "input": [{"role": "user", "content": "Classify: {{sample.output_text}}"}],
        "labels": ["positive", "neutral", "negative"],
        "passing_labels": ["positive"],
        **fields,
    }


def multi(graders: dict[str, Any], formula: str, **fields: Any) -> dict[str, Any]:
    return {"type": "multi", "name": "combined", "graders": graders, "calculate_output": formula, **fields}


class FakeJudge:
    """The judge callable the worker would pass in: answers the given texts in turn, keeps the calls."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]] = []

    def __call__(
        self,
        model: str,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        sampling_params: dict[str, Any],
    ) -> JudgeReply:
        self.calls.append((model, messages, response_format, sampling_params))
        return JudgeReply(text=self.answers.pop(0), model=model, prompt_tokens=20, completion_tokens=7)


def run(spec: dict[str, Any], **kwargs: Any) -> Grade:
    return grade(validate_grader(spec, param=P, in_eval=spec["type"] != "multi"), ITEM, SAMPLE, **kwargs)


def answer(result: Any) -> str:
    return json.dumps({"steps": [{"description": "compared", "conclusion": "close"}], "result": result})


# --- The spec's own names and examples --------------------------------------------------------------
def test_the_types_and_metrics_are_the_specs() -> None:
    assert GRADER_TYPES == ("string_check", "text_similarity", "score_model", "label_model", "multi")
    assert list(METRICS) == schema("GraderTextSimilarity")["properties"]["evaluation_metric"]["enum"]


@pytest.mark.parametrize(
    ("component", "in_eval"),
    [
        ("GraderStringCheck", True),
        ("GraderStringCheck", False),
        ("GraderTextSimilarity", False),
        ("GraderLabelModel", True),
        ("CreateEvalLabelModelGrader", True),
    ],
)
def test_the_specs_examples_validate_unchanged(component: str, in_eval: bool) -> None:
    example = json.loads(schema(component)["x-oaiMeta"]["example"])
    assert validate_grader(example, param=P, in_eval=in_eval) == example | (
        {"input": [{"type": "message", **m} for m in example["input"]]} if "labels" in example else {}
    )


def test_normalized_graders_match_openais_eval_schemas() -> None:
    check = validate_grader(string_check(), param=P, in_eval=True)
    assert_matches(check, "EvalGraderStringCheck")
    assert_matches(validate_grader(similarity("bleu"), param=P, in_eval=True), "EvalGraderTextSimilarity")
    scored = validate_grader(score_model(pass_threshold=0.7), param=P, in_eval=True)
    assert_matches(scored, "EvalGraderScoreModel")
    assert_matches(validate_grader(label_model(), param=P, in_eval=True), "EvalGraderLabelModel")


def test_defaults_are_filled_and_nulls_dropped() -> None:
    spec = score_model(sampling_params={"temperature": 0.2, "seed": None, "max_completions_tokens": 64})
    out = validate_grader(spec, param=P, in_eval=True)
    assert out["range"] == [0.0, 1.0]
    assert out["sampling_params"] == {"temperature": 0.2, "max_completions_tokens": 64}
    assert out["input"][0] == {
        "type": "message",
        "role": "system",
        "content": "Score the answer from 0 to 1.",
    }
    assert "pass_threshold" not in out
    assert validate_grader(score_model(), param=P, in_eval=True)["sampling_params"] == {}


# --- Validation: every refusal with its exact message ----------------------------------------------
def test_the_python_grader_is_refused_everywhere() -> None:
    python = {"type": "python", "name": "p", "source": "def grade(sample, item): return 1.0"}
    for in_eval in (True, False):
        error = refused(python, in_eval=in_eval)
        assert error.message == PYTHON_REFUSED and error.param == f"{P}.type"
    assert PYTHON_REFUSED == (
        "The python grader is not supported: running customers' code is out of scope. "
        "Use string_check, text_similarity, score_model, label_model or multi."
    )
    error = refused(multi({"p": python}, "p"), in_eval=False)
    assert error.message == PYTHON_REFUSED and error.param == f"{P}.graders.p.type"


@pytest.mark.parametrize(
    ("spec", "in_eval", "message", "param"),
    [
        ("string_check", True, f"{P} must be a grader object.", P),
        ({"name": "x"}, True, f"Missing required parameter: '{P}.type'.", f"{P}.type"),
        (
            {"type": "exact"},
            True,
            f"{P}.type must be one of string_check, text_similarity, score_model, label_model or multi; "
            "got 'exact'.",
            f"{P}.type",
        ),
        (
            multi({"a": string_check()}, "a"),
            True,
            "The multi grader is only for fine-tuning; an eval's testing criteria are string_check, "
            "text_similarity, score_model or label_model graders.",
            f"{P}.type",
        ),
        (
            label_model(),
            False,
            "In fine-tuning, a label_model grader can only be used inside a multi grader.",
            f"{P}.type",
        ),
        (
            multi({"inner": multi({"a": string_check()}, "a")}, "inner"),
            False,
            "A multi grader cannot contain another multi grader.",
            f"{P}.graders.inner.type",
        ),
        (string_check(weight=2), True, "Unrecognized grader argument: weight", f"{P}.weight"),
        (
            string_check(pass_threshold=1),
            True,
            "Unrecognized grader argument: pass_threshold",
            f"{P}.pass_threshold",
        ),
        (string_check(name=None), True, f"Missing required parameter: '{P}.name'.", f"{P}.name"),
        (string_check(name=7), True, f"{P}.name must be a string.", f"{P}.name"),
        (string_check(name="  "), True, f"{P}.name must be a non-empty string.", f"{P}.name"),
        (string_check(input=None), True, f"Missing required parameter: '{P}.input'.", f"{P}.input"),
        (string_check(input=["a"]), True, f"{P}.input must be a string.", f"{P}.input"),
        (
            string_check(reference=None),
            True,
            f"Missing required parameter: '{P}.reference'.",
            f"{P}.reference",
        ),
        (
            string_check(operation=None),
            True,
            f"Missing required parameter: '{P}.operation'.",
            f"{P}.operation",
        ),
        (
            string_check(operation="contains"),
            True,
            f"{P}.operation must be one of eq, ne, like, ilike; got 'contains'.",
            f"{P}.operation",
        ),
        (
            string_check(input="{{output_text}}"),
            True,
            f"Invalid template variable {{{{output_text}}}} in {P}.input: use {{{{item.<path>}}}} or "
            "{{sample.<path>}}.",
            f"{P}.input",
        ),
        (
            string_check(reference="{{ item }}"),
            True,
            f"Invalid template variable {{{{item}}}} in {P}.reference: use {{{{item.<path>}}}} or "
            "{{sample.<path>}}.",
            f"{P}.reference",
        ),
        (
            string_check(reference="{{item.a b}}"),
            True,
            f"Invalid template variable {{{{item.a b}}}} in {P}.reference: use {{{{item.<path>}}}} or "
            "{{sample.<path>}}.",
            f"{P}.reference",
        ),
        (
            similarity(None),
            True,
            f"Missing required parameter: '{P}.evaluation_metric'.",
            f"{P}.evaluation_metric",
        ),
        (
            similarity("jaccard"),
            True,
            f"{P}.evaluation_metric must be one of cosine, fuzzy_match, bleu, gleu, meteor, rouge_1, rouge_2, "
            "rouge_3, rouge_4, rouge_5, rouge_l; got 'jaccard'.",
            f"{P}.evaluation_metric",
        ),
        (
            similarity("bleu", pass_threshold=None),
            True,
            f"Missing required parameter: '{P}.pass_threshold'.",
            f"{P}.pass_threshold",
        ),
        (
            similarity("bleu", pass_threshold=True),
            True,
            f"{P}.pass_threshold must be a number.",
            f"{P}.pass_threshold",
        ),
        (
            similarity("bleu", pass_threshold="0.5"),
            True,
            f"{P}.pass_threshold must be a number.",
            f"{P}.pass_threshold",
        ),
    ],
)
def test_refusals(spec: Any, in_eval: bool, message: str, param: str) -> None:
    error = refused(spec, in_eval=in_eval)
    assert (error.message, error.param, error.status) == (message, param, 400)


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"model": None}, f"Missing required parameter: '{P}.model'.", f"{P}.model"),
        ({"model": ""}, f"{P}.model must be a non-empty string.", f"{P}.model"),
        ({"input": None}, f"Missing required parameter: '{P}.input'.", f"{P}.input"),
        ({"input": []}, f"{P}.input must be a non-empty array of messages.", f"{P}.input"),
        ({"input": "Score it"}, f"{P}.input must be a non-empty array of messages.", f"{P}.input"),
        ({"input": ["hi"]}, f"{P}.input[0] must be an object with a role and content.", f"{P}.input[0]"),
        (
            {"input": [{"role": "user", "content": "x", "name": "bob"}]},
            "Unrecognized grader argument: name",
            f"{P}.input[0].name",
        ),
        (
            {"input": [{"type": "item", "role": "user", "content": "x"}]},
            f"{P}.input[0].type must be 'message'.",
            f"{P}.input[0].type",
        ),
        (
            {"input": [{"role": "tool", "content": "x"}]},
            f"{P}.input[0].role must be one of user, assistant, system, developer; got 'tool'.",
            f"{P}.input[0].role",
        ),
        (
            {"input": [{"role": "user"}]},
            f"Missing required parameter: '{P}.input[0].content'.",
            f"{P}.input[0].content",
        ),
        (
            {"input": [{"role": "user", "content": 5}]},
            f"{P}.input[0].content must be a string, a text item {{type: 'input_text', text}} or a non-empty "
            "array of them.",
            f"{P}.input[0].content",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
            f"{P}.input[0].content[0] must be {{type: 'input_text' or 'output_text', text}}.",
            f"{P}.input[0].content[0]",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "Caption: {{sample.output_text}}"},
                            {"type": "input_image", "image_url": "https://example.com/dog.png"},
                        ],
                    }
                ]
            },
            f"Only text content is supported in grader input; {P}.input[0].content[1] is input_image.",
            f"{P}.input[0].content[1].type",
        ),
        (
            {"input": [{"role": "user", "content": {"type": "input_text", "text": "x", "detail": "high"}}]},
            "Unrecognized grader argument: detail",
            f"{P}.input[0].content.detail",
        ),
        (
            {"input": [{"role": "user", "content": {"type": "output_text", "text": "{{sample}}"}}]},
            f"Invalid template variable {{{{sample}}}} in {P}.input[0].content.text: use {{{{item.<path>}}}} "
            "or {{sample.<path>}}.",
            f"{P}.input[0].content.text",
        ),
        ({"range": [1]}, f"{P}.range must be [min, max]: two numbers, min below max.", f"{P}.range"),
        ({"range": [1, 1]}, f"{P}.range must be [min, max]: two numbers, min below max.", f"{P}.range"),
        ({"range": [0, "10"]}, f"{P}.range must be [min, max]: two numbers, min below max.", f"{P}.range"),
        ({"sampling_params": 0.2}, f"{P}.sampling_params must be an object.", f"{P}.sampling_params"),
        (
            {"sampling_params": {"top_k": 5}},
            "Unrecognized grader argument: top_k",
            f"{P}.sampling_params.top_k",
        ),
        (
            {"sampling_params": {"reasoning_effort": "medium"}},
            f"{P}.sampling_params.reasoning_effort is not supported: the models here are not reasoning models.",
            f"{P}.sampling_params.reasoning_effort",
        ),
        (
            {"sampling_params": {"seed": 4.5}},
            f"{P}.sampling_params.seed must be a 64-bit integer.",
            f"{P}.sampling_params.seed",
        ),
        (
            {"sampling_params": {"seed": 2**63}},
            f"{P}.sampling_params.seed must be a 64-bit integer.",
            f"{P}.sampling_params.seed",
        ),
        (
            {"sampling_params": {"temperature": 2.5}},
            f"{P}.sampling_params.temperature must be a number between 0 and 2.",
            f"{P}.sampling_params.temperature",
        ),
        (
            {"sampling_params": {"top_p": -0.1}},
            f"{P}.sampling_params.top_p must be a number between 0 and 1.",
            f"{P}.sampling_params.top_p",
        ),
        (
            {"sampling_params": {"max_completions_tokens": 0}},
            f"{P}.sampling_params.max_completions_tokens must be a positive integer.",
            f"{P}.sampling_params.max_completions_tokens",
        ),
        ({"pass_threshold": "high"}, f"{P}.pass_threshold must be a number.", f"{P}.pass_threshold"),
    ],
)
def test_score_model_refusals(fields: dict[str, Any], message: str, param: str) -> None:
    error = refused(score_model(**fields))
    assert (error.message, error.param) == (message, param)


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"labels": None}, f"Missing required parameter: '{P}.labels'.", f"{P}.labels"),
        (
            {"labels": []},
            f"{P}.labels must be a non-empty array of distinct, non-empty strings.",
            f"{P}.labels",
        ),
        (
            {"labels": ["yes", "yes"]},
            f"{P}.labels must be a non-empty array of distinct, non-empty strings.",
            f"{P}.labels",
        ),
        (
            {"passing_labels": None},
            f"Missing required parameter: '{P}.passing_labels'.",
            f"{P}.passing_labels",
        ),
        (
            {"passing_labels": []},
            f"{P}.passing_labels must be a non-empty array of strings.",
            f"{P}.passing_labels",
        ),
        (
            {"passing_labels": ["positive", "great"]},
            f"{P}.passing_labels[1] is 'great', which is not one of {P}.labels.",
            f"{P}.passing_labels[1]",
        ),
        ({"pass_threshold": 0.5}, "Unrecognized grader argument: pass_threshold", f"{P}.pass_threshold"),
    ],
)
def test_label_model_refusals(fields: dict[str, Any], message: str, param: str) -> None:
    error = refused(label_model(**fields))
    assert (error.message, error.param) == (message, param)


G = f"{P}.calculate_output"
ALLOWED = (
    "numbers, the graders' names, + - * / ** ^, parentheses and min, max, abs, floor, ceil, exp, sqrt, log"
)


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        (
            "__import__('os')",
            f"{G} calls __import__(), which is not allowed: the functions are min, max, abs, floor, ceil, "
            "exp, sqrt and log.",
        ),
        (
            "__import__('os').system('id')",
            f"{G} may only use {ALLOWED}; '__import__('os').system('id')' is not allowed.",
        ),
        ("a.__class__", f"{G} may only use {ALLOWED}; 'a.__class__' is not allowed."),
        ("(lambda: 1)()", f"{G} may only use {ALLOWED}; '(lambda: 1)()' is not allowed."),
        ("lambda: a", f"{G} may only use {ALLOWED}; 'lambda: a' is not allowed."),
        ("[a, b][0]", f"{G} may only use {ALLOWED}; '[a, b][0]' is not allowed."),
        ("a if b else 0", f"{G} may only use {ALLOWED}; 'a if b else 0' is not allowed."),
        ("a > b", f"{G} may only use {ALLOWED}; 'a > b' is not allowed."),
        ("a and b", f"{G} may only use {ALLOWED}; 'a and b' is not allowed."),
        ("a % 2", f"{G} may only use {ALLOWED}; 'a % 2' is not allowed."),
        ("not a", f"{G} may only use {ALLOWED}; 'not a' is not allowed."),
        ("'a' * 3", f"{G} may only use {ALLOWED}; ''a'' is not allowed."),
        ("True + a", f"{G} may only use {ALLOWED}; 'True' is not allowed."),
        ("1j * a", f"{G} may only use {ALLOWED}; '1j' is not allowed."),
        ("max(a, key=b)", f"{G} may only use {ALLOWED}; 'max(a, key=b)' is not allowed."),
        ("math.sqrt(a)", f"{G} may only use {ALLOWED}; 'math.sqrt(a)' is not allowed."),
        (
            "open('x')",
            f"{G} calls open(), which is not allowed: the functions are min, max, abs, floor, ceil, "
            "exp, sqrt and log.",
        ),
        ("c + a", f"{G} uses 'c', which is not one of the graders: a, b."),
        ("__builtins__", f"{G} uses '__builtins__', which is not one of the graders: a, b."),
        ("sqrt(a, b)", f"{G}: sqrt() takes 1 argument."),
        ("max()", f"{G}: max() takes one or more arguments."),
        ("max(*a)", f"{G}: max() takes one or more arguments."),
        ("(a + b", f"{G} is not a valid formula: '(' was never closed."),
        ("a +", f"{G} is not a valid formula: invalid syntax."),
        ("a = 1", f"{G} is not a valid formula: invalid syntax."),
        ("", f"{G} must be a non-empty string."),
        ("a" + " + a" * 300, f"{G} must be at most 1000 characters."),
        ("-" * 101 + "a", f"{G} is nested too deeply: at most 100 operations inside one another."),
        ("(" * 201 + "a" + ")" * 201, f"{G} is not a valid formula: too many nested parentheses."),
    ],
)
def test_formulas_that_are_not_arithmetic_are_refused(formula: str, message: str) -> None:
    spec = multi({"a": string_check(), "b": string_check(name="other")}, formula)
    error = refused(spec, in_eval=False)
    assert (error.message, error.param) == (message, G)


@pytest.mark.parametrize(
    ("graders", "message", "param"),
    [
        (None, f"Missing required parameter: '{P}.graders'.", f"{P}.graders"),
        ({}, f"{P}.graders must be a non-empty object mapping names to graders.", f"{P}.graders"),
        (
            [string_check()],
            f"{P}.graders must be a non-empty object mapping names to graders.",
            f"{P}.graders",
        ),
        *[
            (
                {name: string_check()},
                f"{P}.graders: {name!r} cannot be named in calculate_output; use letters, digits and "
                "underscores, not starting with a digit, and not a function's name.",
                f"{P}.graders.{name}",
            )
            for name in ("2nd", "my grader", "lambda", "max", "café", "ﬁ")
        ],
        (
            {"a": string_check(operation="is")},
            f"{P}.graders.a.operation must be one of eq, ne, like, ilike; got 'is'.",
            f"{P}.graders.a.operation",
        ),
        ({"a": "string_check"}, f"{P}.graders.a must be a grader object.", f"{P}.graders.a"),
    ],
)
def test_multi_refusals(graders: Any, message: str, param: str) -> None:
    error = refused(multi(graders, "a"), in_eval=False)
    assert (error.message, error.param) == (message, param)


def test_a_formula_as_deep_as_allowed_is_computed() -> None:
    assert run(multi({"a": string_check()}, "-" * 98 + "(a + 1)")).score == 1.0


def test_multi_needs_a_formula() -> None:
    error = refused({"type": "multi", "name": "m", "graders": {"a": string_check()}}, in_eval=False)
    assert (error.message, error.param) == (f"Missing required parameter: '{G}'.", G)


def test_label_model_and_cosine_fit_where_openais_spec_allows_them() -> None:
    inside = validate_grader(multi({"tone": label_model()}, "tone"), param="grader", in_eval=False)
    assert inside["graders"]["tone"]["labels"] == ["positive", "neutral", "negative"]
    assert validate_grader(similarity("cosine"), param=P, in_eval=True)["evaluation_metric"] == "cosine"
    # GraderTextSimilarity's enum has cosine too (the guide calls it evals-only; the run endpoint embeds).
    fine_tuning = similarity("cosine", pass_threshold=None)
    assert validate_grader(fine_tuning, param="grader", in_eval=False)["evaluation_metric"] == "cosine"
    # A fine-tuning text_similarity needs no threshold (GraderTextSimilarity has none).
    assert "pass_threshold" not in validate_grader(
        similarity("bleu", pass_threshold=None), param="grader", in_eval=False
    )


# --- Templates --------------------------------------------------------------------------------------
def test_render_fills_nested_paths_and_indexes() -> None:
    item = {"a": {"b": [{"c": "deep"}, 2.5]}, "choices": ["x", "y"], "ok": True, "none": None}
    sample = {"output_text": "hi", "output_json": {"k": "é", "n": [1, 2]}}
    text = (
        "{{item.a.b.0.c}}|{{ item.a.b[1] }}|{{item.choices.1}}|{{item.choices[0]}}|{{ sample.output_text }}|"
        "{{sample.output_json}}|{{item.ok}}|{{item.none}}|{{item.a.b}}"
    )
    assert render(text, item, sample) == (
        'deep|2.5|y|x|hi|{"k": "é", "n": [1, 2]}|true|null|[{"c": "deep"}, 2.5]'
    )
    assert render("no templates {here}", item, None) == "no templates {here}"


def test_message_text_and_check_template_for_other_templates() -> None:
    content = [{"type": "input_text", "text": "Q: {{item.q}} "}, {"type": "output_text", "text": "A:"}]
    assert message_text(content, "data_source.input_messages.template[0].content") == "Q: {{item.q}} A:"
    assert message_text({"type": "input_text", "text": "hi"}, "w") == message_text("hi", "w") == "hi"
    with pytest.raises(ActionError) as caught:
        message_text(None, "w.content")
    assert (caught.value.message, caught.value.param) == (
        "Missing required parameter: 'w.content'.",
        "w.content",
    )
    with pytest.raises(ActionError) as caught:
        message_text([{"type": "input_audio", "input_audio": {}}], "w.content")
    assert (
        caught.value.message == "Only text content is supported in grader input; w.content[0] is input_audio."
    )
    check_template("{{item.q}} and {{ item.a.0 }}", "w", namespaces=("item",))
    with pytest.raises(ActionError) as caught:
        check_template("{{item.q}} {{sample.output_text}}", "w", namespaces=("item",))
    assert (caught.value.message, caught.value.param) == (
        "Invalid template variable {{sample.output_text}} in w: use {{item.<path>}}.",
        "w",
    )


def test_rendered_values_are_not_rendered_again() -> None:
    assert render("{{item.q}}", {"q": "{{item.secret}}", "secret": "s"}, None) == "{{item.secret}}"


@pytest.mark.parametrize(
    ("template", "sample", "message"),
    [
        ("{{item.missing}}", SAMPLE, "Template variable 'item.missing' was not found in the item."),
        (
            "{{ item.answer.tags.2 }}",
            SAMPLE,
            "Template variable 'item.answer.tags.2' was not found in the item.",
        ),
        ("{{item.label.x}}", SAMPLE, "Template variable 'item.label.x' was not found in the item."),
        ("{{sample.choices}}", SAMPLE, "Template variable 'sample.choices' was not found in the sample."),
        (
            "{{sample.output_text}}",
            None,
            "Template variable 'sample.output_text' cannot be filled: there is no model sample.",
        ),
        ("{{label}}", SAMPLE, "Template variable 'label' must be item.<path> or sample.<path>."),
    ],
)
def test_render_names_the_variable_it_cannot_fill(
    template: str, sample: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ActionError) as caught:
        render(template, ITEM, sample)
    assert caught.value.message == message


# --- string_check ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("operation", "text", "reference", "score"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris", "paris", 0.0),
        ("ne", "Paris", "paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is Paris.", "paris", 0.0),
        ("ilike", "The capital is PARIS.", "paris", 1.0),
        ("ilike", "STRASSE", "straße", 1.0),
        ("ilike", "The capital is Lyon.", "paris", 0.0),
    ],
)
def test_string_check(operation: str, text: str, reference: str, score: float) -> None:
    spec = string_check(input="{{item.text}}", reference="{{item.reference}}", operation=operation)
    checked = validate_grader(spec, param=P, in_eval=True)
    result = grade(checked, {"text": text, "reference": reference}, None)
    assert (result.score, result.passed, result.error, result.sample) == (score, score == 1.0, None, None)


def test_a_missing_variable_is_an_errored_item_not_an_exception() -> None:
    checked = validate_grader(string_check(reference="{{item.nope}}"), param=P, in_eval=True)
    result = grade(checked, ITEM, SAMPLE)
    assert (result.score, result.passed) == (0.0, False)
    assert result.error == "Template variable 'item.nope' was not found in the item."
    assert result.result() == {
        "name": "check",
        "type": "string_check",
        "score": 0.0,
        "passed": False,
        "sample": None,
        "error": "Template variable 'item.nope' was not found in the item.",
    }


def test_result_is_openais_output_item_result() -> None:
    result = run(string_check(reference="{{sample.output_text}}"))
    assert result.result() == {
        "name": "check",
        "type": "string_check",
        "score": 1.0,
        "passed": True,
        "sample": None,
    }
    assert_matches(result.result(), "EvalRunOutputItemResult")


# --- text_similarity --------------------------------------------------------------------------------
def similarity_of(metric: str, text: str, reference: str, **kwargs: Any) -> Grade:
    spec = similarity(metric, input="{{item.text}}", reference="{{item.reference}}")
    return grade(
        validate_grader(spec, param=P, in_eval=True), {"text": text, "reference": reference}, None, **kwargs
    )


HYPOTHESIS = "the cat sat on the mat"
REFERENCE = "the cat is on the mat"


@pytest.mark.parametrize("metric", [m for m in METRICS if m not in ("cosine", "meteor")])
def test_identical_texts_score_one(metric: str) -> None:
    text = "one two three four five six seven"
    assert similarity_of(metric, text, text).score == 1.0


@pytest.mark.parametrize("metric", [m for m in METRICS if m != "cosine"])
def test_disjoint_texts_score_zero(metric: str) -> None:
    # No word in common; for fuzzy_match, no character either.
    text, reference = ("abc", "xyz") if metric == "fuzzy_match" else ("alpha beta gamma", "zulu yankee xray")
    result = similarity_of(metric, text, reference)
    assert (result.score, result.passed) == (0.0, False)


def test_fuzzy_match_is_rapidfuzz_ratio() -> None:
    # Indel distance kitten -> sitting is 5 over 13 characters.
    assert similarity_of("fuzzy_match", "kitten", "sitting").score == pytest.approx(8 / 13)
    assert similarity_of("fuzzy_match", "kitten", "sitting").score == fuzz.ratio("kitten", "sitting") / 100
    # Order-sensitive, not a token-set match: "b a" and "a b" share one character in order of three.
    assert similarity_of("fuzzy_match", "b a", "a b").score == pytest.approx(1 / 3)


def test_bleu_is_sacrebleus_sentence_bleu() -> None:
    expected = sentence_bleu(HYPOTHESIS, [REFERENCE]).score / 100
    assert 0.3 < expected < 0.4
    assert similarity_of("bleu", HYPOTHESIS, REFERENCE).score == expected


def test_gleu_is_nltks_sentence_gleu() -> None:
    # 9 of the 18 1- to 4-grams on each side match.
    assert similarity_of("gleu", HYPOTHESIS, REFERENCE).score == 0.5
    assert sentence_gleu([REFERENCE.split()], HYPOTHESIS.split()) == 0.5
    # Punctuation is split off (sacrebleu's 13a tokens): "mat." still matches "mat".
    assert similarity_of("gleu", HYPOTHESIS + ".", REFERENCE + ".").score == sentence_gleu(
        [REFERENCE.split() + ["."]], HYPOTHESIS.split() + ["."]
    )


class NoSynonyms:
    def synsets(self, word: str) -> list[Any]:
        return []


def test_meteor_matches_exact_words_and_stems_without_wordnet() -> None:
    # 5 of 6 words match in 2 chunks: F = 5/6, penalty 0.5 * (2/5)^3.
    assert similarity_of("meteor", HYPOTHESIS, REFERENCE).score == pytest.approx(5 / 6 * (1 - 0.5 * 0.4**3))
    # Stems match ("cats" ~ "cat", "sleeps" ~ "sleep"): as good as the identical sentence.
    identical = similarity_of("meteor", "the cat sleeps", "the cat sleeps").score
    assert identical == pytest.approx(1 - 0.5 * (1 / 3) ** 3)
    assert similarity_of("meteor", "the cats sleep", "the cat sleeps").score == identical
    # Synonyms need WordNet, which is not here: "automobile" does not match "car".
    expected = meteor_score(
        [["the", "car", "is", "fast"]], ["the", "automobile", "is", "fast"], wordnet=NoSynonyms()
    )
    assert similarity_of("meteor", "the automobile is fast", "the car is fast").score == expected < 0.8


@pytest.mark.parametrize(
    ("metric", "text", "reference", "expected"),
    [
        ("rouge_1", HYPOTHESIS, REFERENCE, 5 / 6),
        ("rouge_2", HYPOTHESIS, REFERENCE, 3 / 5),
        ("rouge_3", HYPOTHESIS, REFERENCE, 1 / 4),
        ("rouge_4", "one two three four five six seven", "one two three four five six eight", 3 / 4),
        ("rouge_5", "one two three four five six seven", "one two three four five six eight", 2 / 3),
        ("rouge_l", HYPOTHESIS, REFERENCE, 5 / 6),
        ("rouge_1", "the cats sat", "the cat sat", 1.0),  # stemmed
    ],
)
def test_rouge_is_rouge_scores_fmeasure(metric: str, text: str, reference: str, expected: float) -> None:
    name = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
    library = RougeScorer([name], use_stemmer=True).score(reference, text)[name].fmeasure
    assert similarity_of(metric, text, reference).score == pytest.approx(expected) == library


def fixed_embed(*vectors: list[float]) -> Any:
    def embed(texts: list[str]) -> list[list[float]]:
        assert texts == ["the answer", "the reference"]
        return list(vectors)

    return embed


def test_cosine_uses_the_embed_callable() -> None:
    result = similarity_of("cosine", "the answer", "the reference", embed=fixed_embed([1.0, 0.0], [1.0, 1.0]))
    assert (result.score, result.passed, result.error) == (pytest.approx(1 / math.sqrt(2)), True, None)
    same = similarity_of("cosine", "the answer", "the reference", embed=fixed_embed([0.3, 0.4], [0.6, 0.8]))
    assert same.score == pytest.approx(1.0)
    # Opposite directions: clamped into [0, 1].
    opposite = similarity_of(
        "cosine", "the answer", "the reference", embed=fixed_embed([1.0, 0.0], [-1.0, 0.0])
    )
    assert (opposite.score, opposite.passed) == (0.0, False)


def failing_embed(texts: list[str]) -> list[list[float]]:
    raise ActionError("embedding service down", status=503)


@pytest.mark.parametrize(
    ("embed", "message"),
    [
        (None, "The cosine metric needs an embedding model, and none was given to this run."),
        (fixed_embed([0.0, 0.0], [1.0, 1.0]), "Cosine similarity is undefined for an all-zero embedding."),
        (
            fixed_embed([1.0, 0.0], [1.0]),
            "The embedding model did not return two vectors of the same length.",
        ),
        (fixed_embed([1.0, 0.0]), "The embedding model did not return two vectors of the same length."),
        (
            fixed_embed([1.0, math.nan], [1.0, 1.0]),
            "The embedding model did not return two vectors of the same length.",
        ),
        (failing_embed, "The embedding model failed: embedding service down"),
    ],
)
def test_cosine_problems_are_errored_items(embed: Any, message: str) -> None:
    result = similarity_of("cosine", "the answer", "the reference", embed=embed)
    assert (result.score, result.passed, result.error) == (0.0, False, message)


def test_similarity_pass_rules() -> None:
    spec = similarity("fuzzy_match", input="{{item.text}}", reference="{{item.reference}}")
    item = {"text": "kitten", "reference": "sitting"}  # 8/13 = 0.615
    assert grade(validate_grader(spec | {"pass_threshold": 0.6}, param=P, in_eval=True), item, None).passed
    assert not grade(
        validate_grader(spec | {"pass_threshold": 0.7}, param=P, in_eval=True), item, None
    ).passed
    # Fine-tuning, no threshold: passes from the midpoint 0.5.
    bare = validate_grader({k: v for k, v in spec.items() if k != "pass_threshold"}, param="g", in_eval=False)
    assert grade(bare, item, None).passed
    assert not grade(bare, {"text": "kitten", "reference": "puppy"}, None).passed


# --- score_model and label_model --------------------------------------------------------------------
def test_score_model_asks_the_judge_for_openais_answer_format() -> None:
    judge = FakeJudge(answer(0.8))
    sampling_params = {"temperature": 0, "seed": 7, "max_completions_tokens": 300}
    result = run(score_model(range=[0, 1], sampling_params=sampling_params), judge=judge)
    assert (result.score, result.passed, result.error) == (0.8, True, None)
    [(model, messages, response_format, sampling)] = judge.calls
    # In the chat endpoint's names, for a judge to pass on.
    assert model == "judge-1" and sampling == {"temperature": 0, "seed": 7, "max_completion_tokens": 300}
    assert messages == [
        {"role": "system", "content": "Score the answer from 0 to 1."},
        {"role": "user", "content": "Reference: Paris\nAnswer: The capital is Paris."},
    ]
    assert response_format is not None and response_format["type"] == "json_schema"
    answer_schema = response_format["json_schema"]["schema"]
    assert response_format["json_schema"]["strict"] is True
    assert answer_schema["required"] == ["result", "steps"]
    assert answer_schema["properties"]["result"] == {"type": "number", "minimum": 0.0, "maximum": 1.0}
    assert result.usage == [JudgeReply(answer(0.8), "judge-1", 20, 7)]
    assert result.sample == {
        "input": messages,
        "output": [{"role": "assistant", "content": answer(0.8)}],
        "model": "judge-1",
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27, "cached_tokens": 0},
    }
    assert_matches(result.result(), "EvalRunOutputItemResult")


def test_score_model_content_items_are_joined_and_rendered() -> None:
    content = [
        {"type": "input_text", "text": "Label: {{item.label}}. "},
        {"type": "output_text", "text": "Answer: {{sample.output_text}}"},
    ]
    judge = FakeJudge(answer(1))
    run(score_model(input=[{"type": "message", "role": "user", "content": content}]), judge=judge)
    assert judge.calls[0][1] == [{"role": "user", "content": "Label: Paris. Answer: The capital is Paris."}]


@pytest.mark.parametrize(
    ("fields", "reply", "score", "passed"),
    [
        ({"range": [0, 10]}, answer(6), 6.0, True),  # no threshold: the midpoint 5
        ({"range": [0, 10]}, answer(4.5), 4.5, False),
        ({"range": [0, 10], "pass_threshold": 7}, answer(6), 6.0, False),
        ({"range": [0, 10]}, answer(12), 10.0, True),  # clamped into the range
        ({"range": [-1, 1]}, answer(-3), -1.0, False),
        ({}, "0.9", 0.9, True),  # a bare number, from a judge that ignored the format
    ],
)
def test_score_model_range_and_pass_rule(
    fields: dict[str, Any], reply: str, score: float, passed: bool
) -> None:
    result = run(score_model(**fields), judge=FakeJudge(reply))
    assert (result.score, result.passed, result.error) == (score, passed, None)


@pytest.mark.parametrize(
    "reply",
    ["I think 0.8", '{"steps": []}', '{"result": "high"}', '{"result": true}', '{"result": NaN}', "[0.8]"],
)
def test_an_unparsable_score_is_an_errored_item(reply: str) -> None:
    result = run(score_model(), judge=FakeJudge(reply))
    assert (result.score, result.passed) == (0.0, False)
    assert result.error == (
        f"The judge's answer could not be parsed: expected a JSON object with a numeric 'result'; got {reply!r}."
    )
    # What the judge said and what it cost are kept.
    assert result.sample is not None and result.sample["output"][0]["content"] == reply
    assert len(result.usage) == 1


def test_a_long_unparsable_answer_is_shortened() -> None:
    result = run(score_model(), judge=FakeJudge("x" * 500))
    assert result.error == (
        "The judge's answer could not be parsed: expected a JSON object with a numeric 'result'; got "
        + repr("x" * 200 + "…")
        + "."
    )


def raising_judge(*args: Any) -> JudgeReply:
    raise ActionError("judge timed out", status=504)


class Stopped(Exception):
    """What a worker raises from its judge when the run must stop (cancelled, out of budget)."""


def stopping(*args: Any) -> Any:
    raise Stopped


def test_judge_problems_are_errored_items() -> None:
    assert run(score_model()).error == "This grader needs a judge model, and none was given to this run."
    failed = run(score_model(), judge=raising_judge)
    assert (failed.error, failed.usage, failed.sample) == (
        "The judge model failed: judge timed out",
        [],
        None,
    )
    # A variable this item lacks: no judge call is made.
    judge = FakeJudge(answer(1))
    missing = run(score_model(input=[{"role": "user", "content": "{{item.nope}}"}]), judge=judge)
    assert missing.error == "Template variable 'item.nope' was not found in the item." and judge.calls == []


def test_other_exceptions_from_the_callables_are_the_callers() -> None:
    with pytest.raises(Stopped):
        run(score_model(), judge=stopping)
    with pytest.raises(Stopped):
        run(multi({"tone": label_model()}, "tone"), judge=stopping)
    with pytest.raises(Stopped):
        similarity_of("cosine", "the answer", "the reference", embed=stopping)


@pytest.mark.parametrize(
    ("reply", "score", "passed"),
    [
        (answer("positive"), 1.0, True),
        (answer("negative"), 0.0, False),
        ("neutral\n", 0.0, False),  # a bare label
        ('"positive"', 1.0, True),
    ],
)
def test_label_model(reply: str, score: float, passed: bool) -> None:
    judge = FakeJudge(reply)
    result = run(label_model(), judge=judge)
    assert (result.score, result.passed, result.error) == (score, passed, None)
    response_format = judge.calls[0][2]
    assert response_format is not None
    assert response_format["json_schema"]["schema"]["properties"]["result"] == {
        "type": "string",
        "enum": ["positive", "neutral", "negative"],
    }
    assert judge.calls[0][1] == [{"role": "user", "content": "Classify: The capital is Paris."}]


@pytest.mark.parametrize("reply", [answer("great"), "not json", '{"result": 1}', "Positive"])
def test_an_unknown_label_is_an_errored_item(reply: str) -> None:
    result = run(label_model(), judge=FakeJudge(reply))
    assert (result.score, result.passed) == (0.0, False)
    assert result.error == (
        "The judge's answer could not be parsed: expected a JSON object whose 'result' is one of the labels; "
        f"got {reply!r}."
    )


# --- multi ---------------------------------------------------------------------------------------------
def test_multi_combines_its_graders_by_formula() -> None:
    spec = multi(
        {
            "exact": string_check(reference="{{sample.output_text}}"),
            "close": similarity("fuzzy_match", input="kitten", reference="sitting", pass_threshold=None),
            "judged": score_model(range=[0, 10]),
            "tone": label_model(),
        },
        "0.5 * exact + close ^ 2 - max(judged, 1) / 10 + sqrt(tone) + floor(-0.5) + abs(-log(exp(1)))",
    )
    judge = FakeJudge(answer(4), answer("positive"))
    result = grade(validate_grader(spec, param="grader", in_eval=False), ITEM, SAMPLE, judge=judge)
    assert result.error is None
    assert result.sub_scores == {"exact": 1.0, "close": pytest.approx(8 / 13), "judged": 4.0, "tone": 1.0}
    assert result.score == pytest.approx(0.5 + (8 / 13) ** 2 - 0.4 + 1 - 1 + 1)
    assert result.passed  # no threshold: positive passes
    assert [reply.model for reply in result.usage] == ["judge-1", "judge-1"]
    assert result.sample is not None and set(result.sample) == {"judged", "tone"}


def test_multi_pass_rule_and_power() -> None:
    spec = multi({"a": string_check(reference="{{sample.output_text}}")}, "(a + 1) ** 2 - 4")
    assert run(spec).score == 0.0 and not run(spec).passed  # no threshold: 0 is not positive
    assert run(spec | {"pass_threshold": 0}).passed
    assert run(multi({"a": string_check()}, "-a")).score == 0.0


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("1 / a", "calculate_output could not be computed: float division by zero."),
        ("log(a)", "calculate_output could not be computed: math domain error."),
        ("(a - 8) ^ (1 / 3)", "calculate_output could not be computed: math domain error."),
        ("9 ^ 9 ^ 9 + a", "calculate_output could not be computed: math range error."),
        ("exp(1000) + a", "calculate_output could not be computed: math range error."),
        ("1e308 * 10 + a", "calculate_output gave inf, not a finite number."),
    ],
)
def test_formula_failures_are_errored_items(formula: str, message: str) -> None:
    result = run(multi({"a": string_check()}, formula))  # a = 0
    assert (result.score, result.passed, result.error, result.sub_scores) == (0.0, False, message, {"a": 0.0})


def test_a_failing_sub_grader_stops_the_multi() -> None:
    spec = multi(
        {"judged": score_model(), "later": label_model(), "first": string_check()}, "judged + later + first"
    )
    judge = FakeJudge("garbage")
    result = run(spec, judge=judge)
    assert result.error == (
        "The grader 'judged' failed: The judge's answer could not be parsed: expected a JSON object with a "
        "numeric 'result'; got 'garbage'."
    )
    assert (result.score, result.passed, result.sub_scores) == (0.0, False, {"judged": 0.0})
    assert len(judge.calls) == 1 and len(result.usage) == 1


def test_referenced_models() -> None:
    assert referenced_models(validate_grader(string_check(), param=P, in_eval=True)) == []
    assert referenced_models(validate_grader(score_model(), param=P, in_eval=True)) == ["judge-1"]
    spec = multi(
        {"a": score_model(), "b": label_model(model="judge-2"), "c": string_check(), "d": label_model()},
        "a + b + c + d",
    )
    assert referenced_models(validate_grader(spec, param="grader", in_eval=False)) == ["judge-1", "judge-2"]


# --- Bounds: what a crafted item or judge could make unbounded ---------------------------------------
def test_a_template_that_would_fill_in_past_the_limit_is_an_item_error() -> None:
    item = {"x": "y" * 1000}
    spec = validate_grader(
        {
            "type": "string_check",
            "name": "big",
            "input": "{{item.x}}" * 1001,
            "reference": "y",
            "operation": "eq",
        },
        param=P,
        in_eval=True,
    )
    graded = grade(spec, item, SAMPLE)
    assert graded.error == "The filled-in template is over 1,000,000 characters."
    assert graded.passed is False and graded.score == 0.0


def test_text_similarity_reads_at_most_its_limit() -> None:
    spec = validate_grader(
        {
            "type": "text_similarity",
            "name": "long",
            "input": "{{item.text}}",
            "reference": "short",
            "evaluation_metric": "rouge_l",
            "pass_threshold": 0.5,
        },
        param=P,
        in_eval=True,
    )
    graded = grade(spec, {"text": "word " * 5000}, SAMPLE)
    assert graded.error == "text_similarity compares texts of at most 20,000 characters; this one has 25,000."


def test_a_judges_number_past_a_floats_range_is_unparsable_not_a_crash() -> None:
    huge = "1" + "0" * 400
    graded = run(score_model(), judge=FakeJudge('{"result": ' + huge + ', "steps": []}'))
    assert graded.error is not None and graded.error.startswith("The judge's answer could not be parsed")
