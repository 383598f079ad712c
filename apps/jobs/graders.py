"""The graders of OpenAI's Evals API and of fine-tuning (`/v1/fine_tuning/alpha/graders/*`).

Plain Python, no Django and no torch: the web validates graders with it, the eval worker grades
items with it. Shapes follow OpenAI's OpenAPI spec (GraderStringCheck, GraderTextSimilarity,
GraderScoreModel, GraderLabelModel, GraderMulti and their Eval* variants). Judge models and
embeddings are callables the caller passes in, so this module never knows how a model is reached.

Two phases, two error styles: `validate_grader` raises ActionError for a bad grader (the request is
refused); `grade` never raises for a problem of one item (a missing template variable, an answer
the judge garbled): it returns a Grade with `error` set, and the run goes on.
"""

from __future__ import annotations

import ast
import functools
import json
import keyword
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from apps.core.errors import ActionError

GRADER_TYPES: tuple[str, ...] = ("string_check", "text_similarity", "score_model", "label_model", "multi")
METRICS: tuple[str, ...] = (
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
OPERATIONS = ("eq", "ne", "like", "ilike")
ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
PYTHON_REFUSED = (
    "The python grader is not supported: running customers' code is out of scope. "
    "Use string_check, text_similarity, score_model, label_model or multi."
)
MAX_FORMULA = 1000
# The most a template may fill in to, and the longest text a text_similarity metric reads.
MAX_RENDERED = 1_000_000
MAX_SIMILARITY_CHARS = 20_000
MAX_DEPTH = 100

# The keys each grader type knows (the spec's properties; pass_threshold from the Eval* variants,
# and on multi for its pass rule). Anything else is refused rather than silently dropped.
_KEYS: dict[str, tuple[str, ...]] = {
    "string_check": ("type", "name", "input", "reference", "operation"),
    "text_similarity": ("type", "name", "input", "reference", "evaluation_metric", "pass_threshold"),
    "score_model": ("type", "name", "model", "input", "range", "sampling_params", "pass_threshold"),
    "label_model": ("type", "name", "model", "input", "labels", "passing_labels"),
    "multi": ("type", "name", "graders", "calculate_output", "pass_threshold"),
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SAMPLING = ("seed", "top_p", "temperature", "max_completions_tokens", "reasoning_effort")


# --- Judges and results -----------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeReply:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int


# judge(model, messages, response_format, sampling_params): one chat completion. messages are
# [{"role", "content"}] with the content already rendered; response_format is an OpenAI json_schema
# response_format or None; sampling_params use the chat endpoint's names (the grader's
# `max_completions_tokens` arrives as `max_completion_tokens`), so a judge can pass them on as they are.
Judge = Callable[[str, list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]], JudgeReply]
# embed(texts) -> one vector per text (the cosine metric).
Embed = Callable[[list[str]], list[list[float]]]


@dataclass
class Grade:
    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None
    error: str | None = None
    sub_scores: dict[str, float] = field(default_factory=dict)
    usage: list[JudgeReply] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        """The EvalRunOutputItemResult object."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "score": self.score,
            "passed": self.passed,
            "sample": self.sample,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


# --- Templates --------------------------------------------------------------------------------------
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
# A namespace, then at least one `.key` or `[index]` (OpenAI: "a namespace and a variable").
_VARIABLE = re.compile(r"(item|sample)((?:\.[^.\[\]\s{}]+|\[\d+\])+)")
_SEGMENT = re.compile(r"\.([^.\[\]\s{}]+)|\[(\d+)\]")


def check_template(text: str, where: str, *, namespaces: tuple[str, ...] = ("item", "sample")) -> None:
    """Every {{...}} in `text` is a variable of one of `namespaces` (an eval's data-source template
    has no sample yet, so it passes ("item",))."""
    for match in _TEMPLATE.finditer(text):
        inner = match.group(1).strip()
        variable = _VARIABLE.fullmatch(inner)
        if variable is None or variable.group(1) not in namespaces:
            allowed = " or ".join(f"{{{{{namespace}.<path>}}}}" for namespace in namespaces)
            raise ActionError(
                f"Invalid template variable {{{{{inner}}}}} in {where}: use {allowed}.", param=where
            )


def _lookup(variable: str, item: dict[str, Any], sample: dict[str, Any] | None) -> Any:
    match = _VARIABLE.fullmatch(variable)
    if match is None:
        raise ActionError(f"Template variable '{variable}' must be item.<path> or sample.<path>.")
    namespace, path = match.groups()
    if namespace == "sample" and sample is None:
        raise ActionError(f"Template variable '{variable}' cannot be filled: there is no model sample.")
    value: Any = item if namespace == "item" else sample
    for key, index in _SEGMENT.findall(path):
        key = key or index
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise ActionError(f"Template variable '{variable}' was not found in the {namespace}.")
    return value


def render(template: str, item: dict[str, Any], sample: dict[str, Any] | None) -> str:
    """The template with each {{item.<path>}} / {{sample.<path>}} filled. One pass: a value that
    itself contains braces is inserted as it is, never rendered again (no injection via data)."""

    size = len(template)

    def fill(match: re.Match[str]) -> str:
        nonlocal size
        value = _lookup(match.group(1).strip(), item, sample)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        # A short template naming a long value many times would grow without bound.
        size += len(text)
        if size > MAX_RENDERED:
            raise ActionError(f"The filled-in template is over {MAX_RENDERED:,} characters.")
        return text

    return _TEMPLATE.sub(fill, template)


# --- Validation -------------------------------------------------------------------------------------
def _missing(where: str) -> ActionError:
    return ActionError(f"Missing required parameter: '{where}'.", param=where)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)  # an int past a float's range overflows here
    except OverflowError:
        return False


def _string(spec: dict[str, Any], key: str, param: str, *, templated: bool) -> str:
    where = f"{param}.{key}"
    value = spec.get(key)
    if value is None:
        raise _missing(where)
    if not isinstance(value, str):
        raise ActionError(f"{where} must be a string.", param=where)
    if templated:
        check_template(value, where)
    elif not value.strip():
        raise ActionError(f"{where} must be a non-empty string.", param=where)
    return value


def _threshold(spec: dict[str, Any], param: str, *, required: bool) -> dict[str, float]:
    where = f"{param}.pass_threshold"
    value = spec.get("pass_threshold")
    if value is None:
        if required:
            raise _missing(where)
        return {}
    if not _is_number(value):
        raise ActionError(f"{where} must be a number.", param=where)
    return {"pass_threshold": float(value)}


def _content(content: Any, where: str) -> Any:
    """A message's content as the spec allows it (a string, one content item, or an array of
    them), text only: the models here read text, and an image silently dropped would skew a grade."""
    if isinstance(content, str):
        check_template(content, where)
        return content
    if isinstance(content, list) and content:
        return [_content_item(part, f"{where}[{index}]") for index, part in enumerate(content)]
    if isinstance(content, dict):
        return _content_item(content, where)
    raise ActionError(
        f"{where} must be a string, a text item {{type: 'input_text', text}} or a non-empty array of them.",
        param=where,
    )


def _content_item(part: Any, where: str) -> dict[str, str]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_image", "input_audio"):
        raise ActionError(
            f"Only text content is supported in grader input; {where} is {kind}.", param=f"{where}.type"
        )
    if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
        raise ActionError(f"{where} must be {{type: 'input_text' or 'output_text', text}}.", param=where)
    for key in part:
        if key not in ("type", "text"):
            raise ActionError(f"Unrecognized grader argument: {key}", param=f"{where}.{key}")
    check_template(part["text"], f"{where}.text")
    return {"type": kind, "text": part["text"]}


def _joined(content: Any) -> str:
    """A validated content's text: its parts joined as the chat endpoint joins them."""
    parts = [content] if isinstance(content, str | dict) else content
    return "".join(part if isinstance(part, str) else part["text"] for part in parts)


