"""The new fine-tune form: its fields, the API request body its values make, and every error at
once, beside its field and in the words the form uses ("Epochs", not `n_epochs`).

The API stops at a request's first error; the form collects them all by checking each field on
its own first, then asking the API's own `fine_tuning.parse` again with each field it refused set
back to its default, until it finds nothing more to refuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import QueryDict

from apps.core.errors import ActionError
from apps.core.money import usd
from apps.jobs import fine_tuning
from apps.projects.formats import (
    CHAT_JSONL,
    CLASSIFICATION_FORMATS,
    PROMPT_COMPLETION_JSONL,
    TEXT_FORMATS,
)
from apps.projects.models import File, Project
from apps.registry.models import Model, Task
from workers.runtime.specs import (
    AUTO,
    FULL_LEARNING_RATE,
    INTEGER_HYPERPARAMETERS,
    MAX_SEED,
    RANGES,
    VALIDATION_FRACTION,
    HyperparameterError,
    Hyperparameters,
    resolve_hyperparameters,
    validation_size,
)

# OpenAI's minimum for a training file; below it, and with labels this rare, the form asks first.
MIN_EXAMPLES = 10
RARE_LABEL_EXAMPLES = 2
MAX_TEMPERATURE = fine_tuning.MAX_TEMPERATURE


@dataclass(frozen=True)
class Field:
    """A number field of the form: its label, default and the bounds of its number input."""

    name: str
    label: str
    initial: str  # "" is "auto": the placeholder says so
    help: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    integer: bool = False

    @property
    def step(self) -> str:
        return "1" if self.integer else "any"

    @property
    def placeholder(self) -> str:
        return AUTO if self.initial == "" else ""


def _ranged(name: str, label: str, initial: str, help: str) -> Field:
    low, high = RANGES[name]
    return Field(name, label, initial, help, low, high, integer=name in INTEGER_HYPERPARAMETERS)


HYPERPARAMETER_FIELDS = (
    _ranged("n_epochs", "Epochs", "", "Passes over the training set, 1–50; auto picks 1–10 by size."),
    _ranged(
        "batch_size",
        "Batch size",
        "",
        "Examples per optimizer step, 1–256; auto leaves about 16 steps an epoch or more (1 under 32 examples, up to 64).",
    ),
    Field(
        "learning_rate_multiplier",
        "Learning rate multiplier",
        "",
        f"Scales the base learning rate ({FULL_LEARNING_RATE:g}). auto = 1; lower is steadier, higher learns faster.",
        minimum=0,
    ),
    _ranged(
        "warmup_ratio",
        "Warmup ratio",
        f"{Hyperparameters.warmup_ratio:g}",
        "Share of the steps spent ramping the learning rate up, 0–0.5.",
    ),
    _ranged(
        "weight_decay",
        "Weight decay",
        f"{Hyperparameters.weight_decay:g}",
        "AdamW weight decay, 0–1: a little keeps the weights small and the model general.",
    ),
    _ranged(
        "max_seq_length",
        "Max sequence length",
        str(Hyperparameters.max_seq_length),
        "Tokens kept per example, 8–512 (and at most the model's limit); longer texts are cut.",
    ),
    _ranged(
        "early_stopping_patience",
        "Early stopping patience",
        str(Hyperparameters.early_stopping_patience),
        "Stop after this many evaluations without a better validation loss; 0 turns it off.",
    ),
    _ranged("seed", "Seed", "", "The same seed, data and settings give the same model. auto picks one."),
)
HYPERPARAMETERS = tuple(f.name for f in HYPERPARAMETER_FIELDS if f.name != "seed")
# A teacher turns the job into a distillation: it labels the training file's texts for the student.
DISTILLATION_FIELDS = ("teacher", "labels", "temperature")
FIELD_NAMES = (
    "training_file",
    "validation_file",
    "model",
    "suffix",
    *(f.name for f in HYPERPARAMETER_FIELDS),
    "max_cost",
    *DISTILLATION_FIELDS,
)
INITIAL = {f.name: f.initial for f in HYPERPARAMETER_FIELDS}
LABELS = {
    "training_file": "Training file",
    "validation_file": "Validation file",
    "model": "Base model",
    "suffix": "Suffix",
    "max_cost": "Max cost",
    "teacher": "Teacher",
    "labels": "Labels",
    "temperature": "Temperature",
    **{f.name: f.label for f in HYPERPARAMETER_FIELDS},
}
# The fields the API cannot do without: a refusal there ends the search for more errors.
REQUIRED = {"training_file": "Choose a training file.", "model": "Choose a base model."}
MISSING = {
    **REQUIRED,
    "teacher": "Choose a teacher.",
    "labels": "Enter the labels a generation teacher chooses from, e.g. billing, bug, praise.",
}
# What each kind of file holds, in the words of the form.
HOLDS = {
    **dict.fromkeys(CLASSIFICATION_FORMATS, "labelled texts"),
    **dict.fromkeys(TEXT_FORMATS, "unlabelled texts"),
    CHAT_JSONL: "chat conversations",
    PROMPT_COMPLETION_JSONL: "prompts and completions",
}
KINDS = {
    Task.CLASSIFICATION: ("a classifier", "classifiers"),
    Task.GENERATION: ("a text generator", "text generators"),
}


# --- Values → the API's request body -------------------------------------------------------------
NUMBER_FIELDS = (*(f.name for f in HYPERPARAMETER_FIELDS), "max_cost", "temperature")
# What a number field holds when the browser could not read it as a number (the page's script
# names such fields in `unreadable`; the browser itself sends them empty).
UNREADABLE = "?"


def form_values(data: QueryDict) -> dict[str, str]:
    values = {name: str(data.get(name, INITIAL.get(name, ""))).strip() for name in FIELD_NAMES}
    for name in data.getlist("unreadable"):
        if name in NUMBER_FIELDS:
            values[name] = UNREADABLE
    return values


def shown_value(text: str) -> str:
    """What a number input shows: "auto" is its empty value (a number input cannot hold words)."""
    return "" if is_auto(text) else text


def is_auto(text: str) -> bool:
    return text == "" or text.lower() == AUTO


def number(text: str) -> int | float | str:
    """ "3" → 3, "0.5" → 0.5; anything else stays text, so the API's own check refuses it."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def micros(dollars: str) -> int:
    try:
        amount = Decimal(dollars.replace("$", "").replace(",", "").strip())
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or amount < 0:
        raise ActionError("Max cost must be an amount in dollars, e.g. 5 or 2.50.", param="max_cost")
    # Compared in dollars, before multiplying: "1e999999" is a finite Decimal whose micro-dollars
    # pass the Decimal context's largest exponent (an Overflow error).
    if amount > Decimal(fine_tuning.MAX_COST) / 1_000_000:
        raise ActionError(f"Max cost must be at most {usd(fine_tuning.MAX_COST)}.", param="max_cost")
    return int(amount * 1_000_000)


