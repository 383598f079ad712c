"""Fine-tuning requests: OpenAI's body parsed and checked completely before anything is queued,
the cost estimate, and submission."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from apps.accounts.models import ApiKey, User
from apps.billing import quotas
from apps.billing.models import Subscription
from apps.billing.pricing import cost_of
from apps.core.errors import ActionError
from apps.jobs import actions
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects.formats import (
    CLASSIFICATION_FORMATS,
    PREFERENCE_FORMATS,
    SUPERVISED_FORMATS,
    TEXT_FORMATS,
    format_name,
)
from apps.projects.models import File, FilePurpose, FileStatus, Project
from apps.projects.validation import MAX_LABEL_CHARS  # the longest label a file may hold
from apps.registry.models import Model
from workers.runtime.specs import (
    FULL_LEARNING_RATE,
    VALIDATION_FRACTION,
    HyperparameterError,
    Hyperparameters,
    auto_learning_rate,
    estimate_steps,
    resolve_beta,
    resolve_hyperparameters,
    validation_size,
)

# Where a job's request keeps the base learning rate its hyperparameters were resolved against, so
# that a job reads back the multiplier it was given even if the defaults change later.
BASE_LEARNING_RATE_KEY = "base_learning_rate"
# A distillation's texts may carry labels too: they are then used only to score teacher and student.
DISTILLATION_FORMATS = (*TEXT_FORMATS, *CLASSIFICATION_FORMATS)
METHOD_FORMATS = {
    "classification": CLASSIFICATION_FORMATS,
    "supervised": SUPERVISED_FORMATS,
    "distillation": DISTILLATION_FORMATS,
    "dpo": PREFERENCE_FORMATS,
}
# The methods that may start from one of the organization's own fine-tuned models: DPO after SFT.
CONTINUED_METHODS = ("dpo",)
# The methods that may train LoRA adapters: a causal LM on replies, and a classifier (LoRA on its
# encoder, its head trained whole).
LORA_METHODS = ("supervised", "dpo", "classification")
KNOWN_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "suffix",
    "seed",
    "metadata",
    "method",
    "hyperparameters",
    "integrations",
    "max_cost",
    "devices",
    "eval_id",
}
# The methods whose training runs data-parallel on several devices (workers/runtime/distributed.py).
MULTI_DEVICE_METHODS = ("supervised", "classification")
# Matched with fullmatch: a pattern ending in `$` would also accept a trailing newline.
SUFFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SEED = 2**31 - 1
# method.supervised.lora: every option optional; the worker fills in defaults (r 8, alpha 16,
# dropout 0.05, the attention projections of the architecture) and checks module names on the model.
LORA_OPTIONS = ("r", "alpha", "dropout", "target_modules")
LORA_MAX_R = 256
LORA_MAX_ALPHA = 4096
LORA_MAX_TARGETS = 32
MODULE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")  # fullmatch, as SUFFIX_RE
# method.distillation: the teacher labels the texts of unlabeled_file with one of `labels`.
DISTILLATION_OPTIONS = ("teacher", "unlabeled_file", "labels", "temperature", "hyperparameters")
MAX_DISTILLATION_LABELS = 100
DEFAULT_TEMPERATURE = 2.0  # softens a classifier teacher's probabilities (Hinton et al., 2015)
MAX_TEMPERATURE = 20.0


@dataclass(frozen=True)
class Distillation:
    teacher: Model
    labels: list[str]  # sorted, as the student's label ids are
    temperature: float | None  # a classifier teacher's soft-target temperature; None for a generation teacher


@dataclass
class FineTuneRequest:
    model: Model
    training_file: File
    validation_file: File | None
    method: str
    hyperparameters: Hyperparameters
    requested_hyperparameters: dict[str, Any]
    suffix: str
    seed: int
    metadata: dict[str, str] | None
    max_cost: int | None
    body: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] | None = None  # method.supervised.lora as given (validated); None → full fine-tune
    distillation: Distillation | None = None
    beta: float | None = None  # DPO's, resolved ("auto" → 0.1); None for every other method
    devices: int = 1  # the extension `devices`, validated
    # The extension `eval_id`: what the job keeps of the eval that scores each epoch (apps.evals.checkpoints).
    checkpoint_eval: dict[str, Any] | None = None


# Resolves `eval_id` to what the job keeps of the eval; given by the callers above this layer.
CheckpointEval = Callable[[Project, Any], dict[str, Any]]


def parse(project: Project, body: Any, *, checkpoint_eval: CheckpointEval | None = None) -> FineTuneRequest:
    """The request, validated. `checkpoint_eval` resolves the extension `eval_id`, which only the
    callers that pass it accept."""
    if not isinstance(body, dict):
        raise ActionError("The request body must be a JSON object.")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise ActionError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    model = _model(project, body.get("model"))
    base = _catalog_base(model)  # its row holds the limits and methods; the model itself for a catalog one
    method, requested = _method(body, base)
    if base != model and method not in CONTINUED_METHODS:
        raise ActionError(
            f"A fine-tuned model can be fine-tuned further with method 'dpo' only, not '{method}'; "
            f"fine-tune {base.name} for '{method}'.",
            param="method.type",
        )
    lora = _lora(body, method)
    devices = _devices(body.get("devices"), method)
    scored = None
    if body.get("eval_id") is not None:
        if method != "supervised":
            raise ActionError(
                f"eval_id scores a supervised fine-tune of a generation model; this job's method is '{method}'.",
                param="eval_id",
            )
        if devices > 1:
            raise ActionError(
                "A fine-tune scored by an eval trains on one device: leave out devices or eval_id.",
                param="eval_id",
            )
        if checkpoint_eval is None:
            raise ActionError("eval_id is not accepted here.", param="eval_id")
        scored = checkpoint_eval(project, body["eval_id"])
    distillation = _distillation(project, body) if method == "distillation" else None
    training_id, training_param = _training_file_id(body, method)
    training = _file(project, training_id, training_param, method, required=True)
    validation = _file(project, body.get("validation_file"), "validation_file", method, required=False)
    assert training is not None
    if validation is not None and distillation is not None:
        raise ActionError(
            "validation_file is not used by distillation: teacher and student are compared on a held-out "
            "part of the unlabeled_file.",
            param="validation_file",
        )
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(MAX_SEED)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ActionError(f"seed must be an integer between 0 and {MAX_SEED}.", param="seed")
    n_examples = int((training.validation or {}).get("rows") or 0)
    try:
        beta = resolve_beta(requested) if method == "dpo" else None
        hp = resolve_hyperparameters(
            training_hyperparameters(requested, method, base),
            max(n_examples, 1),
            seed=seed,
            base_learning_rate=auto_learning_rate(lora=lora is not None),
        )
    except HyperparameterError as exc:
        raise ActionError(exc.message, param=exc.param) from None
    limit = base.limit("max_seq_length")
    if limit and hp.max_seq_length > limit:
        raise ActionError(
            f"max_seq_length must be at most {limit} for {base.name}.",
            param="hyperparameters.max_seq_length",
        )
    return FineTuneRequest(
        model=model,
        training_file=training,
        validation_file=validation,
        method=method,
        hyperparameters=hp,
        requested_hyperparameters=requested,
        suffix=_suffix(body.get("suffix")),
        seed=seed,
        metadata=parse_metadata(body.get("metadata")),
        max_cost=_max_cost(body.get("max_cost")),
        body=body | {"integrations": _integrations(body.get("integrations"))},
        lora=lora,
        distillation=distillation,
        beta=beta,
        checkpoint_eval=scored,
        devices=devices,
    )


# "auto" max_seq_length of a language-model fine-tune (docs/api.md, "Hyperparameters"): whole chats,
# tool definitions and calls included, fit (a chat offering one tool is ~300 tokens); batches are
# padded to their longest row, never to this, so short data costs nothing more.
LM_METHODS = ("supervised", "dpo")
LM_MAX_SEQ_LENGTH = 512


def training_hyperparameters(requested: dict[str, Any], method: str, base: Model) -> dict[str, Any]:
    """The requested hyperparameters that every trainer shares, with the language models' own
    "auto" max_seq_length (up to the base's limit). DPO's beta is resolved on its own
    (resolve_beta) and stored in the method's section; any other method refuses it as unknown."""
    shared = {key: value for key, value in requested.items() if key != "beta" or method != "dpo"}
    if method in LM_METHODS and shared.get("max_seq_length") in (None, "auto"):
        limit = base.limit("max_seq_length")
        shared["max_seq_length"] = min(LM_MAX_SEQ_LENGTH, limit) if limit else LM_MAX_SEQ_LENGTH
    return shared


def _model(project: Project, name: Any) -> Model:
    if not name or not isinstance(name, str):
        raise ActionError("Missing required parameter: 'model'.", param="model")
    model = Model.objects.visible_to(project.organization).filter(name=name).first()
    if model is None:
        raise ActionError(
            f"The model '{name}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
            status=404,
        )
    model.refuse_if_shut_down("model")
    if model.organization_id is not None:  # one of the organization's own fine-tunes
        return model  # _catalog_base checks whether it may be trained further
    if not model.is_fine_tunable:
        raise ActionError(
            f"Model '{name}' cannot be fine-tuned. Use a base model from GET /v1/models.", param="model"
        )
    return model


def _catalog_base(model: Model) -> Model:
    """The catalog model whose limits a job on `model` follows. An organization's own fine-tuned
    generation model may be trained further (the SFT-then-DPO flow): its catalog base must take
    fine-tunes."""
    if model.organization_id is None:
        return model
    base = model.catalog_base
    if model.task != "generation" or base is None or not base.is_fine_tunable:
        raise ActionError(
            f"Model '{model.name}' cannot be fine-tuned further: only a fine-tuned generation model whose base "
            "takes fine-tunes can be (with method 'dpo'). Use a base model from GET /v1/models.",
            param="model",
        )
    return base


def _method(body: dict[str, Any], model: Model) -> tuple[str, dict[str, Any]]:
    method = body.get("method")
    legacy = body.get("hyperparameters")
    if legacy is not None and not isinstance(legacy, dict):
        raise ActionError("hyperparameters must be an object.", param="hyperparameters")
    default = "classification" if model.task == "classification" else "supervised"
    if method is None:
        kind, requested = default, dict(legacy or {})
    else:
        if not isinstance(method, dict) or not isinstance(method.get("type"), str):
            raise ActionError("method must be an object with a 'type'.", param="method.type")
        kind = method["type"]
        section = method.get(kind) or {}
        if not isinstance(section, dict):
            raise ActionError(f"method.{kind} must be an object.", param=f"method.{kind}")
        requested = section.get("hyperparameters") or {}
        if not isinstance(requested, dict):
            raise ActionError("hyperparameters must be an object.", param=f"method.{kind}.hyperparameters")
        if legacy:
            raise ActionError(
                "Give hyperparameters in method, not also at the top level (deprecated).",
                param="hyperparameters",
            )
    allowed = model.limit("methods", [default])
    if kind not in allowed:
        if kind in ("classification", "supervised", "dpo", "reinforcement", "distillation"):
            raise ActionError(
                f"Method '{kind}' is not available for {model.name} (a {model.task} model); use: {', '.join(allowed)}.",
                param="method.type",
            )
        raise ActionError(f"Unknown method type '{kind}'.", param="method.type")
    if kind not in METHOD_FORMATS:
        raise ActionError(f"Method '{kind}' is not available yet.", param="method.type")
    return kind, dict(requested)


def _lora(body: dict[str, Any], method: str) -> dict[str, Any] | None:
    """method.<type>.lora, checked completely; distillation's student does not take it."""
    section = (body.get("method") or {}).get(method) or {}
    value = section.get("lora")
    param = f"method.{method}.lora"
    if value is None:
        return None
    if method not in LORA_METHODS:
        raise ActionError(
            f"LoRA is only available for methods 'supervised', 'dpo' and 'classification', not '{method}'.",
            param=param,
        )
    if not isinstance(value, dict):
        raise ActionError(
            "lora must be an object with any of r, alpha, dropout and target_modules.", param=param
        )
    for key in value:
        if key not in LORA_OPTIONS:
            raise ActionError(
                f"Unknown LoRA option '{key}'; expected one of: {', '.join(LORA_OPTIONS)}.",
                param=f"{param}.{key}",
            )
    r, alpha, dropout = value.get("r"), value.get("alpha"), value.get("dropout")
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= LORA_MAX_R):
        raise ActionError(f"lora.r must be an integer between 1 and {LORA_MAX_R}.", param=f"{param}.r")
    if alpha is not None and not (_is_number(alpha) and 0 < alpha <= LORA_MAX_ALPHA):
        raise ActionError(
            f"lora.alpha must be a number greater than 0 and at most {LORA_MAX_ALPHA}.",
            param=f"{param}.alpha",
        )
    if dropout is not None and not (_is_number(dropout) and 0 <= dropout < 1):
        raise ActionError(
            "lora.dropout must be a number from 0 up to (not including) 1.", param=f"{param}.dropout"
        )
    _lora_targets(value.get("target_modules"), f"{param}.target_modules")
    return dict(value)