def message_text(content: Any, where: str) -> str:
    """A message's content (a string, a text item or an array of them) checked, as one text."""
    if content is None:
        raise _missing(where)
    return _joined(_content(content, where))


def _messages(spec: dict[str, Any], param: str) -> list[dict[str, Any]]:
    where = f"{param}.input"
    value = spec.get("input")
    if value is None:
        raise _missing(where)
    if not isinstance(value, list) or not value:
        raise ActionError(f"{where} must be a non-empty array of messages.", param=where)
    messages = []
    for index, message in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(message, dict):
            raise ActionError(f"{at} must be an object with a role and content.", param=at)
        for key in message:
            if key not in ("role", "content", "type"):
                raise ActionError(f"Unrecognized grader argument: {key}", param=f"{at}.{key}")
        if message.get("type", "message") != "message":
            raise ActionError(f"{at}.type must be 'message'.", param=f"{at}.type")
        role = message.get("role")
        if role not in ROLES:
            raise ActionError(
                f"{at}.role must be one of {', '.join(ROLES)}; got {role!r}.", param=f"{at}.role"
            )
        if message.get("content") is None:
            raise _missing(f"{at}.content")
        content = _content(message["content"], f"{at}.content")
        messages.append({"type": "message", "role": role, "content": content})
    return messages