def request_body(project: Project, values: dict[str, str]) -> dict[str, Any]:
    """The body a `client.fine_tuning.jobs.create(...)` call with the same choices would send."""
    body: dict[str, Any] = {
        "model": values["model"] or None,
        "training_file": values["training_file"] or None,
    }
    if values["validation_file"]:
        body["validation_file"] = values["validation_file"]
    if values["suffix"]:
        body["suffix"] = values["suffix"]
    if not is_auto(values["seed"]):
        body["seed"] = number(values["seed"])
    if values["max_cost"]:
        body["max_cost"] = micros(values["max_cost"])
    requested = {name: number(values[name]) for name in HYPERPARAMETERS if not is_auto(values[name])}
    model = Model.objects.visible_to(project.organization).filter(name=values["model"]).first()
    if values["teacher"]:
        body["method"] = {
            "type": "distillation",
            "distillation": _distillation(values) | {"hyperparameters": requested},
        }
    elif model is not None:
        method = "classification" if model.task == Task.CLASSIFICATION else "supervised"
        body["method"] = {"type": method, method: {"hyperparameters": requested}}
    return body


def _distillation(values: dict[str, str]) -> dict[str, Any]:
    section: dict[str, Any] = {"teacher": values["teacher"]}
    if values["labels"]:  # one per line or comma-separated, as typed
        section["labels"] = [
            label.strip() for label in values["labels"].replace("\n", ",").split(",") if label.strip()
        ]
    if values["temperature"]:
        section["temperature"] = number(values["temperature"])
    return section


