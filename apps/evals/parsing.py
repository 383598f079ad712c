"""Reading the Evals API's requests, as OpenAI's: an eval's data source config and testing
criteria, and a run's data source. Every refusal is an `ActionError` naming the field it is about.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable

from apps.core.errors import ActionError
from apps.jobs import graders
from apps.jobs.fine_tuning import parse_metadata
from apps.jobs.inference import resolve_embedding_model, resolve_model
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.registry.models import Task

MAX_CRITERIA = 20
MAX_ITEMS = 50_000
MAX_TEMPLATE_MESSAGES = 64
MAX_NAME = 200
ROLES = ("system", "developer", "user", "assistant")
# What `{{sample.*}}` holds: OpenAI's sample schema, shown in the eval's data_source_config.
SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
    },
    "required": ["model", "choices"],
}
UNSUPPORTED_CONFIGS = {
    "logs": "Modelworks does not store completions, so there are no logs to evaluate",
    "stored_completions": "Modelworks does not store completions",
}


def _keys(body: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in body:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ActionError(f"Unrecognized request argument supplied: {name}", param=name)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ActionError(f"{param} must be an object.", param=param)
    return value


def parse_name(body: dict[str, Any], param: str = "name") -> str:
    """The optional `name`: absent is "", but a name given must be a string (null is no name)."""
    if param not in body:
        return ""
    value = body[param]
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise ActionError(f"{param} must be a string of at most {MAX_NAME} characters.", param=param)
    return value


# --- Evals -------------------------------------------------------------------------------------------
def parse_eval(project: Project, body: Any) -> dict[str, Any]:
    body = _object(body, "The request body")
    _keys(body, ("name", "metadata", "data_source_config", "testing_criteria"), "")
    config = parse_data_source_config(body.get("data_source_config"))
    criteria = parse_testing_criteria(project, body.get("testing_criteria"))
    return {
        "name": parse_name(body),
        "metadata": parse_metadata(body.get("metadata")),
        "data_source_config": config,
        "testing_criteria": criteria,
    }


def parse_eval_update(body: Any) -> dict[str, Any]:
    body = _object(body, "The request body")
    _keys(body, ("name", "metadata"), "")
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = parse_name(body)
    if "metadata" in body:
        changes["metadata"] = parse_metadata(body["metadata"])
    return changes


def parse_data_source_config(value: Any) -> dict[str, Any]:
    param = "data_source_config"
    if value is None:
        raise ActionError("Missing required parameter: 'data_source_config'.", param=param)
    config = _object(value, param)
    kind = config.get("type")
    if kind in UNSUPPORTED_CONFIGS:
        raise ActionError(
            f"data_source_config.type '{kind}' is not supported: {UNSUPPORTED_CONFIGS[kind]}. "
            "Use 'custom' with an item_schema, and give the items to each run.",
            param=f"{param}.type",
        )
    if kind != "custom":
        raise ActionError("data_source_config.type must be 'custom'.", param=f"{param}.type")
    _keys(config, ("type", "item_schema", "include_sample_schema"), param)
    schema = config.get("item_schema")
    if not isinstance(schema, dict):
        raise ActionError(
            "data_source_config.item_schema must be a JSON schema object.", param=f"{param}.item_schema"
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ActionError(
            f"data_source_config.item_schema is not a valid JSON schema: {exc.message}",
            param=f"{param}.item_schema",
        ) from None
    except RecursionError:
        raise ActionError(
            "data_source_config.item_schema is nested too deeply.", param=f"{param}.item_schema"
        ) from None
    problem = unsafe_schema_part(schema)
    if problem:
        raise ActionError(f"data_source_config.item_schema: {problem}", param=f"{param}.item_schema")
    try:
        list(eval_validator(schema).iter_errors({}))
    except (RecursionError, Unresolvable):
        raise ActionError(
            "data_source_config.item_schema refers to itself without end; a $ref must lead to a schema.",
            param=f"{param}.item_schema",
        ) from None
    include = config.get("include_sample_schema", False)
    if not isinstance(include, bool):
        raise ActionError(
            "data_source_config.include_sample_schema must be true or false.",
            param=f"{param}.include_sample_schema",
        )
    return {"type": "custom", "item_schema": schema, "include_sample_schema": include}


MAX_SCHEMA_DEPTH = 32
# A regular expression is run by Python's backtracking engine, where a pattern such as ^(a+)+$ takes
# time exponential in the text: a schema would let anyone hold a worker for hours.
REFUSED_KEYWORDS = {
    "pattern": "regular expressions ('pattern') are not supported: they could run for hours on a crafted item",
    "patternProperties": "regular expressions ('patternProperties') are not supported: they could run for hours "
    "on a crafted item",
}


def unsafe_schema_part(schema: Any, depth: int = 0) -> str:
    """Why a schema cannot be used ("" when it can): a `$ref` outside the schema itself (the server
    would fetch it), a regular expression, or nesting past MAX_SCHEMA_DEPTH."""
    if depth > MAX_SCHEMA_DEPTH:
        return f"it is nested more than {MAX_SCHEMA_DEPTH} levels deep"
    if isinstance(schema, list):
        return next((found for part in schema if (found := unsafe_schema_part(part, depth + 1))), "")
    if not isinstance(schema, dict):
        return ""
    for key, value in schema.items():
        if key in REFUSED_KEYWORDS:
            return REFUSED_KEYWORDS[key]
        if key in ("$ref", "$dynamicRef") and not (isinstance(value, str) and value.startswith("#")):
            return (
                f"{key} {value!r} points outside the schema; only references within it (#/...) are followed"
            )
        found = unsafe_schema_part(value, depth + 1)
        if found:
            return found
    return ""


def eval_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of items against an eval's schema that never fetches anything: an empty registry
    (jsonschema would otherwise download a remote `$ref`)."""
    return Draft202012Validator(schema, registry=Registry())