def _model(spec: dict[str, Any], param: str) -> str:
    return _string(spec, "model", param, templated=False)


def _sampling(value: Any, param: str) -> dict[str, Any]:
    """The judge's sampling parameters, nulls dropped; bounds as the chat endpoint has them."""
    where = f"{param}.sampling_params"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ActionError(f"{where} must be an object.", param=where)
    kept: dict[str, Any] = {}
    for key, setting in value.items():
        at = f"{where}.{key}"
        if key not in _SAMPLING:
            raise ActionError(f"Unrecognized grader argument: {key}", param=at)
        if setting is None:
            continue
        if key == "reasoning_effort":
            raise ActionError(f"{at} is not supported: the models here are not reasoning models.", param=at)
        if key == "seed" and (
            isinstance(setting, bool) or not isinstance(setting, int) or not -(2**63) <= setting < 2**63
        ):
            raise ActionError(f"{at} must be a 64-bit integer.", param=at)
        if key == "max_completions_tokens" and (
            isinstance(setting, bool) or not isinstance(setting, int) or setting < 1
        ):
            raise ActionError(f"{at} must be a positive integer.", param=at)
        high = {"temperature": 2, "top_p": 1}.get(key)
        if high is not None and (not _is_number(setting) or not 0 <= setting <= high):
            raise ActionError(f"{at} must be a number between 0 and {high}.", param=at)
        kept[key] = setting
    return kept


def _range(value: Any, param: str) -> list[float]:
    where = f"{param}.range"
    if value is None:
        return [0.0, 1.0]  # the spec's default
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(_is_number(bound) for bound in value)
        or not value[0] < value[1]
    ):
        raise ActionError(f"{where} must be [min, max]: two numbers, min below max.", param=where)
    return [float(value[0]), float(value[1])]


def _labels(spec: dict[str, Any], param: str) -> tuple[list[str], list[str]]:
    where = f"{param}.labels"
    labels = spec.get("labels")
    if labels is None:
        raise _missing(where)
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ActionError(f"{where} must be a non-empty array of distinct, non-empty strings.", param=where)
    where = f"{param}.passing_labels"
    passing = spec.get("passing_labels")
    if passing is None:
        raise _missing(where)
    if not isinstance(passing, list) or not passing or not all(isinstance(label, str) for label in passing):
        raise ActionError(f"{where} must be a non-empty array of strings.", param=where)
    for index, label in enumerate(passing):
        if label not in labels:
            raise ActionError(
                f"{where}[{index}] is {label!r}, which is not one of {param}.labels.",
                param=f"{where}[{index}]",
            )
    return labels, passing


