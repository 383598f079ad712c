"""Chat, completion, classification and embedding requests: checked completely before any work is queued,
then turned into a job that a worker runs (docs/architecture.md, "Inference requests are jobs too")."""

from __future__ import annotations

import math
import re
from typing import Any

from django.conf import settings

from apps.accounts.models import ApiKey, User
from apps.core.errors import ActionError
from apps.core.hotcache import HotCache
from apps.jobs import actions
from apps.jobs.models import Job, JobKind
from apps.projects.models import Project
from apps.registry.models import Model, ModelAlias, Provider, Task
from workers.runtime.specs import approx_tokens

# The endpoint a model of each task is called through.
TASK_ENDPOINTS = {
    Task.CLASSIFICATION: "/v1/classifications",
    Task.GENERATION: "/v1/chat/completions",
    Task.EMBEDDING: "/v1/embeddings",
}
MAX_N = 8
MAX_STOP = 4
MAX_CLASSIFY_INPUTS = 2048
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
COMMON_KEYS = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "logit_bias",
}
CHAT_KEYS = COMMON_KEYS | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}
COMPLETION_KEYS = COMMON_KEYS | {"prompt", "echo", "best_of", "suffix"}
# Parameters we understand but cannot honour: refused by name rather than silently ignored.
UNSUPPORTED = {
    "functions": "deprecated function calling (send tools instead)",
    "function_call": "deprecated function calling (send tool_choice instead)",
    "audio": "audio output",
    "modalities": "other modalities",
    "prediction": "predicted outputs",
    "reasoning_effort": "reasoning models",
    "web_search_options": "web search",
    "service_tier": "service tiers",
}


def _number(body: dict[str, Any], key: str, low: float, high: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ActionError(f"{key} must be a number between {low:g} and {high:g}.", param=key)
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int, high: int, default: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ActionError(f"{key} must be an integer between {low} and {high}.", param=key)
    return value


# The request path's copies (apps.core.hotcache), by organization and name.
_MODELS: HotCache[Model] = HotCache("models")


# An alias's target, by project and alias name: "" when it points nowhere (its model was deleted).
_ALIASES: HotCache[str] = HotCache("aliases")


def aliased(project: Project, name: str) -> str | None:
    """The name of the model the project's alias `name` points to now (docs/api.md, "Model
    aliases"); None when `name` is no alias of the project's."""
    if "@" not in name:
        return None

    def load() -> str | None:
        rows = list(
            ModelAlias.objects.filter(project=project, name=name).values_list("model__name", flat=True)
        )
        return (rows[0] or "") if rows else None

    target = _ALIASES.get((project.pk, name), load)
    if target == "":
        raise ActionError(
            f"The alias '{name}' points to a model that was deleted; move it to another model.",
            code="model_not_found",
            param="model",
            status=404,
        )
    return target


def find_model(project: Project, name: Any) -> Model:
    """The model a request names, if the project's organization may see it and it still answers.
    A project's alias (`support-bot@prod`) names the model it points to when the request is made."""
    if not name or not isinstance(name, str):
        raise ActionError("Missing required parameter: 'model'.", param="model")
    name = aliased(project, name) or name
    organization = project.organization
    model = _MODELS.get(
        (organization.pk, name), lambda: Model.objects.visible_to(organization).filter(name=name).first()
    )
    if model is None:
        raise ActionError(
            f"The model '{name}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
            status=404,
        )
    model.refuse_if_shut_down("model")
    return model


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def resolve_model(project: Project, name: Any, task: str) -> Model:
    model = find_model(project, name)
    if model.task != task:
        endpoint = TASK_ENDPOINTS[Task(model.task)]
        raise ActionError(f"'{name}' is {_a(model.task)} model; call it through {endpoint}.", param="model")
    if not model.limit("servable", True):
        raise ActionError(
            f"'{name}' is a base model for fine-tuning and cannot be called directly; fine-tune it first.",
            param="model",
        )
    return model


def _check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key in UNSUPPORTED:
            raise ActionError(
                f"'{key}' is not supported: these models do not offer {UNSUPPORTED[key]}.", param=key
            )
        if key not in allowed:
            raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
    if body.get("logit_bias"):
        raise ActionError("logit_bias is not supported.", param="logit_bias")


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or not all(isinstance(s, str) and s for s in stops)
        or len(stops) > MAX_STOP
    ):
        raise ActionError(
            f"stop must be a string or a list of at most {MAX_STOP} non-empty strings.", param="stop"
        )
    return stops