def _lora_targets(targets: Any, param: str) -> None:
    if targets is None or targets == "all-linear":
        return
    if not isinstance(targets, list) or not 1 <= len(targets) <= LORA_MAX_TARGETS:
        raise ActionError(
            f'lora.target_modules must be "all-linear" or a list of 1 to {LORA_MAX_TARGETS} module names, '
            'e.g. ["q_proj", "v_proj"].',
            param=param,
        )
    for name in targets:
        if not isinstance(name, str) or not MODULE_NAME_RE.fullmatch(name):
            raise ActionError(
                f"lora.target_modules: {name!r} is not a module name (letters, digits, '_' and '.').",
                param=param,
            )
    if len(set(targets)) != len(targets):
        raise ActionError("lora.target_modules lists a module twice.", param=param)


def _training_file_id(body: dict[str, Any], method: str) -> tuple[Any, str]:
    """The file to train on and the parameter that named it. A distillation names its texts in
    method.distillation.unlabeled_file; training_file (which the SDK requires) may repeat it."""
    if method != "distillation":
        return body.get("training_file"), "training_file"
    section = (body.get("method") or {}).get("distillation") or {}
    unlabeled, training = section.get("unlabeled_file"), body.get("training_file")
    if unlabeled is not None and training is not None and unlabeled != training:
        raise ActionError(
            "training_file and method.distillation.unlabeled_file name different files; "
            "give the texts to label once, as unlabeled_file (training_file may repeat it).",
            param="method.distillation.unlabeled_file",
        )
    return (unlabeled if unlabeled is not None else training), "method.distillation.unlabeled_file"