def validate_grader(spec: Any, *, param: str, in_eval: bool) -> dict[str, Any]:
    """One grader checked and normalized (known keys only, defaults filled). `in_eval`: an eval's
    testing criterion (label_model allowed; text_similarity needs pass_threshold); otherwise a
    fine-tuning grader (multi allowed; label_model only inside multi, as OpenAI's spec has it)."""
    return _validate(spec, param, in_eval=in_eval, in_multi=False)


def _validate(spec: Any, param: str, *, in_eval: bool, in_multi: bool) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ActionError(f"{param} must be a grader object.", param=param)
    kind = spec.get("type")
    if kind is None:
        raise _missing(f"{param}.type")
    if kind == "python":
        raise ActionError(PYTHON_REFUSED, param=f"{param}.type")
    if kind not in GRADER_TYPES:
        raise ActionError(
            f"{param}.type must be one of string_check, text_similarity, score_model, label_model or "
            f"multi; got {kind!r}.",
            param=f"{param}.type",
        )
    if kind == "multi" and in_eval:
        raise ActionError(
            "The multi grader is only for fine-tuning; an eval's testing criteria are string_check, "
            "text_similarity, score_model or label_model graders.",
            param=f"{param}.type",
        )
    if kind == "multi" and in_multi:
        raise ActionError("A multi grader cannot contain another multi grader.", param=f"{param}.type")
    if kind == "label_model" and not in_eval and not in_multi:
        raise ActionError(
            "In fine-tuning, a label_model grader can only be used inside a multi grader.",
            param=f"{param}.type",
        )
    for key in spec:
        if key not in _KEYS[kind]:
            raise ActionError(f"Unrecognized grader argument: {key}", param=f"{param}.{key}")
    out: dict[str, Any] = {"type": kind, "name": _string(spec, "name", param, templated=False)}

    if kind in ("string_check", "text_similarity"):
        out["input"] = _string(spec, "input", param, templated=True)
        out["reference"] = _string(spec, "reference", param, templated=True)
    if kind == "string_check":
        operation = spec.get("operation")
        if operation is None:
            raise _missing(f"{param}.operation")
        if operation not in OPERATIONS:
            raise ActionError(
                f"{param}.operation must be one of {', '.join(OPERATIONS)}; got {operation!r}.",
                param=f"{param}.operation",
            )
        out["operation"] = operation
    elif kind == "text_similarity":
        metric = spec.get("evaluation_metric")
        if metric is None:
            raise _missing(f"{param}.evaluation_metric")
        if metric not in METRICS:
            raise ActionError(
                f"{param}.evaluation_metric must be one of {', '.join(METRICS)}; got {metric!r}.",
                param=f"{param}.evaluation_metric",
            )
        out["evaluation_metric"] = metric
        out.update(_threshold(spec, param, required=in_eval))
    elif kind == "score_model":
        out["model"] = _model(spec, param)
        out["input"] = _messages(spec, param)
        out["range"] = _range(spec.get("range"), param)
        out["sampling_params"] = _sampling(spec.get("sampling_params"), param)
        out.update(_threshold(spec, param, required=False))
    elif kind == "label_model":
        out["model"] = _model(spec, param)
        out["input"] = _messages(spec, param)
        out["labels"], out["passing_labels"] = _labels(spec, param)
    elif kind == "multi":
        out["graders"] = _sub_graders(spec, param)
        formula = spec.get("calculate_output")
        if formula is None:
            raise _missing(f"{param}.calculate_output")
        _parse_formula(formula, f"{param}.calculate_output", tuple(out["graders"]))
        out["calculate_output"] = formula
        out.update(_threshold(spec, param, required=False))
    return out