def _sampling(body: dict[str, Any], model: Model, default_max_tokens: int) -> dict[str, Any]:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = min(default_max_tokens, model.context_length)
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ActionError(f"{param} must be a positive integer.", param=param)
    elif max_tokens > model.context_length:
        raise ActionError(
            f"{param} is {max_tokens}, but {model.name} has a context of {model.context_length} tokens.",
            param=param,
        )
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ActionError("stream_options must be an object.", param="stream_options")
    if body.get("stream") not in (None, True, False):
        raise ActionError("stream must be true or false.", param="stream")
    return {
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 0, 2, 1.0),
        "top_p": _number(body, "top_p", 0, 1, 1.0),
        "n": _integer(body, "n", 1, MAX_N, 1),
        "stop": _stop(body.get("stop")),
        "seed": _integer(body, "seed", -(2**63), 2**63 - 1, None),
        "presence_penalty": _number(body, "presence_penalty", -2, 2, 0.0),
        "frequency_penalty": _number(body, "frequency_penalty", -2, 2, 0.0),
        "stream": bool(body.get("stream")),
        "include_usage": bool((stream_options or {}).get("include_usage")),
    }


def _check_size(value: Any, param: str) -> None:
    import json

    if len(json.dumps(value)) > settings.PROMPT_MAX_BYTES:
        raise ActionError(
            f"The prompt is longer than {settings.PROMPT_MAX_BYTES // 1024} KiB. Shorten it.",
            code="prompt_too_long",
            param=param,
        )


def _text(content: Any, where: str) -> str:
    if isinstance(content, list):
        if not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            raise ActionError("Only text content parts are supported.", param=f"{where}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ActionError(f"{where}.content must be a string.", param=f"{where}.content")
    return content


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's earlier tool calls, as the chat template renders them."""
    param = f"{where}.tool_calls"
    if not isinstance(value, list) or not value:
        raise ActionError(f"{param} must be a non-empty array.", param=param)
    calls = []
    for index, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or call.get("type", "function") != "function"
            or not isinstance(call.get("id"), str)
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise ActionError(
                f"{param}[{index}] must be {{id, type: 'function', function: {{name, arguments}}}} with string "
                "name and arguments.",
                param=f"{param}[{index}]",
            )
        calls.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": function["arguments"]},
            }
        )
    return calls


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ActionError("messages must be a non-empty array of {role, content} objects.", param="messages")
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ActionError(f"{where} must be an object with a role and content.", param=where)
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ActionError(
                f"{where}.role must be one of {', '.join(CHAT_ROLES)}; got {role!r}.", param=f"{where}.role"
            )
        turn: dict[str, Any] = {"role": "system" if role == "developer" else role}
        if role == "assistant" and message.get("tool_calls") is not None:
            turn["tool_calls"] = _tool_calls(message["tool_calls"], where)
            content = message.get("content")
            turn["content"] = "" if content is None else _text(content, where)
        else:
            turn["content"] = _text(message.get("content"), where)
        if role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise ActionError(
                    f"{where}.tool_call_id is required: the id of the tool call this message answers.",
                    param=f"{where}.tool_call_id",
                )
            turn["tool_call_id"] = message["tool_call_id"]
        messages.append(turn)
    return messages


FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TOOLS = 128


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    value = body.get("tools")
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_TOOLS:
        raise ActionError(f"tools must be an array of 1 to {MAX_TOOLS} function tools.", param="tools")
    tools, names = [], set()
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise ActionError(
                f"{where} must be {{type: 'function', function: {{name, description, parameters}}}}; only "
                "function tools are supported.",
                param=where,
            )
        name = function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
            raise ActionError(
                f"{where}.function.name must be 1 to 64 letters, digits, underscores or dashes.",
                param=f"{where}.function.name",
            )
        if name in names:
            raise ActionError(
                f"{where}.function.name '{name}' is given twice.", param=f"{where}.function.name"
            )
        names.add(name)
        kept: dict[str, Any] = {"name": name}
        for key, kind, shown in (
            ("description", str, "a string"),
            ("parameters", dict, "a JSON schema object"),
            ("strict", bool, "true or false"),
        ):
            if function.get(key) is not None:
                if not isinstance(function[key], kind):
                    raise ActionError(
                        f"{where}.function.{key} must be {shown}.", param=f"{where}.function.{key}"
                    )
                kept[key] = function[key]
        tools.append({"type": "function", "function": kept})
    return tools


def _tool_choice(body: dict[str, Any], tools: list[dict[str, Any]] | None) -> Any:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if tools is None:
        raise ActionError(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    if choice in ("none", "auto", "required"):
        return choice
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise ActionError(
            "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}.",
            param="tool_choice",
        )
    if name not in {tool["function"]["name"] for tool in tools}:
        raise ActionError(
            f"Invalid value for 'tool_choice': no function named '{name}' was specified in the 'tools' parameter.",
            param="tool_choice",
        )
    return {"type": "function", "function": {"name": name}}


RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _response_format(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    value = body.get("response_format")
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in RESPONSE_FORMATS:
        raise ActionError(
            "response_format must be an object whose type is 'text', 'json_object' or 'json_schema'.",
            param="response_format",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        if not any("json" in m["content"].lower() for m in messages):
            # OpenAI's rule, kept so code moves both ways: a model told nothing about JSON tends to
            # fill the budget with whitespace.
            raise ActionError(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                "'json_object'.",
                param="messages",
            )
        return {"type": "json_object"}
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise ActionError(
            "response_format.json_schema is required: {name, schema, strict}.", param="response_format"
        )
    name = spec.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise ActionError(
            "response_format.json_schema.name must be 1 to 64 letters, digits, underscores or dashes.",
            param="response_format.json_schema.name",
        )
    kept: dict[str, Any] = {"name": name}
    for key, kind_, shown in (("schema", dict, "a JSON schema object"), ("strict", bool, "true or false")):
        if spec.get(key) is not None:
            if not isinstance(spec[key], kind_):
                raise ActionError(
                    f"response_format.json_schema.{key} must be {shown}.",
                    param=f"response_format.json_schema.{key}",
                )
            kept[key] = spec[key]
    return {"type": "json_schema", "json_schema": kept}


def _constraints(request: dict[str, Any], body: dict[str, Any]) -> None:
    """Tools and response format: their shapes, then their schemas compiled (in a bounded child
    process) so that one the decoder cannot follow is refused before any work is queued; the worker
    compiles the request's grammar again."""
    from workers.runtime.constrain import bounded_request_problem

    tools = _tools(body)
    tool_choice = _tool_choice(body, tools)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise ActionError("parallel_tool_calls must be true or false.", param="parallel_tool_calls")
    response_format = _response_format(body, request["messages"])
    if response_format and tools and tool_choice != "none":
        raise ActionError(
            "response_format cannot be combined with tools on this model: the answer is either a tool call "
            "or the JSON. Send tool_choice 'none', or drop one of them.",
            param="response_format",
        )
    if tools:
        _check_size(tools, "tools")
    if response_format:
        _check_size(response_format, "response_format")
    if tools or response_format:
        problem = bounded_request_problem(response_format, tools, tool_choice, parallel)
        if problem is not None:
            raise ActionError(problem[1], param=problem[0])
    if tools:
        request.update(tools=tools, tool_choice=tool_choice or "auto", parallel_tool_calls=parallel)
    if response_format:
        request["response_format"] = response_format


def parse_chat(project: Project, body: Any) -> tuple[Model, dict[str, Any]]:
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    model = resolve_model(project, body.get("model"), Task.GENERATION)
    if model.provider == Provider.OPENAI:
        return model, _proxied(body, "messages")
    _check_keys(body, CHAT_KEYS)
    request = {"endpoint": "chat", "messages": _messages(body.get("messages")), **_sampling(body, model, 256)}
    _check_size(request["messages"], "messages")
    _constraints(request, body)
    request["logprobs"] = body.get("logprobs") is True
    request["top_logprobs"] = _integer(body, "top_logprobs", 0, 20, 0)
    if request["top_logprobs"] and not request["logprobs"]:
        raise ActionError("top_logprobs needs logprobs set to true.", param="top_logprobs")
    return model, request


def parse_completion(project: Project, body: Any) -> tuple[Model, dict[str, Any]]:
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    model = resolve_model(project, body.get("model"), Task.GENERATION)
    if model.provider == Provider.OPENAI:
        return model, _proxied(body, "prompt")
    _check_keys(body, COMPLETION_KEYS)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ActionError(
            "prompt must be a string or a non-empty array of strings (token ids are not supported).",
            param="prompt",
        )
    for key, allowed in (("echo", (None, False)), ("best_of", (None, 1)), ("suffix", (None, ""))):
        if body.get(key) not in allowed:
            raise ActionError(f"{key} is not supported.", param=key)
    request = {"endpoint": "completions", "prompts": prompts, **_sampling(body, model, 16)}
    _check_size(prompts, "prompt")
    if len(prompts) * request["n"] > 64:
        raise ActionError("At most 64 completions per request (prompts × n).", param="n")
    top = _integer(body, "logprobs", 0, 5, None)
    request["logprobs"] = top is not None
    request["top_logprobs"] = top or 0
    return model, request


# What an `openai:*` request may carry. The upstream checks the values; we check what decides what
# a request costs (its completion budget, how many choices) and refuse what costs more upstream than
# the usage we bill from its answer: a priority tier, web searches, audio.
PROXY_KEYS = {
    "messages": CHAT_KEYS
    | {
        "functions",
        "function_call",
        "reasoning_effort",
        "prediction",
        "service_tier",
        "modalities",
        "safety_identifier",
        "prompt_cache_key",
        "verbosity",
    },
    "prompt": COMPLETION_KEYS,
}
PROXY_PRICED_APART = {
    "audio": "audio output",
    "web_search_options": "web search",
}
PROXY_SERVICE_TIERS = (None, "auto", "default", "flex")
# Content parts that are text. An image, audio or file part is read as tokens that its bytes do not
# bound (an image URL of a few bytes is hundreds of tokens), or is priced apart from text tokens.
PROXY_TEXT_PARTS = ("text", "refusal")
# An `openai:*` request without a completion limit is counted (rate limits, spend cap) as if it
# asked for this many tokens; it is billed for what the upstream reports.
PROXY_COMPLETION_BUDGET = 4096
MAX_PROXY_TOKENS = 1_000_000


def _proxied(body: dict[str, Any], prompt_key: str) -> dict[str, Any]:
    """OpenAI models: the upstream checks the parameters' values; we check the fields, size,
    streaming, and everything that decides the cost."""
    for key in body:
        if key in PROXY_PRICED_APART:
            raise ActionError(
                f"'{key}' is not supported through the proxy: {PROXY_PRICED_APART[key]} is priced apart from "
                "tokens.",
                param=key,
            )
        if key not in PROXY_KEYS[prompt_key]:
            raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
    if body.get("service_tier") not in PROXY_SERVICE_TIERS:
        raise ActionError(
            "service_tier must be 'auto', 'default' or 'flex' through the proxy; other tiers are priced "
            "above the tokens we bill.",
            param="service_tier",
        )
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise ActionError('modalities must be ["text"] through the proxy.', param="modalities")
    if prompt_key not in body:
        raise ActionError(f"Missing required parameter: '{prompt_key}'.", param=prompt_key)
    if prompt_key == "messages" and (not isinstance(body["messages"], list) or not body["messages"]):
        raise ActionError("messages must be a non-empty array of {role, content} objects.", param="messages")
    if prompt_key == "messages":
        _proxied_text_only(body["messages"])
    _check_size(body[prompt_key], prompt_key)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N):
        raise ActionError(f"n must be an integer between 1 and {MAX_N}.", param="n")
    for key in ("max_tokens", "max_completion_tokens"):
        _integer(body, key, 1, MAX_PROXY_TOKENS, None)
    best_of = _integer(body, "best_of", 1, MAX_N, None)
    if best_of is not None and best_of < (n or 1):
        raise ActionError("best_of must be at least n.", param="best_of")
    if body.get("stream") not in (None, True, False):
        raise ActionError("stream must be true or false.", param="stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ActionError("stream_options must be an object.", param="stream_options")
    upstream = dict(body)
    upstream["model"] = body["model"].split(":", 1)[1]
    return {
        "endpoint": "chat" if prompt_key == "messages" else "completions",
        "proxy": True,
        "body": upstream,
        "stream": bool(body.get("stream")),
        "include_usage": bool((body.get("stream_options") or {}).get("include_usage")),
    }


def _proxied_text_only(messages: list[Any]) -> None:
    """Only text goes upstream through the proxy (docs/api.md, "Serving"): the upstream checks the
    rest of each message."""
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        where = f"messages[{index}]"
        if "audio" in message:
            raise ActionError(
                f"'{where}.audio' is not supported through the proxy: audio is priced apart from tokens.",
                param=f"{where}.audio",
            )
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in PROXY_TEXT_PARTS:
                shown = f"'{kind}'" if isinstance(kind, str) else "Non-text"
                raise ActionError(
                    f"{shown} content is not supported through the proxy: only text parts are.",
                    param=f"{where}.content",
                )


def parse_classification(project: Project, body: Any) -> tuple[Model, dict[str, Any]]:
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    for key in body:
        if key not in ("model", "input", "top_k", "user"):
            raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
    model = resolve_model(project, body.get("model"), Task.CLASSIFICATION)
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise ActionError("input must be a string or a non-empty array of strings.", param="input")
    if len(texts) > MAX_CLASSIFY_INPUTS:
        raise ActionError(
            f"input has {len(texts)} items; the limit is {MAX_CLASSIFY_INPUTS} per request.", param="input"
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ActionError(f"input[{index}] must be a string.", param=f"input[{index}]")
    _check_size(texts, "input")
    top_k = _integer(body, "top_k", 1, max(len(model.labels), 1), None)
    return model, {"endpoint": "classifications", "texts": texts, "top_k": top_k}


# --- Embeddings -------------------------------------------------------------------------------------
EMBEDDING_KEYS = {"model", "input", "encoding_format", "dimensions", "user"}
MAX_EMBEDDING_INPUTS = 2048
ENCODING_FORMATS = ("float", "base64")
NOT_TEXT_REFUSED = (
    "input holds token ids, but {model} reads text: send strings. (LangChain's OpenAIEmbeddings sends "
    "token ids unless it is created with check_embedding_ctx_length=False.)"
)


def resolve_embedding_model(project: Project, name: Any) -> Model:
    """A model that embeds: the catalog marks which (`Model.embedding_dimensions`). Generators and
    classifiers, fine-tuned ones included, are refused with the models that can."""
    model = find_model(project, name)
    if model.embedding_dimensions is None:
        embedders = [
            m.name
            for m in Model.objects.visible_to(project.organization).in_service().order_by("name")
            if m.embedding_dimensions
        ]
        raise ActionError(
            f"'{name}' is {_a(model.task)} model and cannot create embeddings. Models that can: "
            f"{', '.join(embedders) or 'none'}.",
            param="model",
        )
    return model


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _embedding_inputs(value: Any, model: Model) -> list[Any]:
    """`input` as a list: strings, or (for `openai:*` models only) arrays of token ids."""
    if value is None:
        raise ActionError("Missing required parameter: 'input'.", param="input")
    proxied = model.provider == Provider.OPENAI
    if isinstance(value, str) or _is_token_ids(value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise ActionError("input must be a string or a non-empty array of strings.", param="input")
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise ActionError(
            f"input has {len(items)} items; the limit is {MAX_EMBEDDING_INPUTS} per request.", param="input"
        )
    for index, item in enumerate(items):
        where = "input" if len(items) == 1 and not isinstance(value, list) else f"input[{index}]"
        if _is_token_ids(item) or _is_token_ids(value):
            if not proxied:
                raise ActionError(NOT_TEXT_REFUSED.format(model=model.name), param="input")
            continue
        if not isinstance(item, str):
            raise ActionError(f"{where} must be a string.", param=where)
        if not item:
            raise ActionError(f"{where} is an empty string; every input must hold some text.", param=where)
    return items


def parse_embedding(project: Project, body: Any) -> tuple[Model, dict[str, Any]]:
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    for key in body:
        if key not in EMBEDDING_KEYS:
            raise ActionError(f"Unrecognized request argument supplied: {key}", param=key)
    model = resolve_embedding_model(project, body.get("model"))
    texts = _embedding_inputs(body.get("input"), model)
    _check_size(texts, "input")
    encoding_format = body.get("encoding_format")
    if encoding_format not in (None, *ENCODING_FORMATS):
        raise ActionError("encoding_format must be 'float' or 'base64'.", param="encoding_format")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise ActionError("user must be a string.", param="user")
    if model.provider == Provider.OPENAI:
        # The upstream checks `dimensions` (each of its models allows its own range).
        upstream = {**body, "model": model.name.split(":", 1)[1]}
        return model, {"endpoint": "embeddings", "proxy": True, "body": upstream}
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions != model.embedding_dimensions):
        raise ActionError(
            f"dimensions must be {model.embedding_dimensions} for {model.name}: it makes "
            f"{model.embedding_dimensions}-dimensional embeddings only.",
            param="dimensions",
        )
    return model, {"endpoint": "embeddings", "texts": texts, "encoding_format": encoding_format or "float"}


# The parser of each endpoint, by the name a job's request carries (apps.projects.formats.BATCH_ENDPOINTS).
PARSERS = {
    "chat": parse_chat,
    "completions": parse_completion,
    "classifications": parse_classification,
    "embeddings": parse_embedding,
}


def _completion_budget(request: dict[str, Any]) -> int:
    """Every completion token a request may be billed for: each choice's limit (an `openai:*`
    request without one counts PROXY_COMPLETION_BUDGET), for each prompt."""
    if request.get("endpoint") == "embeddings":
        return 0
    if request.get("proxy"):
        body = request["body"]
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or PROXY_COMPLETION_BUDGET
        choices = max(int(body.get("n") or 1), int(body.get("best_of") or 1))
        return int(limit) * choices * _proxied_prompts(body)
    return int(request.get("max_tokens", 0)) * int(request.get("n", 1)) * len(request.get("prompts") or [1])


def _proxied_prompts(body: dict[str, Any]) -> int:
    """How many prompts a proxied request sends: OpenAI's legacy completions answer each prompt of an
    array of strings (or of token arrays); an array of token ids is one prompt."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        return len(prompt)
    return 1


def _prompt(request: dict[str, Any]) -> Any:
    if request.get("proxy"):
        body = request["body"]
        return body.get("messages") or body.get("prompt") or body.get("input")
    return request.get("messages") or request.get("prompts") or request.get("texts")


def _input(request: dict[str, Any]) -> Any:
    """Everything the model reads as input: the prompt, and through the proxy the whole body, since
    OpenAI counts tool and function definitions, a response schema and a prediction as prompt tokens."""
    if request.get("proxy"):
        return request["body"]
    # The chat template renders tool definitions into the prompt.
    return [_prompt(request), request["tools"]] if request.get("tools") else _prompt(request)


def estimate_tokens(request: dict[str, Any]) -> int:
    """Tokens a request may use, for the tokens-per-minute limit: ~4 characters a token for its
    input, plus every completion token it may generate."""
    import json

    return approx_tokens(len(json.dumps(_input(request)))) + _completion_budget(request)


# Tokens a chat template or a tokenizer adds around each message or text (role markers, BOS/EOS).
TEMPLATE_TOKENS = 16
# The instructions the tool template writes before the tool definitions (workers.runtime.tools:
# about 110 tokens with SmolLM2's tokenizer), with room for a model's own tool template.
TOOLS_PREAMBLE_TOKENS = 256


def largest_usage(request: dict[str, Any]) -> dict[str, int]:
    """The most a request can be billed for, unit by unit: its share of the spend cap. No tokenizer
    we serve or proxy makes more tokens than a text has UTF-8 bytes (byte-level BPE covers at least
    a byte a token, WordPiece at least a character), plus what templates add; and every completion
    token it may generate."""
    import json

    prompt = _prompt(request)
    items = prompt if isinstance(prompt, list) else [prompt]
    input_bytes = len(json.dumps(_input(request), ensure_ascii=False).encode())
    input_tokens = input_bytes + TEMPLATE_TOKENS * (len(items) + 1)
    if request.get("tools"):
        input_tokens += TOOLS_PREAMBLE_TOKENS
    if request.get("endpoint") == "classifications":
        return {"classified_texts": len(items), "input_tokens": input_tokens}
    if request.get("endpoint") == "embeddings":
        return {"input_tokens": input_tokens}
    return {"input_tokens": input_tokens, "output_tokens": _completion_budget(request)}


def largest_cost(model: Model, request: dict[str, Any]) -> int:
    """`largest_usage` in micro-dollars at the model's prices."""
    from apps.billing.pricing import cost_of

    return sum(cost_of(model.name, unit, quantity) for unit, quantity in largest_usage(request).items())


OVERLOADED = (
    "More requests are waiting for {model} than its workers can take right now. Retry in {seconds} s."
)


def check_backlog(model: Model) -> None:
    """Load shedding. When INFERENCE_MAX_QUEUED requests already wait for a worker of this model's
    queue, a new one is refused at once with 503 and retry-after (which the OpenAI SDK honours and
    retries) instead of waiting its way towards a 504. Not knowing the backlog (broker down) sheds
    nothing: publishing copes with that on its own."""
    from apps.core.broker import queue_length

    waiting = queue_length("default" if model.provider == Provider.OPENAI else "serve")
    if waiting is not None and waiting >= settings.INFERENCE_MAX_QUEUED:
        seconds = settings.INFERENCE_SHED_RETRY_AFTER_SECONDS
        error = ActionError(
            OVERLOADED.format(model=model.name, seconds=seconds), code="server_overloaded", status=503
        )
        error.headers = {"retry-after": str(seconds)}
        raise error


PROJECT_DELETED = (
    "The project of this request was deleted before its answer could be stored. Retry in another project."
)


def answered(job: Job) -> Job:
    """The job as its worker left it once it said it is done; 404 when the job is gone with its
    project (deleted while the request waited)."""
    found = Job.objects.filter(pk=job.pk).first()
    if found is None:
        raise ActionError(PROJECT_DELETED, code="not_found", status=404)
    return found


JOB_KINDS = {"classifications": JobKind.CLASSIFICATION, "embeddings": JobKind.EMBEDDING}


def submit(
    project: Project,
    model: Model,
    request: dict[str, Any],
    *,
    api_key: ApiKey | None = None,
    user: User | None = None,
    reserved_cost: int = 0,
) -> Job:
    """The request's job; `apps.jobs.admission.admit_inference` has checked it may run."""
    kind = JOB_KINDS.get(request["endpoint"], JobKind.GENERATION)
    return actions.create_job(
        kind=kind,
        project=project,
        model=model,
        model_name=model.name,
        request=request,
        api_key=api_key,
        user=user,
        reserved_cost=reserved_cost,
    )