def shown_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as an eval shows it: the schema of a whole data source row, item and sample."""
    properties: dict[str, Any] = {"item": config["item_schema"]}
    required = ["item"]
    if config.get("include_sample_schema"):
        properties["sample"] = SAMPLE_SCHEMA
        required.append("sample")
    return {
        "type": "custom",
        "schema": {"type": "object", "properties": properties, "required": required},
    }


def parse_testing_criteria(project: Project, value: Any) -> list[dict[str, Any]]:
    param = "testing_criteria"
    if value is None:
        raise ActionError("Missing required parameter: 'testing_criteria'.", param=param)
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CRITERIA:
        raise ActionError(f"testing_criteria must be a list of 1 to {MAX_CRITERIA} graders.", param=param)
    criteria, names = [], set()
    for index, spec in enumerate(value):
        where = f"{param}[{index}]"
        grader = graders.validate_grader(spec, param=where, in_eval=True)
        if grader["name"] in names:
            raise ActionError(
                f"{where}.name '{grader['name']}' is already used by another criterion; names must differ.",
                param=f"{where}.name",
            )
        names.add(grader["name"])
        check_grader_models(project, grader, where)
        # OpenAI gives each criterion an id of its name and a unique suffix.
        criteria.append({**grader, "id": f"{grader['name']}-{uuid.uuid4()}"})
    return criteria


def check_grader_models(project: Project, grader: dict[str, Any], where: str) -> None:
    """Each judge a grader calls must be a chat model the project may call; a cosine metric needs the
    embedding model."""
    for name in graders.referenced_models(grader):
        try:
            resolve_model(project, name, Task.GENERATION)
        except ActionError as exc:
            raise ActionError(exc.message, code=exc.code, param=f"{where}.model", status=exc.status) from None
    if uses_embeddings(grader):
        from django.conf import settings

        try:
            resolve_embedding_model(project, settings.EVAL_EMBEDDING_MODEL)
        except ActionError as exc:
            raise ActionError(
                f"The cosine metric embeds with {settings.EVAL_EMBEDDING_MODEL}, which is not available: "
                f"{exc.message}",
                param=f"{where}.evaluation_metric",
            ) from None


def uses_embeddings(grader: dict[str, Any]) -> bool:
    if grader.get("type") == "multi":
        return any(uses_embeddings(sub) for sub in (grader.get("graders") or {}).values())
    return grader.get("type") == "text_similarity" and grader.get("evaluation_metric") == "cosine"


# --- Runs --------------------------------------------------------------------------------------------
def parse_run(project: Project, item_schema: dict[str, Any], body: Any) -> dict[str, Any]:
    body = _object(body, "The request body")
    _keys(body, ("name", "metadata", "data_source"), "")
    param = "data_source"
    if body.get("data_source") is None:
        raise ActionError("Missing required parameter: 'data_source'.", param=param)
    source = _object(body["data_source"], param)
    kind = source.get("type")
    if kind == "responses":
        raise ActionError(
            "data_source.type 'responses' is not supported: the Responses API is not offered here. "
            "Use 'completions' to sample a model, or 'jsonl' with the answers in each row's sample.",
            param=f"{param}.type",
        )
    if kind == "jsonl":
        _keys(source, ("type", "source"), param)
        data_source: dict[str, Any] = {"type": "jsonl", "source": _source(project, item_schema, source)}
        model = ""
    elif kind == "completions":
        _keys(source, ("type", "source", "input_messages", "model", "sampling_params"), param)
        data_source, model = _completions(project, item_schema, source)
    else:
        raise ActionError("data_source.type must be 'jsonl' or 'completions'.", param=f"{param}.type")
    return {
        "name": parse_name(body),
        "metadata": parse_metadata(body.get("metadata")),
        "data_source": data_source,
        "model": model,
    }


def _source(project: Project, item_schema: dict[str, Any], data_source: dict[str, Any]) -> dict[str, Any]:
    param = "data_source.source"
    if data_source.get("source") is None:
        raise ActionError("Missing required parameter: 'data_source.source'.", param=param)
    source = _object(data_source["source"], param)
    kind = source.get("type")
    if kind == "file_content":
        _keys(source, ("type", "content"), param)
        content = source.get("content")
        if not isinstance(content, list) or not 1 <= len(content) <= MAX_ITEMS:
            raise ActionError(
                f"data_source.source.content must be a list of 1 to {MAX_ITEMS:,} rows.",
                param=f"{param}.content",
            )
        validator = eval_validator(item_schema)
        rows = []
        for index, row in enumerate(content):
            rows.append(check_row(row, validator, f"{param}.content[{index}]"))
        return {"type": "file_content", "content": rows}
    if kind == "file_id":
        _keys(source, ("type", "id"), param)
        file = _eval_file(project, source.get("id"), f"{param}.id")
        return {"type": "file_id", "id": file.public_id}
    if kind == "stored_completions":
        raise ActionError(
            "data_source.source.type 'stored_completions' is not supported: completions are not stored "
            "here. Give the items as file_content or an uploaded file (file_id).",
            param=f"{param}.type",
        )
    raise ActionError("data_source.source.type must be 'file_content' or 'file_id'.", param=f"{param}.type")


def check_row(row: Any, validator: Draft202012Validator, where: str) -> dict[str, Any]:
    """One data source row: {"item": {...}, "sample": {...}?}, its item matching the eval's schema."""
    if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
        raise ActionError(f'{where} must be an object with an "item" object.', param=where)
    extra = sorted(set(row) - {"item", "sample"})
    if extra:
        raise ActionError(f'{where} has {extra[0]!r}; a row holds only "item" and "sample".', param=where)
    if "sample" in row and not isinstance(row["sample"], dict):
        raise ActionError(f"{where}.sample must be an object.", param=f"{where}.sample")
    problem = item_problem(validator, row["item"])
    if problem:
        raise ActionError(
            f"{where}.item does not match the eval's item_schema: {problem}", param=f"{where}.item"
        )
    return row