def _sub_graders(spec: dict[str, Any], param: str) -> dict[str, dict[str, Any]]:
    where = f"{param}.graders"
    graders = spec.get("graders")
    if graders is None:
        raise _missing(where)
    if not isinstance(graders, dict) or not graders:
        raise ActionError(f"{where} must be a non-empty object mapping names to graders.", param=where)
    out = {}
    for name, grader in graders.items():
        # ASCII only: Python folds Unicode identifiers (NFKC), so "ﬁ" would be read as "fi".
        if (
            not isinstance(name, str)
            or not _NAME.fullmatch(name)
            or keyword.iskeyword(name)
            or name in _FUNCTIONS
        ):
            raise ActionError(
                f"{where}: {name!r} cannot be named in calculate_output; use letters, digits and "
                "underscores, not starting with a digit, and not a function's name.",
                param=f"{where}.{name}",
            )
        out[name] = _validate(grader, f"{where}.{name}", in_eval=False, in_multi=True)
    return out


# --- calculate_output: a formula read with `ast` and evaluated node by node, never eval() ---------
def _min(*values: float) -> float:
    return min(values)


def _max(*values: float) -> float:
    return max(values)


# name -> (function, number of arguments; None: one or more). OpenAI's documented set.
_FUNCTIONS: dict[str, tuple[Callable[..., float], int | None]] = {
    "min": (_min, None),
    "max": (_max, None),
    "abs": (abs, 1),
    "floor": (math.floor, 1),
    "ceil": (math.ceil, 1),
    "exp": (math.exp, 1),
    "sqrt": (math.sqrt, 1),
    "log": (math.log, 1),
}
# math.pow (not **) so a negative base with a fractional exponent fails instead of turning
# complex; floats throughout so 9^9^9 overflows at once instead of computing a huge integer.
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: math.pow,
}
_ALLOWED = (
    "numbers, the graders' names, + - * / ** ^, parentheses and min, max, abs, floor, ceil, exp, sqrt, log"
)


def _parse_formula(formula: Any, where: str, names: tuple[str, ...]) -> ast.Expression:
    if not isinstance(formula, str) or not formula.strip():
        raise ActionError(f"{where} must be a non-empty string.", param=where)
    if len(formula) > MAX_FORMULA:
        raise ActionError(f"{where} must be at most {MAX_FORMULA} characters.", param=where)
    # `^` is power in OpenAI's formula syntax. Read as `**`, it also gets power's precedence and
    # right-associativity (Python's `^`, XOR, binds looser than `+`). A plain text swap is safe:
    # a formula has no strings.
    source = formula.strip().replace("^", "**")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else "it cannot be parsed"
        raise ActionError(f"{where} is not a valid formula: {detail}.", param=where) from None

    def check(node: ast.AST, depth: int = 0) -> None:
        # Bounded, so that neither this walk nor _evaluate's can exhaust the interpreter's stack.
        if depth > MAX_DEPTH:
            raise ActionError(
                f"{where} is nested too deeply: at most {MAX_DEPTH} operations inside one another.",
                param=where,
            )
        if isinstance(node, ast.Constant) and _is_number(node.value):
            return
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ActionError(
                    f"{where} uses '{node.id}', which is not one of the graders: {', '.join(names)}.",
                    param=where,
                )
            return
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            check(node.left, depth + 1)
            check(node.right, depth + 1)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            check(node.operand, depth + 1)
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            spec = _FUNCTIONS.get(node.func.id)
            if spec is None:
                raise ActionError(
                    f"{where} calls {node.func.id}(), which is not allowed: the functions are min, max, "
                    "abs, floor, ceil, exp, sqrt and log.",
                    param=where,
                )
            arity = spec[1]
            if any(isinstance(arg, ast.Starred) for arg in node.args) or (
                len(node.args) != arity if arity else not node.args
            ):
                count = f"{arity} argument" if arity else "one or more arguments"
                raise ActionError(f"{where}: {node.func.id}() takes {count}.", param=where)
            for arg in node.args:
                check(arg, depth + 1)
            return
        snippet = ast.get_source_segment(source, node) or type(node).__name__
        raise ActionError(f"{where} may only use {_ALLOWED}; '{snippet}' is not allowed.", param=where)

    check(tree.body)
    return tree


