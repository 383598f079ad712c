"""Serving LoRA fine-tunes on one loaded base (docs/architecture.md, "Models and weights").

A LoRA fine-tune's artifact holds its merged weights (what export gives) and, in `adapter/`, the
adapter alone in peft's format. A worker that already holds the base in its cache serves the
fine-tune as a *view* of it: a shallow copy of the base's module tree in which each adapted Linear
is wrapped to add its low-rank update, `W x + (B A x) · scaling`. Every weight of the base is
shared, so a fine-tune costs the cache its adapter's bytes (about 2 MB for SmolLM2-135M at r=8),
not a second model, and views of the same base are independent modules: no "active adapter"
state is switched, so two views can run at once.

A LoRA classifier's adapter also holds the modules it trained whole (peft's `modules_to_save`: its
head, and a pooler its base lacked). Its view (`classifier_view`) is the fine-tune's own module
tree, built without weights, whose encoder tensors are the base's (shared, as above) and whose
head is the adapter's.

peft is not imported here: serving reads the adapter's safetensors and config itself. Features
the view does not implement (DoRA, per-module ranks, adapted embeddings, trained biases, and
modules_to_save on a generation model) raise `UnsupportedAdapter`, and the worker serves the
merged weights instead.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# peft names an adapted module's tensors "base_model.model.<module>.lora_A.weight".
_PREFIX = "base_model.model."
_SUFFIXES = {".lora_A.weight": 0, ".lora_B.weight": 1}


class UnsupportedAdapter(ValueError):
    """An adapter the view cannot serve exactly: the merged weights are served instead."""


@dataclass(frozen=True)
class AdapterWeights:
    scaling: float
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A [r, in], B [out, r])
    # The tensors of the modules trained whole (modules_to_save), by the model's own parameter names.
    saved: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        tensors = [t for pair in self.pairs.values() for t in pair] + list(self.saved.values())
        return sum(t.numel() * t.element_size() for t in tensors)


def trained_whole(module_name: str, whole: Collection[str]) -> bool:
    """peft's rule for modules_to_save: a module, or one it is inside, whose name ends with an
    entry ("pre_classifier" ends with "classifier")."""
    parts = module_name.split(".")
    return any(".".join(parts[:i]).endswith(entry) for i in range(1, len(parts) + 1) for entry in whole)


def has_adapter(model_dir: Path) -> bool:
    return (model_dir / ADAPTER_DIR / ADAPTER_CONFIG).is_file()


def read_adapter(directory: Path) -> AdapterWeights:
    """The A and B matrices of each adapted module, and the update's scale (alpha / r, or
    alpha / sqrt(r) for rsLoRA), from a peft LoRA adapter directory."""
    from safetensors.torch import load_file

    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    unsupported = [
        what
        for what, present in (
            (f"peft_type {config.get('peft_type')}", config.get("peft_type") != "LORA"),
            ("DoRA", bool(config.get("use_dora"))),
            ("per-module ranks", bool(config.get("rank_pattern") or config.get("alpha_pattern"))),
            ("trained biases", config.get("bias", "none") != "none"),
            ("LoRA biases", bool(config.get("lora_bias"))),
            ("layer replication", bool(config.get("layer_replication"))),
            ("trainable tokens", bool(config.get("trainable_token_indices"))),
            ("activated LoRA", bool(config.get("alora_invocation_tokens"))),
            ("adapted parameters", bool(config.get("target_parameters"))),
        )
        if present
    ]
    if unsupported:
        raise UnsupportedAdapter(f"adapter uses {', '.join(unsupported)}")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    whole = list(config.get("modules_to_save") or [])
    halves: dict[str, list[torch.Tensor | None]] = {}
    saved: dict[str, torch.Tensor] = {}
    for key, tensor in load_file(str(directory / ADAPTER_WEIGHTS)).items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        owner = key[len(_PREFIX) :].rpartition(".")[0]  # the module a tensor belongs to
        if key.startswith(_PREFIX) and suffix is None and trained_whole(owner, whole):
            saved[key[len(_PREFIX) :]] = tensor
            continue
        if suffix is None or not key.startswith(_PREFIX):
            raise UnsupportedAdapter(f"adapter tensor {key!r} is not a LoRA A or B matrix")
        name = key[len(_PREFIX) : -len(suffix)]
        halves.setdefault(name, [None, None])[_SUFFIXES[suffix]] = tensor
    pairs = {}
    for name, (a, b) in halves.items():
        if a is None or b is None:
            raise UnsupportedAdapter(f"adapter module {name!r} lacks its A or B matrix")
        pairs[name] = (a, b)
    if not pairs:
        raise UnsupportedAdapter("adapter has no LoRA matrices")
    return AdapterWeights(scaling=scaling, pairs=pairs, saved=saved)


class LoraLinear(torch.nn.Module):
    """A base layer (nn.Linear, a quantized Linear, GPT-2's Conv1D) plus its low-rank update, as
    peft computes it unmerged in eval mode. The matrices are plain attributes, not parameters:
    the view's state_dict and byte count stay the base's."""

    def __init__(self, base: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.a, self.b, self.scaling = a, b, scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.a), self.b) * self.scaling


def _branch(module: torch.nn.Module) -> torch.nn.Module:
    # A shallow copy with its own table of children: replacing a child of the copy leaves the
    # original untouched, and every parameter and buffer stays shared.
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def adapted_view(
    model: torch.nn.Module, adapter: AdapterWeights, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """`model` with `adapter` applied, sharing all of its weights; `model` itself is not changed.
    `dtype` is what the base's layers take in and give out (float32 for quantized Linears)."""
    root = _branch(model)
    branches: dict[str, torch.nn.Module] = {"": root}
    for name, (a, b) in adapter.pairs.items():
        parent, path = root, name.split(".")
        for depth, part in enumerate(path[:-1], start=1):
            prefix = ".".join(path[:depth])
            if prefix not in branches:
                child = parent._modules.get(part)
                if child is None:
                    raise UnsupportedAdapter(f"the base has no module {prefix!r}")
                branches[prefix] = parent._modules[part] = _branch(child)
            parent = branches[prefix]
        leaf = parent._modules.get(path[-1])
        if leaf is None:
            raise UnsupportedAdapter(f"the base has no module {name!r}")
        parent._modules[path[-1]] = LoraLinear(
            leaf, a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype), adapter.scaling
        )
    return root