# --- Every error at once -------------------------------------------------------------------------
def field_for(param: str | None) -> str:
    """The form field an ActionError's `param` names ("form" when none matches)."""
    name = (param or "").removeprefix("hyperparameters.").removeprefix("method.distillation.")
    if name == "learning_rate":
        name = "learning_rate_multiplier"
    elif name == "unlabeled_file":
        name = "training_file"
    elif name.startswith("method."):
        name = "model"  # the method follows from the base model chosen
    return name if name in FIELD_NAMES else "form"


def in_form_words(message: str, field: str) -> str:
    """An API message as the form says it: the field's label where the API names its parameter."""
    label = LABELS.get(field)
    if label is None:
        return message
    api_name = "unlabeled_file" if field == "training_file" else field
    if message.startswith("Missing required parameter: "):
        return MISSING.get(field, f"{label} is required.")
    if message.startswith(api_name + " "):
        return label + message[len(api_name) :]
    return message


def form_errors(
    project: Project, values: dict[str, str], *, required: bool = True
) -> tuple[dict[str, str], fine_tuning.FineTuneRequest | None]:
    """Every error of the form, by field, and the parsed request when there is none. With
    `required` off (the live estimate while the form is being filled in), an empty required field
    is not yet an error."""
    errors = {name: message for name, message in REQUIRED.items() if required and not values[name]}
    for number_field in HYPERPARAMETER_FIELDS:
        message = _number_error(number_field, values[number_field.name])
        if message:
            errors[number_field.name] = message
    for name, check in (
        ("suffix", _suffix_error),
        ("max_cost", _max_cost_error),
        ("temperature", _temperature_error),
    ):
        message = check(values[name])
        if message:
            errors[name] = message
    if not values["training_file"] or not values["model"]:
        return errors, None
    mismatch = _mismatch(project, values)
    if mismatch:
        field, message = mismatch
        errors[field] = message
        return errors, None
    trial = {**values, **{name: INITIAL.get(name, "") for name in errors}}
    for _ in FIELD_NAMES:  # each pass sets one more refused field back to its default
        try:
            parsed = fine_tuning.parse(project, request_body(project, trial))
        except ActionError as exc:
            field = field_for(exc.param)
            errors.setdefault(field, in_form_words(exc.message, field))
            if field in REQUIRED or field == "form" or trial[field] == INITIAL.get(field, ""):
                return errors, None
            trial[field] = INITIAL.get(field, "")
        else:
            return errors, (parsed if not errors else None)
    return errors, None


def _number_error(field: Field, text: str) -> str:
    if is_auto(text):
        return ""
    value = number(text)
    try:
        if field.name == "seed":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
                raise HyperparameterError("seed", "")
        else:
            resolve_hyperparameters({field.name: value}, 1)
    except HyperparameterError:
        or_auto = ", or empty for auto" if field.initial == "" else ""
        if field.maximum is None:
            return f"{field.label} must be a number greater than 0{or_auto}."
        kind = "a whole number" if field.integer else "a number"
        return (
            f"{field.label} must be {kind} from {_shown(field.minimum)} to {_shown(field.maximum)}{or_auto}."
        )
    return ""


def _shown(bound: int | float | None) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _suffix_error(text: str) -> str:
    if text and not fine_tuning.SUFFIX_RE.fullmatch(text):
        return "Suffix must be 1 to 64 letters, digits, - or _ (no spaces)."
    return ""