def _evaluate(node: ast.AST, scores: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(cast(float, node.value))  # a number: _parse_formula refuses other constants
    if isinstance(node, ast.Name):
        return scores[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, scores), _evaluate(node.right, scores))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, scores)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return float(_FUNCTIONS[node.func.id][0](*(_evaluate(arg, scores) for arg in node.args)))
    raise AssertionError(f"unchecked formula node {type(node).__name__}")  # _parse_formula refuses it


# --- Text similarity ----------------------------------------------------------------------------------
class _NoWordNet:
    """Stands in for nltk's WordNet reader in METEOR (its `wordnet=` argument): WordNet's data cannot
    be downloaded here, and with no synsets METEOR matches exact words and Porter stems only."""

    def synsets(self, word: str) -> list[Any]:
        return []


@functools.cache
def _tokenizer() -> Callable[[str], str]:
    # sacrebleu's 13a tokenizer (BLEU's standard), for GLEU and METEOR too: it splits punctuation
    # off words ("Paris." -> "Paris ."), needs no downloaded data (nltk's word_tokenize does).
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return cast(Callable[[str], str], Tokenizer13a())


@functools.cache
def _rouge(metric: str) -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    # Porter stemming (as in the original ROUGE's -m): "cats" matches "cat". The default tokenizer
    # keeps ASCII letters and digits only, so text in other scripts scores 0 with every rouge_*.
    return RougeScorer([metric], use_stemmer=True)


def _similarity(metric: str, text: str, reference: str, embed: Embed | None) -> float:
    # rouge_l is quadratic in the texts' lengths: bounded, a grade stays a fraction of a second.
    longest = max(len(text), len(reference))
    if longest > MAX_SIMILARITY_CHARS:
        raise ActionError(
            f"text_similarity compares texts of at most {MAX_SIMILARITY_CHARS:,} characters; this one has "
            f"{longest:,}."
        )
    if metric == "fuzzy_match":
        # OpenAI documents only "fuzzy string match, using rapidfuzz". fuzz.ratio is the plain
        # normalized Indel similarity: symmetric, case- and order-sensitive; partial_ratio/WRatio
        # would give 1.0 to an answer that merely contains the reference among other words.
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100
    if metric == "bleu":
        from sacrebleu import sentence_bleu

        # sacrebleu's defaults: 13a tokens, exponential smoothing, effective order for short text.
        return float(sentence_bleu(text, [reference]).score) / 100
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        tokenize = _tokenizer()
        return float(sentence_gleu([tokenize(reference).split()], tokenize(text).split()))
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        tokenize = _tokenizer()
        hypothesis, references = tokenize(text).split(), [tokenize(reference).split()]
        return float(meteor_score(references, hypothesis, wordnet=cast(Any, _NoWordNet())))
    if metric.startswith("rouge_"):
        name = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
        return float(_rouge(name).score(reference, text)[name].fmeasure)
    return _cosine(text, reference, embed)


def _cosine(text: str, reference: str, embed: Embed | None) -> float:
    if embed is None:
        raise ActionError("The cosine metric needs an embedding model, and none was given to this run.")
    try:
        vectors = embed([text, reference])
    except ActionError as exc:  # a failed call is this item's error; anything else is the caller's
        raise ActionError(f"The embedding model failed: {exc.message}") from None
    if (
        not isinstance(vectors, list)
        or len(vectors) != 2
        or not all(isinstance(v, list) and v and all(_is_number(x) for x in v) for v in vectors)
        or len(vectors[0]) != len(vectors[1])
    ):
        raise ActionError("The embedding model did not return two vectors of the same length.")
    a, b = vectors
    norms = math.hypot(*a) * math.hypot(*b)
    if norms == 0:
        raise ActionError("Cosine similarity is undefined for an all-zero embedding.")
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norms


