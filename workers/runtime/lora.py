"""LoRA fine-tuning (via peft), for causal LMs and classifiers: the settings checked against the
model, the adapters attached (fresh, or a checkpoint's for a resume), and the weights merged for
saving.

Only the adapter weights train, plus, for a classifier, the modules the base did not have (its new
head, and a pooler the checkpoint lacked), which are trained whole and saved with the adapter:
peft's `modules_to_save`. A checkpoint directory, and the final model, is a standard
transformers model at its top level (adapters merged into the weights, `save_servable`), so each is
servable and exportable as it is; `adapter/` (ADAPTER_DIR) holds the adapter alone, which is what a
resume loads and what a serve worker applies to the base it already holds
(workers/runtime/adapters.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers.pytorch_utils import Conv1D

from workers.runtime.adapters import ADAPTER_CONFIG, ADAPTER_DIR, trained_whole
from workers.runtime.specs import TrainingDataError

LORA_OPTIONS = ("r", "alpha", "dropout", "target_modules")
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05}
# Attention projections to adapt when the request names none and peft knows no default for the
# architecture: the first group whose names all occur in the model wins.
FALLBACK_LORA_TARGETS = (("q_proj", "v_proj"), ("c_attn",), ("query_key_value",), ("qkv_proj",), ("Wqkv",))


def _names(module_name: str, target: str) -> bool:
    # peft's rule: a target names a module by its full name or by a dotted suffix of it.
    return module_name == target or module_name.endswith(f".{target}")


def _has_module(model: torch.nn.Module, target: str) -> bool:
    return any(_names(name, target) for name, _ in model.named_modules())


def default_lora_targets(model: Any) -> list[str]:
    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type)
    for group in ([tuple(known)] if known else []) + list(FALLBACK_LORA_TARGETS):
        if all(_has_module(model, name) for name in group):
            return list(group)
    raise TrainingDataError(
        "no default LoRA target modules for this architecture; name them in lora.target_modules"
    )


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


# The heads peft trains whole for a classifier (task SEQ_CLS) without being told.
CLASSIFIER_HEADS = ("classifier", "score")
# The layers an adapter can sit on, of those our models have.
ADAPTABLE = (torch.nn.Linear, Conv1D, torch.nn.Embedding)


def resolve_lora(
    requested: Mapping[str, Any] | None, model: Any, whole: Collection[str] = ()
) -> dict[str, Any] | None:
    """The LoRA settings with defaults filled in and target modules checked against `model`: each
    must name a layer an adapter can sit on, outside the modules trained `whole` (a classifier's
    head). None means full fine-tuning."""
    if requested is None:
        return None
    unknown = sorted(set(requested) - set(LORA_OPTIONS))
    if unknown:
        raise TrainingDataError(
            f"unknown LoRA option {unknown[0]!r}; expected one of: {', '.join(LORA_OPTIONS)}"
        )
    settings = {**LORA_DEFAULTS, **{key: value for key, value in requested.items() if value is not None}}
    if not (isinstance(settings["r"], int) and _positive_number(settings["r"])):
        raise TrainingDataError("lora.r must be a positive integer")
    if not _positive_number(settings["alpha"]):
        raise TrainingDataError("lora.alpha must be a number greater than 0")
    dropout = settings["dropout"]
    if not (isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise TrainingDataError("lora.dropout must be a number from 0 up to (not including) 1")
    targets = settings.get("target_modules") or default_lora_targets(model)
    if targets != "all-linear":
        targets = list(targets) if isinstance(targets, list | tuple) else [targets]
        adaptable = [
            name
            for name, module in model.named_modules()
            if isinstance(module, ADAPTABLE) and not trained_whole(name, whole)
        ]
        for target in targets:
            if isinstance(target, str) and any(_names(name, target) for name in adaptable):
                continue
            linear = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear | Conv1D) and not trained_whole(name, whole)
                }
            )
            if isinstance(target, str) and _has_module(model, target):
                problem = f"{target!r} names no layer an adapter can sit on (a linear layer outside the modules trained whole)"
            else:
                problem = f"this model has no module named {target!r}"
            raise TrainingDataError(
                f"lora.target_modules: {problem}; its linear layers are: {', '.join(linear)}"
            )
    return {**settings, "target_modules": targets}


def fresh_modules(missing_keys: Collection[Any]) -> list[str]:
    """The modules that own the weights a model did not find in its checkpoint (from transformers'
    loading info: `missing_keys` and `mismatched_keys`, names or (name, shapes) tuples). They start
    random, so a LoRA run trains them whole rather than keep a random layer frozen."""
    names = {(key[0] if isinstance(key, tuple) else key).rsplit(".", 1)[0] for key in missing_keys}
    return sorted(names)


def attach_lora(
    model: Any,
    lora: dict[str, Any] | None,
    resume_from: str | None,
    *,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
) -> Any:
    """`model` itself for full fine-tuning; else wrapped with fresh adapters, or the adapters of
    the checkpoint being resumed (trainable, with their exact weights). A classifier
    (`task_type="SEQ_CLS"`) also trains its head, which peft finds by name, and `modules_to_save`."""
    if lora is None:
        return model
    if resume_from:
        return PeftModel.from_pretrained(model, Path(resume_from) / ADAPTER_DIR, is_trainable=True)
    targets = lora["target_modules"]
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=targets,
        bias="none",
        task_type=task_type,
        modules_to_save=modules_to_save or None,
        # GPT-2's Conv1D stores its weight transposed: peft must know, or it warns and guesses.
        fan_in_fan_out=any(
            isinstance(module, Conv1D) and (targets == "all-linear" or any(_names(name, t) for t in targets))
            for name, module in model.named_modules()
        ),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # a target resolve_lora let through and peft still refuses
        raise TrainingDataError(f"lora.target_modules: {exc}") from exc


def causal_lm_of(model: Any) -> Any:
    """The transformers model inside (a PeftModel injects its adapters into it in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


@torch.no_grad()
def merged_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """What merge_and_unload would save, computed without touching the model being trained:
    each adapted weight plus its delta (B·A·alpha/r), and each module trained whole, under the base
    model's own names. (merge_adapter/unmerge_adapter would round the weights and break exact
    resumes.)"""
    lm: Any = model.get_base_model()  # Any: peft types it as a bare nn.Module
    deltas: dict[str, torch.Tensor] = {}
    for name, module in lm.named_modules():
        if isinstance(module, LoraLayer):
            layer: Any = module  # each concrete LoRA layer (Linear, Conv1D, ...) has get_delta_weight
            deltas[f"{name}.base_layer.weight"] = layer.get_delta_weight(layer.active_adapters[0])
    merged = {}
    for key, tensor in lm.state_dict().items():
        if ".lora_" in key or ".original_module." in key:  # the frozen copy of a module trained whole
            continue
        name = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        merged[name] = tensor + deltas[key] if key in deltas else tensor
    return merged


def save_servable(model: Any, directory: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """A standard transformers directory (safetensors): adapters merged into the weights; `weights`
    instead of the model's own when given (an FSDP run's, gathered whole)."""
    if isinstance(model, PeftModel):
        lm: Any = model.get_base_model()  # Any: peft types it as a bare nn.Module
        lm.save_pretrained(directory, state_dict=merged_state_dict(model))
    else:
        model.save_pretrained(directory, state_dict=weights)


def save_adapter(model: PeftModel, directory: Path) -> None:
    """The adapter alone, in peft's format, without the training worker's path to the base: the
    directory is exported to customers. peft writes the path into the config's
    `base_model_name_or_path` (blanked; nothing reads it) and into a model card (not kept)."""
    model.save_pretrained(str(directory))
    (directory / "README.md").unlink(missing_ok=True)
    config_path = directory / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": None}, indent=2, sort_keys=True))