def item_problem(validator: Draft202012Validator, item: Any) -> str:
    """The first way `item` breaks the eval's item schema ("" when it does not), with where."""
    try:
        error = next(iter(sorted(validator.iter_errors(item), key=lambda e: list(e.path))), None)
    except (RecursionError, Unresolvable):  # schemas made before these were refused at creation
        return "the eval's item_schema cannot be checked (it refers to itself without end)"
    if error is None:
        return ""
    where = "".join(f"[{part!r}]" if isinstance(part, str) else f"[{part}]" for part in error.path)
    return f"{error.message} (at item{where})" if where else error.message


def _eval_file(project: Project, file_id: Any, param: str) -> File:
    if not isinstance(file_id, str) or not file_id:
        raise ActionError(f"Missing required parameter: '{param}'.", param=param)
    file = File.objects.filter(project=project, public_id=file_id).first()
    if file is None:
        raise ActionError(f"Invalid file id '{file_id}': no such file in this project.", param=param)
    if file.purpose != FilePurpose.EVALS:
        raise ActionError(
            f"File {file_id} has purpose '{file.purpose}'; eval runs read files with purpose 'evals'.",
            param=param,
        )
    if file.status != FileStatus.PROCESSED:
        state = "failed validation" if file.status == FileStatus.ERROR else "is still being validated"
        raise ActionError(f"File {file_id} {state}; use a processed file.", param=param)
    rows = int((file.validation or {}).get("rows") or 0)
    if rows > MAX_ITEMS:
        raise ActionError(f"The file has {rows:,} rows; a run reads at most {MAX_ITEMS:,}.", param=param)
    return file