def _max_cost_error(text: str) -> str:
    if not text:
        return ""
    try:
        micros(text)
    except ActionError as exc:
        return exc.message
    return ""


def _temperature_error(text: str) -> str:
    if not text:
        return ""
    value = number(text)
    if isinstance(value, str) or not 0 < value <= MAX_TEMPERATURE:
        return f"Temperature must be a number greater than 0 and at most {MAX_TEMPERATURE:g}."
    return ""


def _mismatch(project: Project, values: dict[str, str]) -> tuple[str, str] | None:
    """A training file the chosen base (or teacher) cannot learn from, said in plain words: what the
    file holds, and which base fits it."""
    file = File.objects.filter(project=project, public_id=values["training_file"]).first()
    model = Model.objects.visible_to(project.organization).filter(name=values["model"]).first()
    if file is None or model is None or file.format not in HOLDS:
        return None  # the API's own check words these
    method = (
        "distillation"
        if values["teacher"]
        else ("classification" if model.task == Task.CLASSIFICATION else "supervised")
    )
    if file.format in fine_tuning.METHOD_FORMATS[method]:
        return None
    holds = f"{file.filename} holds {HOLDS[file.format]}"
    if method == "distillation":
        return "training_file", f"{holds}: a teacher labels texts, so pick a file of texts, or no teacher."
    if file.format in TEXT_FORMATS:
        return (
            "model",
            f"{holds}: choose a teacher below to label them, or upload a file with a label column.",
        )
    return "model", f"{holds}: pick {_bases_for(file.format)}."


def _bases_for(file_format: str) -> str:
    methods = [
        method
        for method in ("classification", "supervised")
        if file_format in fine_tuning.METHOD_FORMATS[method]
    ]
    bases = [
        m
        for m in Model.objects.catalog().in_service().filter(is_fine_tunable=True).order_by("name")
        if any(method in m.limit("methods", [method]) for method in methods)
    ]
    if not bases:
        return "a base model that fits it"
    one, many = KINDS.get(Task(bases[0].task), ("a model", "models"))
    names = " or ".join(base.name for base in bases)
    return f"{names} ({one if len(bases) == 1 else many})"


# --- Too little data: asked before starting ------------------------------------------------------
def small_data_reason(parsed: fine_tuning.FineTuneRequest) -> str:
    """Why this training file is too small to learn much from, in plain words; "" when it is not.
    The API takes such a file (as OpenAI's does, from its minimum up); the form asks first."""
    file = parsed.training_file
    report = file.validation or {}
    rows = int(report.get("rows") or 0)
    reasons = []
    if rows < MIN_EXAMPLES:
        scores = ""
        if parsed.validation_file is None:
            held_out = validation_size(rows, VALIDATION_FRACTION)
            scores = f", and its scores would rest on {_examples(held_out)} held out"
        reasons.append(
            f"{file.filename} has only {_examples(rows)}: a model learns little from fewer than "
            f"{MIN_EXAMPLES}{scores}."
        )
    labels = (report.get("stats") or {}).get("labels") or {}
    rare = sorted(
        ((label, count) for label, count in labels.items() if count <= RARE_LABEL_EXAMPLES),
        key=lambda item: (item[1], item[0]),  # the rarest first
    )
    if rare and parsed.distillation is None:
        shown = ", ".join(f'"{label}" ({_examples(count)})' for label, count in rare[:5])
        more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
        them = "them" if len(rare) > 1 else "it"
        reasons.append(
            f"Too few examples of {'these labels' if len(rare) > 1 else 'a label'}: {shown}{more}. "
            f"The model can hardly learn {them}, and the validation split may not test {them}."
        )
    if not reasons:
        return ""
    return " ".join(reasons) + " Add examples (dozens per label help), or start anyway."


def _examples(count: int) -> str:
    return f"{count} example{'' if count == 1 else 's'}"