def _distillation(project: Project, body: dict[str, Any]) -> Distillation:
    """method.distillation checked completely: a teacher that can label, and the labels it may give."""
    section = (body.get("method") or {}).get("distillation") or {}
    param = "method.distillation"
    for key in section:
        if key not in DISTILLATION_OPTIONS:
            raise ActionError(
                f"Unknown distillation option '{key}'; expected one of: {', '.join(DISTILLATION_OPTIONS)}.",
                param=f"{param}.{key}",
            )
    teacher = _teacher(project, section.get("teacher"))
    labels = _labels(section.get("labels"), f"{param}.labels")
    temperature = section.get("temperature")
    if teacher.task == "classification":
        if labels is not None and labels != sorted(teacher.labels):
            raise ActionError(
                f"labels must be the teacher's own labels ({', '.join(sorted(teacher.labels))}), "
                "or be left out: a classifier teacher can only give those.",
                param=f"{param}.labels",
            )
        if temperature is not None and not (_is_number(temperature) and 0 < temperature <= MAX_TEMPERATURE):
            raise ActionError(
                f"temperature must be a number greater than 0 and at most {MAX_TEMPERATURE:g}.",
                param=f"{param}.temperature",
            )
        return Distillation(
            teacher,
            sorted(teacher.labels),
            float(temperature) if temperature is not None else DEFAULT_TEMPERATURE,
        )
    if temperature is not None:
        raise ActionError(
            "temperature applies to a classifier teacher's probabilities; a generation teacher gives one "
            "label per text.",
            param=f"{param}.temperature",
        )
    if labels is None:
        raise ActionError(
            "Missing required parameter: 'method.distillation.labels' (the classes a generation teacher "
            "chooses from).",
            param=f"{param}.labels",
        )
    return Distillation(teacher, labels, None)