ITEM_REFERENCE = re.compile(r"item(\.[A-Za-z0-9_\-]+)+")


def _completions(
    project: Project, item_schema: dict[str, Any], data_source: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    model = resolve_model(project, data_source.get("model"), Task.GENERATION)
    messages = _input_messages(data_source.get("input_messages"))
    sampling = _sampling_params(data_source.get("sampling_params"))
    shown = {
        "type": "completions",
        "source": _source(project, item_schema, data_source),
        "input_messages": messages,
        "model": model.name,
        "sampling_params": sampling,
    }
    return shown, model.name


def _input_messages(value: Any) -> dict[str, Any]:
    param = "data_source.input_messages"
    if value is None:
        raise ActionError(f"Missing required parameter: '{param}'.", param=param)
    spec = _object(value, param)
    kind = spec.get("type")
    if kind == "item_reference":
        _keys(spec, ("type", "item_reference"), param)
        reference = spec.get("item_reference")
        if not isinstance(reference, str) or not ITEM_REFERENCE.fullmatch(reference):
            raise ActionError(
                f"{param}.item_reference must name a list of messages in the item, such as 'item.messages'.",
                param=f"{param}.item_reference",
            )
        return {"type": "item_reference", "item_reference": reference}
    if kind != "template":
        raise ActionError(f"{param}.type must be 'template' or 'item_reference'.", param=f"{param}.type")
    _keys(spec, ("type", "template"), param)
    template = spec.get("template")
    if not isinstance(template, list) or not 1 <= len(template) <= MAX_TEMPLATE_MESSAGES:
        raise ActionError(
            f"{param}.template must be a list of 1 to {MAX_TEMPLATE_MESSAGES} messages.",
            param=f"{param}.template",
        )
    return {
        "type": "template",
        "template": [_template_message(m, f"{param}.template[{i}]") for i, m in enumerate(template)],
    }


def _template_message(value: Any, where: str) -> dict[str, Any]:
    message = _object(value, where)
    _keys(message, ("role", "content", "type"), where)
    if message.get("type", "message") != "message":
        raise ActionError(f"{where}.type must be 'message'.", param=f"{where}.type")
    role = message.get("role")
    if role not in ROLES:
        raise ActionError(f"{where}.role must be one of {', '.join(ROLES)}.", param=f"{where}.role")
    content = graders.message_text(message.get("content"), f"{where}.content")
    graders.check_template(content, f"{where}.content", namespaces=("item",))
    return {"role": role, "content": content}


SAMPLING_KEYS = ("temperature", "top_p", "seed", "max_completion_tokens", "response_format")


def _sampling_params(value: Any) -> dict[str, Any]:
    param = "data_source.sampling_params"
    if value is None:
        return {}
    params = _object(value, param)
    _keys(params, SAMPLING_KEYS, param)
    for key, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        number = params.get(key)
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, int | float) or not low <= number <= high
        ):
            raise ActionError(f"{param}.{key} must be a number from {low} to {high}.", param=f"{param}.{key}")
    for key in ("seed", "max_completion_tokens"):
        number = params.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise ActionError(f"{param}.{key} must be an integer.", param=f"{param}.{key}")
    if params.get("max_completion_tokens") is not None and params["max_completion_tokens"] < 1:
        raise ActionError(
            f"{param}.max_completion_tokens must be at least 1.", param=f"{param}.max_completion_tokens"
        )
    if params.get("response_format") is not None:
        _object(params["response_format"], f"{param}.response_format")
    return {key: params[key] for key in SAMPLING_KEYS if params.get(key) is not None}