# --- Grading ---------------------------------------------------------------------------------------------
_STEPS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}},
        "required": ["description", "conclusion"],
        "additionalProperties": False,
    },
}


def _answer_format(name: str, result: dict[str, Any]) -> dict[str, Any]:
    # OpenAI's grader answer, {"result": ..., "steps": [{description, conclusion}...]}, with the result
    # first: the judge commits to its verdict before it explains, so an answer cut short by its token
    # limit (small local judges ramble) still holds the verdict, and `_answer` reads it from there.
    schema = {
        "type": "object",
        "properties": {"result": result, "steps": _STEPS},
        "required": ["result", "steps"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _render_messages(
    messages: list[dict[str, Any]], item: dict[str, Any], sample: dict[str, Any] | None
) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": render(_joined(m["content"]), item, sample)} for m in messages]


# A judge's answer is a verdict and a short reason: without a limit of the grader's own, the chat
# default (up to the model's whole context) would leave a small model no room for the prompt.
JUDGE_MAX_TOKENS = 128


def _chat_sampling(spec: dict[str, Any]) -> dict[str, Any]:
    sampling = dict(spec.get("sampling_params", {}))
    sampling["max_completion_tokens"] = sampling.pop("max_completions_tokens", JUDGE_MAX_TOKENS)
    return sampling


def _ask(
    spec: dict[str, Any],
    messages: list[dict[str, Any]],
    response_format: dict[str, Any],
    judge: Judge | None,
    grade_: Grade,
) -> str:
    if judge is None:
        raise ActionError("This grader needs a judge model, and none was given to this run.")
    try:
        reply = judge(spec["model"], messages, response_format, _chat_sampling(spec))
    except ActionError as exc:  # see grade(): only ActionError is this item's failure
        raise ActionError(f"The judge model failed: {exc.message}") from None
    grade_.usage.append(reply)
    grade_.sample = {
        "input": messages,
        "output": [{"role": "assistant", "content": reply.text}],
        "model": reply.model,
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "cached_tokens": 0,
        },
    }
    return reply.text


_RESULT_FIRST = re.compile(r'\s*\{\s*"result"\s*:\s*')


def _answer(text: str) -> Any:
    """The judge's `result`; a bare JSON value is taken too, for a judge that ignored the format, and
    the leading result of an answer its token limit cut short."""
    try:
        value = json.loads(text)
    except ValueError:
        start = _RESULT_FIRST.match(text)
        if start is None:
            return None
        try:
            return json.JSONDecoder().raw_decode(text, start.end())[0]
        except ValueError:
            return None
    return value.get("result") if isinstance(value, dict) else value


def _unparsable(text: str, wanted: str) -> ActionError:
    shown = text if len(text) <= 200 else text[:200] + "…"
    return ActionError(f"The judge's answer could not be parsed: expected {wanted}; got {shown!r}.")


def _string_check(spec: dict[str, Any], item: dict[str, Any], sample: dict[str, Any] | None) -> bool:
    text, reference = render(spec["input"], item, sample), render(spec["reference"], item, sample)
    operation = spec["operation"]
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":
        return reference in text
    return reference.casefold() in text.casefold()  # ilike: casefold is Unicode's caseless match


def _grade(
    spec: dict[str, Any],
    item: dict[str, Any],
    sample: dict[str, Any] | None,
    judge: Judge | None,
    embed: Embed | None,
    out: Grade,
) -> None:
    kind = spec["type"]
    threshold = spec.get("pass_threshold")
    if kind == "string_check":
        out.passed = _string_check(spec, item, sample)
        out.score = 1.0 if out.passed else 0.0
    elif kind == "text_similarity":
        text, reference = render(spec["input"], item, sample), render(spec["reference"], item, sample)
        # Clamped: float noise puts sacrebleu's identical-sentence BLEU at 100.00000000000004.
        out.score = min(1.0, max(0.0, _similarity(spec["evaluation_metric"], text, reference, embed)))
        # Without a threshold (fine-tuning graders), the midpoint of [0, 1], as for score_model.
        out.passed = out.score >= (0.5 if threshold is None else threshold)
    elif kind == "score_model":
        low, high = spec["range"]
        result = {"type": "number", "minimum": low, "maximum": high}
        messages = _render_messages(spec["input"], item, sample)
        text = _ask(spec, messages, _answer_format("score_model_grader", result), judge, out)
        value = _answer(text)
        if not _is_number(value):
            raise _unparsable(text, "a JSON object with a numeric 'result'")
        # Clamped into the range (a judge without constrained decoding may stray); the judge's raw
        # answer stays visible in sample.output.
        out.score = min(high, max(low, float(value)))
        out.passed = out.score >= ((low + high) / 2 if threshold is None else threshold)
    elif kind == "label_model":
        result = {"type": "string", "enum": spec["labels"]}
        messages = _render_messages(spec["input"], item, sample)
        text = _ask(spec, messages, _answer_format("label_model_grader", result), judge, out)
        label = _answer(text)
        if label not in spec["labels"] and text.strip() in spec["labels"]:
            label = text.strip()  # a bare label, from a judge that ignored the format
        if not isinstance(label, str) or label not in spec["labels"]:
            raise _unparsable(text, "a JSON object whose 'result' is one of the labels")
        out.passed = label in spec["passing_labels"]
        out.score = 1.0 if out.passed else 0.0
    else:
        _multi(spec, item, sample, judge, embed, out)
        # A formula's range is unknown: without a threshold, any positive score passes.
        out.passed = out.score >= threshold if threshold is not None else out.score > 0


def _multi(
    spec: dict[str, Any],
    item: dict[str, Any],
    sample: dict[str, Any] | None,
    judge: Judge | None,
    embed: Embed | None,
    out: Grade,
) -> None:
    samples: dict[str, Any] = {}
    for name, sub_spec in spec["graders"].items():
        sub = grade(sub_spec, item, sample, judge=judge, embed=embed)
        out.usage.extend(sub.usage)
        out.sub_scores[name] = sub.score
        if sub.sample is not None:
            samples[name] = sub.sample
            out.sample = samples
        if sub.error is not None:
            # The formula would run on a made-up 0; stop before paying for more judge calls.
            raise ActionError(f"The grader '{name}' failed: {sub.error}")
    tree = _parse_formula(spec["calculate_output"], "calculate_output", tuple(spec["graders"]))
    try:
        value = _evaluate(tree.body, out.sub_scores)
    except (ArithmeticError, ValueError) as exc:
        raise ActionError(f"calculate_output could not be computed: {exc}.") from None
    if not math.isfinite(value):
        raise ActionError(f"calculate_output gave {value}, not a finite number.")
    out.score = value


def grade(
    spec: dict[str, Any],
    item: dict[str, Any],
    sample: dict[str, Any] | None,
    *,
    judge: Judge | None = None,
    embed: Embed | None = None,
) -> Grade:
    """One item graded by one validated grader. A problem of this item is returned, never raised:
    the Grade has `error` set, score 0 and passed False (what was learned before stays: sample,
    usage, sub_scores). A judge or embed callable says a call failed by raising ActionError, which
    becomes the item's error; any other exception (a run stopped, a time limit, a bug) propagates."""
    out = Grade(name=spec["name"], type=spec["type"], score=0.0, passed=False)
    try:
        _grade(spec, item, sample, judge, embed, out)
    except ActionError as exc:
        out.score, out.passed, out.error = 0.0, False, exc.message
    return out


def referenced_models(spec: dict[str, Any]) -> list[str]:
    """The judge models a validated grader calls, each once, in order (multi's sub-graders too)."""
    if spec["type"] == "multi":
        found = [model for sub in spec["graders"].values() for model in referenced_models(sub)]
        return list(dict.fromkeys(found))
    return [spec["model"]] if "model" in spec else []