def _teacher(project: Project, name: Any) -> Model:
    param = "method.distillation.teacher"
    if not name or not isinstance(name, str):
        raise ActionError(f"Missing required parameter: '{param}'.", param=param)
    teacher = Model.objects.visible_to(project.organization).filter(name=name).first()
    if teacher is None:
        raise ActionError(
            f"The model '{name}' does not exist or you do not have access to it.",
            code="model_not_found",
            param=param,
            status=404,
        )
    teacher.refuse_if_shut_down(param)
    if not teacher.limit("servable", True):
        raise ActionError(
            f"'{name}' is a base model and cannot label texts; the teacher must be a fine-tuned classifier "
            "or a generation model.",
            param=param,
        )
    if teacher.task == "classification" and len(teacher.labels or []) < 2:
        raise ActionError(f"The classifier '{name}' has no labels to teach.", param=param)
    return teacher


def _labels(value: Any, param: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_DISTILLATION_LABELS:
        raise ActionError(
            f"labels must be a list of 2 to {MAX_DISTILLATION_LABELS} class names.", param=param
        )
    for label in value:
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL_CHARS or "\n" in label:
            raise ActionError(
                f"labels: {str(label)[:50]!r} is not a class name (a non-blank string of at most "
                f"{MAX_LABEL_CHARS} characters on one line).",
                param=param,
            )
    if len({label.strip().casefold() for label in value}) != len(value):
        raise ActionError(
            "labels lists a class twice (names are compared ignoring case and surrounding spaces).",
            param=param,
        )
    return sorted(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _file(project: Project, file_id: Any, param: str, method: str, *, required: bool) -> File | None:
    if file_id is None and not required:
        return None
    if not file_id or not isinstance(file_id, str):
        raise ActionError(f"Missing required parameter: '{param}'.", param=param)
    file = File.objects.filter(project=project, public_id=file_id).first()
    if file is None:
        raise ActionError(f"Invalid file id '{file_id}': no such file in this project.", param=param)
    if file.purpose != FilePurpose.FINE_TUNE:
        raise ActionError(
            f"File {file_id} has purpose '{file.purpose}'; upload it with purpose 'fine-tune'.", param=param
        )
    if file.status == FileStatus.ERROR:
        raise ActionError(
            f"File {file_id} failed validation ({file.status_details}). Fix it and upload it again.",
            param=param,
        )
    formats = METHOD_FORMATS[method]
    if file.status == FileStatus.PROCESSED and file.format not in formats:
        raise ActionError(
            f"File {file_id} is {format_name(file.format)}, but {method} needs "
            + " or ".join(format_name(f) for f in formats)
            + ".",
            param=param,
        )
    return file


def _suffix(value: Any) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not SUFFIX_RE.fullmatch(value):
        raise ActionError("suffix must be 1 to 64 letters, digits, '-' or '_'.", param="suffix")
    return value.lower()


def parse_metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's `metadata` (of fine-tuning jobs and batches): up to 16 pairs of short strings."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16:
        raise ActionError("metadata must be an object of at most 16 key/value pairs.", param="metadata")
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise ActionError(
                "metadata keys must be strings of at most 64 characters, values strings of at most 512.",
                param="metadata",
            )
    return dict(value)


WANDB_MESSAGE = (
    "Weights & Biases integrations are not available here; remove the entry. Every step's metrics are "
    "in the job's events and in its results file (result_files), which you can log to W&B yourself."
)


def _integrations(value: Any) -> list[Any] | None:
    """OpenAI's `integrations`: a list of {type, ...}, of which the one type OpenAI knows, "wandb", is
    not offered here. An empty list is accepted and stored as given, so a client that always sends
    one works; any entry is refused, saying why, rather than silently ignored."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ActionError("integrations must be a list.", param="integrations")
    if value:  # no entry can be served: name the first
        entry = value[0]
        if isinstance(entry, dict) and entry.get("type") == "wandb":
            raise ActionError(WANDB_MESSAGE, param="integrations[0]")
        raise ActionError(
            'integrations[0].type must be "wandb", and Weights & Biases integrations are not available here.',
            param="integrations[0].type",
        )
    return value


def _devices(value: Any, method: str) -> int:
    """`devices` (extension): how many GPUs of one worker train the job together; 1 by default."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ActionError("devices must be a whole number, 1 or more.", param="devices")
    if value > settings.TRAINING_MAX_DEVICES:
        raise ActionError(
            f"devices must be at most {settings.TRAINING_MAX_DEVICES}: "
            "the most devices one training worker here has.",
            param="devices",
        )
    if value > 1 and method not in MULTI_DEVICE_METHODS:
        raise ActionError(f"Method '{method}' trains on one device: devices must be 1.", param="devices")
    return value


def job_devices(job: Job) -> int:
    return int((job.request or {}).get("devices") or 1)


MAX_COST = 2**63 - 1  # the largest a PostgreSQL bigint (Job.max_cost) holds


def _max_cost(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ActionError("max_cost must be a whole number of micro-dollars, 0 or more.", param="max_cost")
    if value > MAX_COST:
        raise ActionError(f"max_cost must be at most {MAX_COST} micro-dollars.", param="max_cost")
    return value


def estimate(request: FineTuneRequest) -> dict[str, Any]:
    """What the job will cost and how long it will take, from the training file's report."""
    report = request.training_file.validation or {}
    rows = int(report.get("rows") or 0)
    mean_tokens = float(((report.get("stats") or {}).get("tokens") or {}).get("mean") or 0)
    hp = request.hyperparameters
    fraction = 0.0 if request.validation_file else VALIDATION_FRACTION
    n_train = rows - validation_size(rows, fraction)
    # Each example is truncated at max_seq_length (+2 special tokens); a DPO pair is two sequences,
    # each truncated there, and its report counts the prompt once and both replies, as its bill does.
    sequences = 2 if request.method == "dpo" else 1
    tokens_per_example = min(mean_tokens + 2, hp.max_seq_length * sequences)
    trained_tokens = int(n_train * tokens_per_example * hp.n_epochs)
    cost = cost_of(request.model.name, "trained_tokens", trained_tokens)
    body: dict[str, Any] = {
        "object": "fine_tuning.job.estimate",
        "model": request.model.name,
        "training_examples": n_train,
        "trained_tokens": trained_tokens,
        "steps": estimate_steps(rows, hp, fraction),
        "estimated_seconds": training_seconds(n_train, hp.n_epochs, hp.batch_size, request.model.task),
        "estimated_cost": cost,
        "currency": "usd_micros",
        "hyperparameters": hp.to_dict() | ({"beta": request.beta} if request.beta is not None else {}),
    }
    if request.distillation is not None:
        teacher_cost = _teacher_cost(request.distillation, rows, mean_tokens)
        body["teacher_cost"] = teacher_cost
        body["estimated_cost"] = cost = cost + teacher_cost
    if request.checkpoint_eval is not None:
        eval_cost = checkpoint_eval_cost(request.model.name, request.checkpoint_eval, hp)
        body["eval_cost"] = eval_cost
        body["estimated_cost"] = cost = cost + eval_cost
    body["allowed_to_proceed"] = request.max_cost is None or cost <= request.max_cost or rows == 0
    return body


def checkpoint_eval_cost(model_name: str, scored: dict[str, Any], hp: Hyperparameters) -> int:
    """The most the eval's answers can cost over the job: every epoch, every item with a prompt as
    long as a training sequence and an answer as long as allowed (workers/runners/checkpoint_eval.py)."""
    answers = len(scored["items"]) * hp.n_epochs
    return cost_of(model_name, "input_tokens", answers * hp.max_seq_length) + cost_of(
        model_name, "output_tokens", answers * int(scored["max_tokens"])
    )


def training_seconds(n_train: int, n_epochs: int, batch_size: int, task: str) -> int:
    """About how long training takes on one worker: each example's cost, at the worker's measured
    throughput, plus each optimizer step's own (the update of every weight, whatever the batch), which
    is most of the time when a small set trains at batch 1."""
    steps = math.ceil(max(n_train, 0) / max(batch_size, 1)) * n_epochs
    per_example = n_train * n_epochs / settings.WORKER_THROUGHPUT.get(task, 10.0)
    return round(per_example + steps * settings.WORKER_STEP_SECONDS.get(task, 0.0))


# Past this many jobs ahead, the queue's wait is extrapolated from them rather than summed.
WAIT_SAMPLE = 500


def queue_wait_seconds(job: Job) -> int | None:
    """About how long a queued fine-tune waits before it starts: the time left of the fine-tunes
    running now, plus the estimates of those queued ahead of it, shared among as many workers as
    are busy (at least one). None when the job is not queued."""
    if job.status != JobStatus.QUEUED or job.queued_at is None:
        return None
    columns = (
        "progress__eta_seconds",
        "hyperparameters__n_epochs",
        "hyperparameters__batch_size",
        "training_file__validation__rows",
        "validation_file_id",
        "model__task",
    )
    fine_tunes = Job.objects.filter(kind=JobKind.FINE_TUNE)
    running = list(fine_tunes.filter(status=JobStatus.RUNNING).values_list(*columns)[:WAIT_SAMPLE])
    ahead = fine_tunes.filter(status=JobStatus.QUEUED, queued_at__lt=job.queued_at)
    sample = list(ahead.order_by("queued_at").values_list(*columns)[:WAIT_SAMPLE])
    queued_work = sum(_expected_seconds(row) for row in sample)
    if len(sample) == WAIT_SAMPLE:
        queued_work = queued_work * ahead.count() // WAIT_SAMPLE
    running_work = sum(_remaining_seconds(row) for row in running)
    return round((running_work + queued_work) / max(len(running), 1))


def job_seconds(job: Job) -> int | None:
    """About how long a fine-tune trains once it starts; None before its file is validated."""
    rows = int(((job.training_file.validation or {}) if job.training_file else {}).get("rows") or 0)
    hp = job.hyperparameters or {}
    n_epochs = hp.get("n_epochs")
    if not rows or not isinstance(n_epochs, int):
        return None
    return _expected_seconds(
        (
            None,
            n_epochs,
            hp.get("batch_size"),
            rows,
            job.validation_file_id,
            job.model.task if job.model else "",
        )
    )


def _expected_seconds(row: tuple[Any, ...]) -> int:
    _, n_epochs, batch_size, rows, validation_file_id, task = row
    if not all(isinstance(value, int) for value in (rows, n_epochs, batch_size)):
        return 0  # hyperparameters not resolved yet (the file is still being validated)
    n_train = rows - (0 if validation_file_id else validation_size(rows, VALIDATION_FRACTION))
    return training_seconds(n_train, n_epochs, batch_size, task or "")


def _remaining_seconds(row: tuple[Any, ...]) -> int:
    eta = row[0]
    if isinstance(eta, int | float) and not isinstance(eta, bool) and eta >= 0:
        return int(eta)
    return _expected_seconds(row)  # not measured yet: the whole job is ahead


def _teacher_cost(distillation: Distillation, rows: int, mean_tokens: float) -> int:
    """What labelling `rows` texts of about `mean_tokens` tokens will cost at the teacher's prices."""
    from workers.runtime.distill import answer_max_tokens, prompt_overhead_tokens

    name, labels = distillation.teacher.name, distillation.labels
    if distillation.teacher.task == "classification":
        return cost_of(name, "classified_texts", rows) + cost_of(
            name, "input_tokens", int(rows * (mean_tokens + 2))
        )
    prompt = int(rows * (mean_tokens + prompt_overhead_tokens(labels)))
    # Answers are usually a label's few tokens; count half the allowed length.
    answer = rows * max(1, answer_max_tokens(labels) // 2)
    return cost_of(name, "input_tokens", prompt) + cost_of(name, "output_tokens", answer)


def submit(
    request: FineTuneRequest, *, project: Project, api_key: ApiKey | None = None, user: User | None = None
) -> Job:
    """Creates the job. It waits in `validating_files` while a file's validation is still
    running, and is queued on the gpu queue after the commit otherwise."""
    from django.db import transaction

    from apps.jobs import admission

    with transaction.atomic():
        # Under the organization's lock: two concurrent submissions cannot both take the last place
        # or the last of the spend cap.
        organization = admission.lock_organization(project.organization_id)
        if _files_changed(request):
            request = parse(project, request.body)  # a file's report came in: "auto" values follow it
        files = [f for f in (request.training_file, request.validation_file) if f is not None]
        pending = any(f.status == FileStatus.UPLOADED for f in files)
        estimated = None if pending else estimate(request)["estimated_cost"]
        subscription = quotas.check_quota(organization)
        _check_models(subscription, request.model, request.distillation)
        admission.check_fine_tune_concurrency(subscription, request.devices)
        # The job holds its estimate of the cap (capped by max_cost) and asks for more if it needs it.
        wanted = estimated or 0
        if request.max_cost is not None:
            wanted = min(wanted, request.max_cost)
        reserved = admission.reserve(subscription, wanted)
        return _create(
            request,
            project=project,
            api_key=api_key,
            user=user,
            pending=pending,
            estimated=estimated,
            reserved=reserved,
        )


def _files_changed(request: FineTuneRequest) -> bool:
    """Whether a file's validation ended since `request` read it. Its validator looked for the jobs
    waiting on it then, before this one existed: a job created as waiting now would wait for ever.
    The files' rows are locked from here on, so a validation ending now waits for this job's commit
    and then finds it."""
    files = [f for f in (request.training_file, request.validation_file) if f is not None]
    now = dict(
        File.objects.select_for_update().filter(pk__in=[f.pk for f in files]).values_list("pk", "status")
    )
    return any(now.get(f.pk) != f.status for f in files)


def _check_models(subscription: Subscription, model: Model, distillation: Distillation | None) -> None:
    quotas.check_model(subscription, model.name)
    if distillation is not None:
        quotas.check_model(subscription, distillation.teacher.name, param="method.distillation.teacher")


def resume(job: Job) -> bool:
    """A paused job goes back to the queue after the checks a new job passes: entitlement and the
    spend cap, the plan's models (it may have changed since) and a free place among the running
    fine-tunes (a paused job holds none). False when the job is not paused."""
    from django.db import transaction

    from apps.jobs import admission

    if job.model is None:
        raise ActionError(f"The base model of {job.public_id} no longer exists; start a new job.", param="id")
    with transaction.atomic():
        organization = admission.lock_organization(job.organization_id)
        subscription = quotas.check_quota(organization)
        _check_models(subscription, job.model, stored_distillation(job))
        admission.check_fine_tune_concurrency(subscription, job_devices(job))
        remaining = max((job.estimated_cost or 0) - job.billed_cost, 0)
        if job.max_cost is not None:
            remaining = min(remaining, max(job.max_cost - job.billed_cost, 0))
        return actions.resume(job, reserved_cost=admission.reserve(subscription, remaining))


def _create(
    request: FineTuneRequest,
    *,
    project: Project,
    api_key: ApiKey | None,
    user: User | None,
    pending: bool,
    estimated: int | None,
    reserved: int,
) -> Job:
    body = {k: v for k, v in request.body.items() if k in KNOWN_FIELDS}
    body["suffix"] = request.suffix
    return actions.create_job(
        kind=JobKind.FINE_TUNE,
        project=project,
        model=request.model,
        model_name=request.model.name,
        request={
            **body,
            BASE_LEARNING_RATE_KEY: auto_learning_rate(lora=request.lora is not None),
            "method": {
                "type": request.method,
                request.method: {"hyperparameters": request.requested_hyperparameters}
                | ({"lora": request.lora} if request.lora is not None else {})
                | ({"beta": request.beta} if request.beta is not None else {})
                | (_distillation_section(request) if request.distillation is not None else {}),
            },
        }
        | ({"eval": request.checkpoint_eval} if request.checkpoint_eval is not None else {}),
        api_key=api_key,
        user=user,
        status=JobStatus.VALIDATING_FILES if pending else JobStatus.QUEUED,
        message="Created fine-tuning job.",
        training_file=request.training_file,
        validation_file=request.validation_file,
        hyperparameters=request.hyperparameters.to_dict(),
        seed=request.seed,
        metadata=request.metadata,
        max_cost=request.max_cost,
        estimated_cost=estimated,
        reserved_cost=reserved,
    )


def _distillation_section(request: FineTuneRequest) -> dict[str, Any]:
    """What the worker needs, resolved: the labels even when a classifier teacher implied them."""
    distillation = request.distillation
    assert distillation is not None
    return {
        "teacher": distillation.teacher.name,
        "unlabeled_file": request.training_file.public_id,
        "labels": distillation.labels,
        "temperature": distillation.temperature,
    }


def stored_distillation(job: Job) -> Distillation | None:
    """A job's distillation as submitted (for the estimate once its file is validated)."""
    section = ((job.request or {}).get("method") or {}).get("distillation")
    if not section or (job.request or {}).get("method", {}).get("type") != "distillation":
        return None
    teacher = Model.objects.visible_to(job.organization).filter(name=section.get("teacher")).first()
    if teacher is None:
        return None
    return Distillation(teacher, list(section.get("labels") or []), section.get("temperature"))


def on_file_validated(file: File) -> None:
    """Moves the jobs that waited for this file on: queued, or failed if the file is bad."""
    waiting = Job.objects.filter(status=JobStatus.VALIDATING_FILES, project=file.project).filter(
        models_q_file(file)
    )
    for job in waiting:
        files = [f for f in (job.training_file, job.validation_file) if f is not None]
        bad = next((f for f in files if f.status == FileStatus.ERROR), None)
        if bad is not None:
            param = "training_file" if bad == job.training_file else "validation_file"
            actions.fail_before_start(
                job, "invalid_file", f"File {bad.public_id} failed validation: {bad.status_details}", param
            )
        elif all(f.status == FileStatus.PROCESSED for f in files):
            method = (job.request.get("method") or {}).get("type", "classification")
            wrong = next((f for f in files if f.format not in METHOD_FORMATS.get(method, ())), None)
            if wrong is not None:
                actions.fail_before_start(
                    job,
                    "invalid_file",
                    f"File {wrong.public_id} is {format_name(wrong.format)}, which {method} cannot use.",
                    "training_file" if wrong == job.training_file else "validation_file",
                )
            else:
                actions.release_validated(job, _resolved_fields(job))


def base_learning_rate(job: Job) -> float:
    """The rate a job's `learning_rate_multiplier` multiplies, as stored when the job was created (a
    LoRA adapter's or a full fine-tune's). A job created before the rate was stored trained on 5e-5,
    whatever its method."""
    stored = (job.request or {}).get(BASE_LEARNING_RATE_KEY)
    if isinstance(stored, int | float) and not isinstance(stored, bool) and stored > 0:
        return float(stored)
    return FULL_LEARNING_RATE


def _resolved_fields(job: Job) -> dict[str, Any]:
    """Now that the file's size is known, "auto" hyperparameters and the estimate are final."""
    method = (job.request.get("method") or {}).get("type", "classification")
    requested = ((job.request.get("method") or {}).get(method) or {}).get("hyperparameters") or (
        job.request.get("hyperparameters") or {}
    )
    assert job.training_file is not None and job.model is not None
    rows = int((job.training_file.validation or {}).get("rows") or 1)
    hp = resolve_hyperparameters(
        training_hyperparameters(requested, method, _catalog_base(job.model)),
        rows,
        seed=job.seed,
        base_learning_rate=base_learning_rate(job),
    )
    request = FineTuneRequest(
        model=job.model,
        training_file=job.training_file,
        validation_file=job.validation_file,
        method=method,
        hyperparameters=hp,
        requested_hyperparameters=requested,
        suffix="",
        seed=job.seed or 0,
        metadata=None,
        max_cost=job.max_cost,
        distillation=stored_distillation(job),
    )
    return {"hyperparameters": hp.to_dict(), "estimated_cost": estimate(request)["estimated_cost"]}


def models_q_file(file: File) -> Any:
    from django.db.models import Q

    return Q(training_file=file) | Q(validation_file=file)