def classifier_view(
    base: torch.nn.Module, adapter: AdapterWeights, config: Any, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """The LoRA classifier described by `config` (its labels, its head's shape) and `adapter`, on the
    encoder of the loaded `base` (a bare encoder, or a classifier whose head is ignored): its
    module tree is built on the meta device, so it allocates nothing, and then takes the base
    encoder's tensors themselves and the adapter's head. Raises UnsupportedAdapter when a weight
    of the fine-tune is in neither (its base is not this base)."""
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        model: Any = AutoModelForSequenceClassification.from_config(config)
    prefix = model.base_model_prefix
    encoder: Any = getattr(base, "base_model", base)  # a PreTrainedModel's bare encoder
    tensors = {f"{prefix}.{name}": tensor for name, tensor in encoder.state_dict().items()}
    tensors |= {name: tensor.to(device=device, dtype=dtype) for name, tensor in adapter.saved.items()}
    for name, wanted in model.state_dict().items():
        found = tensors.get(name)
        if found is None or found.shape != wanted.shape:
            shape = "missing" if found is None else f"of shape {list(found.shape)}"
            raise UnsupportedAdapter(
                f"the base does not fit the fine-tune ({name!r} is {shape}, not {list(wanted.shape)})"
            )
    model.load_state_dict(tensors, strict=False, assign=True)
    # Buffers outside the state dict (position ids) are still meta: the base's own are the same.
    base_buffers = {f"{prefix}.{name}": buffer for name, buffer in encoder.named_buffers()}
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            if name not in base_buffers:
                raise UnsupportedAdapter(f"the base has no buffer {name!r}")
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = base_buffers[name]
    view = adapted_view(model, AdapterWeights(adapter.scaling, adapter.pairs), device, dtype)
    view.eval()
    return view
