"""Typed inputs and outputs of the ML runtime.

The web process imports this module to resolve hyperparameters and estimate cost, so it must
stay free of torch, transformers and Django: stdlib only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# About four characters of English text make a token for BPE tokenizers. The one estimate used
# wherever tokens are counted before a tokenizer has seen the text: rate limits, cost estimates,
# upload statistics, the proxy's usage when the upstream sends none.
CHARS_PER_TOKEN = 4


def approx_tokens(chars: int) -> int:
    """Tokens in a text of `chars` characters, by CHARS_PER_TOKEN (rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)


# ---------------------------------------------------------------------------------------------
# Training: hyperparameters
# ---------------------------------------------------------------------------------------------

AUTO = "auto"
MAX_SEED = 2**31 - 1
# The share of the training file held out for validation when no validation file is given.
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_seq_length: int = 128
    early_stopping_patience: int = 3  # evaluations without a better valid_loss; 0 turns it off
    seed: int = 42
    max_grad_norm: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class HyperparameterError(ValueError):
    """A requested hyperparameter is unknown, of the wrong type or out of range."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param  # e.g. "hyperparameters.n_epochs", for the API error's `param`
        self.message = message


def auto_n_epochs(n_examples: int) -> int:
    # Small sets need more passes to converge; big ones overfit or just cost more.
    if n_examples < 100:
        return 10
    if n_examples < 1_000:
        return 5
    if n_examples < 10_000:
        return 3
    if n_examples < 100_000:
        return 2
    return 1


# An epoch takes at least this many optimizer steps where the dataset allows it. A small set cut
# into a few big batches takes too few steps to learn anything: 18 chats at batch 8 were 2 steps an
# epoch, and SmolLM2 did not learn their one fact in 3 epochs; at batch 4, 2 or 1 (4 to 16 steps an
# epoch) it did. 16 keeps a margin, and gives batch 1 to the few-dozen-example sets OpenAI's users
# bring, as OpenAI's own "auto" does.
MIN_STEPS_PER_EPOCH = 16


# (examples below, the largest auto batch): big sets afford big batches.
BATCH_CAPS = ((500, 8), (5_000, 16), (50_000, 32), (math.inf, 64))


def auto_batch_size(n_examples: int) -> int:
    """The largest power of two that still gives MIN_STEPS_PER_EPOCH steps an epoch (1 for a set under
    32 examples), up to a cap that grows with the set: big sets afford big batches, which take fewer,
    steadier steps and keep an accelerator busy."""
    cap = next(size for below, size in BATCH_CAPS if n_examples < below)
    fit = max(1, n_examples // MIN_STEPS_PER_EPOCH)
    return min(cap, 1 << (fit.bit_length() - 1))


# The learning rate "auto" (and learning_rate_multiplier 1) stands for. A full fine-tune moves every
# weight and wants a small rate. A LoRA adapter starts at zero with far fewer weights and needs a
# much larger one: on the 18 chats above at batch 1 (48 steps), SmolLM2's default adapter (r 8) had
# not learned the fact at 2e-4 or 5e-4, and had at 1e-3; the full fine-tune had at 5e-5.
FULL_LEARNING_RATE = 5e-5
LORA_LEARNING_RATE = 1e-3


def auto_learning_rate(*, lora: bool) -> float:
    return LORA_LEARNING_RATE if lora else FULL_LEARNING_RATE


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int subclass


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_auto(value: Any) -> bool:
    return value is None or value == AUTO


def _int_param(requested: Mapping[str, Any], name: str, low: int, high: int, default: int) -> int:
    value: Any = requested.get(name)  # Any: JSON could hold anything; checked below
    if _is_auto(value):
        return default
    if not _is_int(value) or not low <= value <= high:
        raise HyperparameterError(
            f"hyperparameters.{name}", f'{name} must be an integer between {low} and {high} or "auto"'
        )
    return int(value)


def _range_param(requested: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    value: Any = requested.get(name)  # Any: JSON could hold anything; checked below
    if _is_auto(value):
        return default
    if not _is_number(value) or not low <= value <= high:
        raise HyperparameterError(
            f"hyperparameters.{name}", f'{name} must be a number between {low:g} and {high:g} or "auto"'
        )
    return float(value)


def _positive_param(requested: Mapping[str, Any], name: str) -> float | None:
    value: Any = requested.get(name)  # Any: JSON could hold anything; checked below
    if _is_auto(value):
        return None
    if not _is_number(value) or value <= 0:
        raise HyperparameterError(
            f"hyperparameters.{name}", f'{name} must be a number greater than 0 or "auto"'
        )
    return float(value)


def _learning_rate(requested: Mapping[str, Any], base_learning_rate: float) -> float:
    multiplier = _positive_param(requested, "learning_rate_multiplier")
    absolute = _positive_param(requested, "learning_rate")
    if multiplier is not None and absolute is not None:
        raise HyperparameterError(
            "hyperparameters.learning_rate",
            "give either learning_rate or learning_rate_multiplier, not both",
        )
    if absolute is not None:
        return absolute
    return base_learning_rate * (multiplier if multiplier is not None else 1.0)


# The allowed range of each numeric hyperparameter (learning rates need only be above 0); the
# dashboard's form reads them too, for its number inputs and its messages.
RANGES: dict[str, tuple[int | float, int | float]] = {
    "n_epochs": (1, 50),
    "batch_size": (1, 256),
    "warmup_ratio": (0.0, 0.5),
    "weight_decay": (0.0, 1.0),
    "max_seq_length": (8, 512),
    "early_stopping_patience": (0, 20),
    "seed": (0, MAX_SEED),
}
INTEGER_HYPERPARAMETERS = ("n_epochs", "batch_size", "max_seq_length", "early_stopping_patience", "seed")


def _int_range(requested: Mapping[str, Any], name: str, default: int) -> int:
    low, high = RANGES[name]
    return _int_param(requested, name, int(low), int(high), default)


def _float_range(requested: Mapping[str, Any], name: str, default: float) -> float:
    low, high = RANGES[name]
    return _range_param(requested, name, low, high, default)


KNOWN_HYPERPARAMETERS = (
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "learning_rate",
    "warmup_ratio",
    "weight_decay",
    "max_seq_length",
    "early_stopping_patience",
    "seed",
    "max_grad_norm",
)


def resolve_hyperparameters(
    requested: Mapping[str, Any],
    n_examples: int,
    *,
    base_learning_rate: float = FULL_LEARNING_RATE,
    seed: int | None = None,
) -> Hyperparameters:
    """Turn OpenAI-style requested hyperparameters into concrete values.

    A missing key, None or "auto" picks a value from the dataset size. `seed` is the
    fallback when the request names none (e.g. one derived from the job id).
    `resolve_hyperparameters(hp.to_dict(), n) == hp` holds, so stored values re-resolve.
    """
    for name in requested:
        if name not in KNOWN_HYPERPARAMETERS:
            raise HyperparameterError(
                f"hyperparameters.{name}",
                f'unknown hyperparameter "{name}"; expected one of: {", ".join(KNOWN_HYPERPARAMETERS)}',
            )
    default_seed = Hyperparameters.seed if seed is None else seed
    max_grad_norm = _positive_param(requested, "max_grad_norm")
    return Hyperparameters(
        n_epochs=_int_range(requested, "n_epochs", auto_n_epochs(n_examples)),
        batch_size=_int_range(requested, "batch_size", auto_batch_size(n_examples)),
        learning_rate=_learning_rate(requested, base_learning_rate),
        warmup_ratio=_float_range(requested, "warmup_ratio", Hyperparameters.warmup_ratio),
        weight_decay=_float_range(requested, "weight_decay", Hyperparameters.weight_decay),
        max_seq_length=_int_range(requested, "max_seq_length", Hyperparameters.max_seq_length),
        early_stopping_patience=_int_range(
            requested, "early_stopping_patience", Hyperparameters.early_stopping_patience
        ),
        seed=_int_range(requested, "seed", default_seed),
        max_grad_norm=Hyperparameters.max_grad_norm if max_grad_norm is None else max_grad_norm,
    )


# DPO's beta: how far the trained model may move from the reference (its starting weights) to
# prefer the preferred replies; "auto" is the value of the DPO paper (Rafailov et al., 2023) and
# of OpenAI. Above MAX_BETA the loss saturates after a step or two and the pairs teach nothing.
DEFAULT_BETA = 0.1
MAX_BETA = 10.0


def resolve_beta(requested: Mapping[str, Any]) -> float:
    """method.dpo.hyperparameters.beta: a number greater than 0 and at most MAX_BETA, or "auto"."""
    value: Any = requested.get("beta")  # Any: JSON could hold anything; checked below
    if _is_auto(value):
        return DEFAULT_BETA
    if not _is_number(value) or not 0 < value <= MAX_BETA:
        raise HyperparameterError(
            "hyperparameters.beta", f'beta must be a number greater than 0 and at most {MAX_BETA:g} or "auto"'
        )
    return float(value)


def validation_size(n_examples: int, validation_fraction: float) -> int:
    """How many examples a split of this fraction holds out (the training side keeps at least one)."""
    if validation_fraction <= 0 or n_examples < 2:
        return 0
    return min(n_examples - 1, max(1, round(n_examples * validation_fraction)))


def estimate_steps(n_examples: int, hp: Hyperparameters, validation_fraction: float) -> int:
    """Total optimizer steps; pass validation_fraction=0 when a validation file is given."""
    n_train = n_examples - validation_size(n_examples, validation_fraction)
    return math.ceil(max(n_train, 0) / hp.batch_size) * hp.n_epochs


# ---------------------------------------------------------------------------------------------
# Training: spec, progress, result
# ---------------------------------------------------------------------------------------------


class TrainingDataError(ValueError):
    """The customer's training data or training settings cannot be trained on: a bad row, a missing
    column or field, too few labels, an empty file, a LoRA option or module the model does not
    have. The message is written for the customer, and the job fails with it as
    `invalid_training_data`; any other exception from a trainer is a fault of ours.

    A ValueError, so that code which catches ValueError around the readers keeps working."""


# What the worker's SERVE_QUANTIZATION may say: the weight format of generators served on a CPU
# (see models.resolve_quantization).
QUANTIZATIONS = ("auto", "fp16", "int8", "none")
# What TrainSpec.precision (and the worker's TRAINING_PRECISION) may say; see training.resolve_precision.
PRECISIONS = ("auto", "bfloat16", "float32")
# What TrainSpec.sharding (and the worker's TRAINING_SHARDING) may say: how the ranks of a fine-tune
# on several devices share the model; see distributed.choose_sharding.
SHARDINGS = ("auto", "ddp", "fsdp")


@dataclass(frozen=True)
class TrainSpec:
    job_id: str
    base_model_dir: str  # local transformers directory (encoder or classifier)
    training_file: str  # local path; CSV with header or JSONL
    output_dir: str  # where the final model is saved
    hyperparameters: Hyperparameters
    validation_file: str | None = None  # None → stratified split of training_file
    text_field: str = "text"
    label_field: str = "label"
    checkpoint_dir: str | None = None  # default output_dir/checkpoints
    checkpoint_every_steps: int = 0  # 0 → one checkpoint per epoch; N → also every N steps
    resume_from: str | None = None  # a checkpoint directory written by a previous attempt
    device: str = "auto"  # "auto" → cuda if available else cpu
    # The forward pass's dtype: "auto" (bf16 where the hardware has it), "bfloat16" or "float32";
    # weights and optimizer state stay float32 either way. The worker's TRAINING_PRECISION.
    precision: str = "auto"
    # On several devices: "ddp" (each rank holds the whole model), "fsdp" (each holds a shard), or
    # "auto" (fsdp where the training state would not fit one device). The worker's TRAINING_SHARDING.
    sharding: str = "auto"
    task: str = "classification"
    # Supervised fine-tuning of causal LMs (workers/runtime/sft.py):
    lora: dict[str, Any] | None = None  # {r, alpha, dropout, target_modules}, each optional; None → full
    messages_field: str = "messages"  # chat rows
    prompt_field: str = "prompt"  # prompt/completion rows
    completion_field: str = "completion"
    # Distillation (a student classifier learning from a teacher's labels):
    labels: tuple[str, ...] = ()  # the label set, even labels the teacher never gave; () → the data's
    soft_label_field: str = ""  # a field of {label: probability} to learn instead of the hard label
    distill_temperature: float = 1.0  # the temperature those probabilities were softened with
    # DPO (workers/runtime/dpo.py): the strength of the pull towards the reference model.
    beta: float = DEFAULT_BETA

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ProgressEvent:
    kind: str  # "step" | "eval" | "checkpoint" | "log"
    step: int
    total_steps: int
    epoch: int  # 1-based
    # step: {"train_loss", "learning_rate"}; eval: {"valid_loss", "accuracy", "f1_macro", ...}
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    checkpoint_dir: str | None = None
    trained_tokens: int = 0  # cumulative non-padding tokens processed so far


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    epoch: int
    path: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class TrainResult:
    status: str  # "completed" (early stopping too: metrics["early_stopped"]) | "stopped"
    model_dir: str  # the saved final model: the best checkpoint by validation loss
    labels: list[str]
    metrics: dict[str, Any]  # final validation metrics of the saved model
    steps: int  # optimizer steps done in total, including those before a resume
    trained_tokens: int  # non-padding tokens processed, all epochs
    checkpoints: list[CheckpointInfo]


# ---------------------------------------------------------------------------------------------
# Inference (appended below by the inference runtime)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifyRequest:
    texts: tuple[str, ...]
    top_k: int | None = None  # None → every label, sorted by score, highest first
    max_seq_length: int = 512  # longer texts are truncated (and counted) at this many tokens
    batch_size: int = 32


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class ClassifyResult:
    results: list[list[LabelScore]]  # one list per input text, in input order
    input_tokens: int  # non-padding tokens the model read (billable)


@dataclass(frozen=True)
class GenerateRequest:
    messages: tuple[dict[str, Any], ...] | None = None  # chat: [{"role", "content"}], chat template applied
    prompt: str | None = None  # legacy completion: raw text (exactly one of messages/prompt)
    max_tokens: int = 256
    temperature: float = 1.0  # 0 → greedy
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()  # at most 4; the text is cut right before the first one
    seed: int | None = None  # same seed → same text; choice i samples from a seed derived from (seed, i)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20 alternatives per token when logprobs is on
    tools: tuple[dict[str, Any], ...] | None = None  # OpenAI function tools, rendered by the chat template
    grammar: str | None = None  # an llguidance grammar the text must follow (workers.runtime.constrain)


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[tuple[str, float]]


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens reached)
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class GenerateResult:
    choices: list[Choice]
    prompt_tokens: int  # counted once, however many choices
    completion_tokens: int  # summed over choices, EOS included


@dataclass(frozen=True)
class EmbedRequest:
    texts: tuple[str, ...]
    batch_size: int = 32


@dataclass(frozen=True)
class EmbedResult:
    vectors: list[list[float]]  # one unit-length vector per text, in input order
    input_tokens: int  # tokens the model read, special tokens included (billable)
