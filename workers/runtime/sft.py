"""Supervised fine-tuning of causal LMs: `train_lm(spec, on_progress, should_stop) -> TrainResult`.

The same phases and the same contract as `training.train`: seed/device → data → model →
optimizer/schedule → loop → save; the data order of an epoch depends only on (seed, epoch) and
every checkpoint holds what a resumed attempt needs, so a paused and resumed run ends with the
same weights as an uninterrupted one.

What the model learns from (every other token is context only, label IGNORE_INDEX):
- chat rows (`{"messages": [...]}`), formatted with the model's chat template: the assistant
  replies, each with its end-of-turn token, except replies marked `"weight": 0`;
- prompt/completion rows: the completion and an EOS token.
`trained_tokens` counts every non-padding token the model read, context and supervised alike
(what OpenAI bills); `supervised_tokens` in the metrics counts the tokens the loss learned from.

Optional LoRA (`spec.lora`, via peft) trains only adapter weights. A checkpoint directory is a
standard transformers model at its top level (adapters merged into the weights), so every kept
checkpoint is servable as it is; `adapter/` holds the adapter alone and `trainer_state.pt` the
optimizer, loop position and RNG for a resume. The final model is merged the same way.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from jinja2.exceptions import TemplateError
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from workers.runtime.data import TRAINING_FILE, VALIDATION_FILE, epoch_batches, eval_batches, iter_records
from workers.runtime.specs import (
    VALIDATION_FRACTION,
    CheckpointInfo,
    Hyperparameters,
    ProgressEvent,
    TrainResult,
    TrainSpec,
    validation_size,
)
from workers.runtime.training import (
    FORMAT_VERSION,
    MODEL_CARD_FILE,
    TRAINER_STATE_FILE,
    LoopState,
    RunBase,
    autocast_for,
    build_optimizer,
    checkpoint_path,
    deterministic_algorithms,
    effective_max_length,
    load_tokenizer,
    lr_at,
    read_trainer_state,
    resolve_device,
    save_final_model,
    saved_message,
)

METHOD = "supervised"
TRAINER = "sft"  # marks this trainer's checkpoints; a classifier's cannot be resumed here
IGNORE_INDEX = -100  # the label of a token the loss skips (PyTorch's and transformers' convention)
ADAPTER_DIR = "adapter"
LORA_OPTIONS = ("r", "alpha", "dropout", "target_modules")
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05}
# Attention projections to adapt when the request names none and peft knows no default for the
# architecture: the first group whose names all occur in the model wins.
FALLBACK_LORA_TARGETS = (("q_proj", "v_proj"), ("c_attn",), ("query_key_value",), ("qkv_proj",), ("Wqkv",))
# Config fields that transform logits after the LM head (Gemma-2 softcapping, Cohere's and
# Granite's scaling): models with any of them run their own forward, not our head-only shortcut.
HEAD_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMSplit:
    input_ids: list[list[int]]
    labels: list[list[int]]  # the token id where the loss learns it, IGNORE_INDEX where it is context

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


@dataclass(frozen=True)
class LMData:
    train: LMSplit
    valid: LMSplit
    skipped: int  # examples left with nothing to learn (all weight 0, or truncated away)


@dataclass(frozen=True)
class LMBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    # (row, position) of every token whose next token is learned: found here on the CPU, because
    # a boolean mask on the GPU would sync to learn how many there are
    learned_rows: torch.Tensor
    learned_positions: torch.Tensor
    n_tokens: int  # non-padding tokens, known without a device sync
    n_supervised: int  # tokens the loss predicts (labels past the first position)

    def to(self, device: torch.device) -> LMBatch:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=True)

        return LMBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.labels),
            move(self.learned_rows),
            move(self.learned_positions),
            self.n_tokens,
            self.n_supervised,
        )


def render_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any, *, add_generation_prompt: bool = False
) -> str:
    text: str = tokenizer.apply_chat_template(
        list(messages), tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return text


def _template_message(message: Mapping[str, Any]) -> dict[str, Any]:
    turn = {key: value for key, value in message.items() if key != "weight"}
    if turn.get("content") is None:  # a reply that only calls tools: OpenAI's format allows null
        turn["content"] = ""
    return turn


def chat_spans(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any = None
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template renders it, and the character spans to learn from.

    A span starts where the template's generation prompt for that reply ends (what the model sees
    when serving) and runs to the end of the reply's turn, end-of-turn token included and the
    whitespace between turns excluded. Rendering prefixes, rather than searching for the reply's
    text, stays right when the same text occurs earlier and for any template that renders turn
    by turn (system prompts it injects, BOS tokens, role headers).
    """
    turns = [_template_message(message) for message in messages]
    text = render_chat(tokenizer, turns, tools)
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        before = render_chat(tokenizer, turns[:index], tools, add_generation_prompt=True)
        through = render_chat(tokenizer, turns[: index + 1], tools).rstrip()
        if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
            raise ValueError(
                "the model's chat template does not render a conversation turn by turn, "
                "so the assistant replies cannot be located"
            )
        spans.append((len(before), len(through)))
    return text, spans


def encode_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any, max_length: int
) -> tuple[list[int], list[int]]:
    text, spans = chat_spans(tokenizer, messages, tools)
    # The template wrote the special tokens (BOS too, if any): adding them again would double them.
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length
    )
    ids = list(encoded["input_ids"])
    # A token is learned when it starts inside a span; zero-width tokens (no text) never are.
    labels = [
        token if end > start and any(low <= start < high for low, high in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


def encode_completion(
    tokenizer: Any, prompt: str, completion: str, max_length: int
) -> tuple[list[int], list[int]]:
    # Tokenized apart, the prompt gets exactly the ids /v1/completions feeds the model for it.
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    completion_ids = [*tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
    return ids, labels


def encode_record(
    record: dict[str, Any], where: str, spec: TrainSpec, tokenizer: Any, max_length: int
) -> tuple[list[int], list[int]]:
    messages = record.get(spec.messages_field)
    if isinstance(messages, list):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"{where}: chat examples need a chat template and this base model has none; "
                "use prompt/completion rows"
            )
        try:
            return encode_chat(tokenizer, messages, record.get("tools"), max_length)
        except (TemplateError, TypeError, KeyError, ValueError) as error:  # what a template raises
            raise ValueError(f"{where}: the chat template failed on this conversation ({error})") from None
    prompt, completion = record.get(spec.prompt_field), record.get(spec.completion_field)
    if isinstance(prompt, str) and isinstance(completion, str):
        return encode_completion(tokenizer, prompt, completion, max_length)
    raise ValueError(
        f'{where}: expected "{spec.messages_field}" (a list of messages) or '
        f'"{spec.prompt_field}" and "{spec.completion_field}" (strings)'
    )


def read_records(path: str, source: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(where, record) pairs; `where` names the file as `source` (by default its name) and the line."""
    source = source or Path(path).name
    records = [(f"{source}, line {number}", record) for number, record in iter_records(path, source=source)]
    if not records:
        raise ValueError(f"{source}: no examples")
    return records


def split_records(
    records: Sequence[tuple[str, dict[str, Any]]], seed: int
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """(train, valid): a seeded random 10% held out; both keep file order."""
    n_valid = validation_size(len(records), VALIDATION_FRACTION)
    held_out = set(random.Random(seed).sample(range(len(records)), n_valid))  # local: global RNG untouched
    train = [record for index, record in enumerate(records) if index not in held_out]
    valid = [record for index, record in enumerate(records) if index in held_out]
    return train, valid


def encode_split(
    records: Sequence[tuple[str, dict[str, Any]]], spec: TrainSpec, tokenizer: Any, max_length: int
) -> tuple[LMSplit, int]:
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    skipped = 0
    for where, record in records:
        ids, row_labels = encode_record(record, where, spec, tokenizer, max_length)
        if all(label == IGNORE_INDEX for label in row_labels[1:]):  # nothing predicts the first token
            skipped += 1
            continue
        input_ids.append(ids)
        labels.append(row_labels)
    return LMSplit(input_ids, labels), skipped


def prepare_lm_data(spec: TrainSpec, tokenizer: Any, max_length: int, seed: int) -> LMData:
    train_records = read_records(spec.training_file, TRAINING_FILE)
    if spec.validation_file:
        valid_records = read_records(spec.validation_file, VALIDATION_FILE)
    else:
        train_records, valid_records = split_records(train_records, seed)
    train, skipped_train = encode_split(train_records, spec, tokenizer, max_length)
    valid, skipped_valid = encode_split(valid_records, spec, tokenizer, max_length)
    if not len(train):
        raise ValueError(
            "no training example has a token to learn from within max_seq_length "
            f"({max_length}): every assistant reply is weight 0 or cut off"
        )
    return LMData(train, valid, skipped_train + skipped_valid)


def collate_lm(split: LMSplit, indices: Sequence[int], pad_id: int, pad_to_multiple_of: int = 1) -> LMBatch:
    """Pad the rows to the longest one in this batch (rounded up to pad_to_multiple_of)."""
    rows = [split.input_ids[i] for i in indices]
    width = math.ceil(max(len(row) for row in rows) / pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, index in enumerate(indices):
        row, row_labels = split.input_ids[index], split.labels[index]
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        labels[r, : len(row)] = torch.tensor(row_labels, dtype=torch.long)
        attention_mask[r, : len(row)] = 1
    learned_rows, learned_positions = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    n_tokens = sum(len(row) for row in rows)
    return LMBatch(
        input_ids, attention_mask, labels, learned_rows, learned_positions, n_tokens, len(learned_rows)
    )


# --- model: loading and LoRA -------------------------------------------------------------------


def load_lm_tokenizer(model_dir: str) -> Any:
    tokenizer = load_tokenizer(model_dir)  # sets a pad token on bases that lack one
    if not tokenizer.is_fast:
        raise ValueError("supervised fine-tuning needs a fast tokenizer (tokenizer.json) to locate replies")
    if tokenizer.eos_token_id is None:
        raise ValueError("the base model's tokenizer has no EOS token, so it cannot learn where to stop")
    return tokenizer


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
    raise ValueError("no default LoRA target modules for this architecture; name them in lora.target_modules")


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def resolve_lora(requested: Mapping[str, Any] | None, model: Any) -> dict[str, Any] | None:
    """The LoRA settings with defaults filled in and target modules checked against `model`;
    None means full fine-tuning."""
    if requested is None:
        return None
    unknown = sorted(set(requested) - set(LORA_OPTIONS))
    if unknown:
        raise ValueError(f"unknown LoRA option {unknown[0]!r}; expected one of: {', '.join(LORA_OPTIONS)}")
    settings = {**LORA_DEFAULTS, **{key: value for key, value in requested.items() if value is not None}}
    if not (isinstance(settings["r"], int) and _positive_number(settings["r"])):
        raise ValueError("lora.r must be a positive integer")
    if not _positive_number(settings["alpha"]):
        raise ValueError("lora.alpha must be a number greater than 0")
    dropout = settings["dropout"]
    if not (isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise ValueError("lora.dropout must be a number from 0 up to (not including) 1")
    targets = settings.get("target_modules") or default_lora_targets(model)
    if targets != "all-linear":
        targets = list(targets) if isinstance(targets, list | tuple) else [targets]
        missing = [name for name in targets if not isinstance(name, str) or not _has_module(model, name)]
        if missing:
            linear = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear | Conv1D)
                }
            )
            raise ValueError(
                f"lora.target_modules: this model has no module named {missing[0]!r}; "
                f"its linear layers are: {', '.join(linear)}"
            )
    return {**settings, "target_modules": targets}


def attach_lora(model: Any, lora: dict[str, Any] | None, resume_from: str | None) -> Any:
    """`model` itself for full fine-tuning; else wrapped with fresh adapters, or the adapters of
    the checkpoint being resumed (trainable, with their exact weights)."""
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
        task_type="CAUSAL_LM",
        # GPT-2's Conv1D stores its weight transposed: peft must know, or it warns and guesses.
        fan_in_fan_out=any(
            isinstance(module, Conv1D) and (targets == "all-linear" or any(_names(name, t) for t in targets))
            for name, module in model.named_modules()
        ),
    )
    return get_peft_model(model, config)


def causal_lm_of(model: Any) -> Any:
    """The transformers model inside (a PeftModel injects its adapters into it in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if parameter.data_ptr() in seen:
            continue
        seen.add(parameter.data_ptr())
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


@torch.no_grad()
def merged_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """What merge_and_unload would save, computed without touching the model being trained:
    each adapted weight plus its delta (B·A·alpha/r), under the base model's own names.
    (merge_adapter/unmerge_adapter would round the weights and break exact resumes.)"""
    lm: Any = model.get_base_model()  # Any: peft types it as a bare nn.Module
    deltas: dict[str, torch.Tensor] = {}
    for name, module in lm.named_modules():
        if isinstance(module, LoraLayer):
            layer: Any = module  # each concrete LoRA layer (Linear, Conv1D, ...) has get_delta_weight
            deltas[f"{name}.base_layer.weight"] = layer.get_delta_weight(layer.active_adapters[0])
    merged = {}
    for key, tensor in lm.state_dict().items():
        if ".lora_" in key:
            continue
        merged[key.replace(".base_layer.", ".")] = tensor + deltas[key] if key in deltas else tensor
    return merged


# --- forward, step, evaluation -----------------------------------------------------------------


def supervised_logits(model: Any, batch: LMBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits at the positions whose next token is learned, and those next tokens.

    The LM head runs at those positions only: with a 49k vocabulary it costs as much per token as
    several transformer layers, and full [batch, length, vocab] logits dominate activation memory.
    """
    lm = causal_lm_of(model)
    rows, positions = batch.learned_rows, batch.learned_positions
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    with autocast_for(device):
        if any(getattr(lm.config, name, None) for name in HEAD_POSTPROCESSING):
            logits = lm(**inputs).logits[rows, positions]
        else:
            hidden = lm.base_model(**inputs).last_hidden_state  # the decoder body, without the head
            logits = lm.get_output_embeddings()(hidden[rows, positions])
    # the loss in fp32 whatever the autocast dtype; position t predicts the token at t + 1
    return logits.float(), batch.labels[rows, positions + 1]


def train_step(
    model: Any,
    parameters: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batch: LMBatch,
    lr: float,
    hp: Hyperparameters,
) -> tuple[float, float]:
    """One optimizer step; returns (loss, mean token accuracy) over the batch's learned tokens."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits, targets = supervised_logits(model, batch, batch.input_ids.device)
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    loss = F.cross_entropy(logits, targets)  # the mean over the batch's learned tokens
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, hp.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_value, n_correct = torch.stack(
        [loss.detach(), correct.float()]
    ).tolist()  # CPU-GPU sync: once a step
    return loss_value, n_correct / batch.n_supervised


@torch.no_grad()
def evaluate(model: Any, batches: Sequence[LMBatch], device: torch.device) -> dict[str, float]:
    """valid_loss and valid_mean_token_accuracy per learned token, over the whole validation set
    (so the full_valid_* figures OpenAI reports separately are the same numbers here)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct; summed on the device
    count = 0
    for cpu_batch in batches:
        batch = cpu_batch.to(device)
        logits, targets = supervised_logits(model, batch, device)
        totals[0] += F.cross_entropy(logits, targets, reduction="sum")
        totals[1] += (logits.argmax(dim=-1) == targets).sum()
        count += batch.n_supervised
    model.train()
    loss_sum, correct = totals.tolist()
    loss, accuracy = loss_sum / max(1, count), correct / max(1, count)
    return {
        "valid_loss": loss,
        "valid_mean_token_accuracy": accuracy,
        "full_valid_loss": loss,
        "full_valid_mean_token_accuracy": accuracy,
    }


# --- checkpoints and the saved model -----------------------------------------------------------


def save_servable(model: Any, directory: Path) -> None:
    """A standard transformers directory (safetensors): adapters merged into the weights."""
    if isinstance(model, PeftModel):
        lm: Any = model.get_base_model()  # Any: peft types it as a bare nn.Module
        lm.save_pretrained(directory, state_dict=merged_state_dict(model))
    else:
        model.save_pretrained(directory)


def write_lm_checkpoint(final: Path, model: Any, tokenizer: Any, trainer_state: dict[str, Any]) -> None:
    """Written into *.tmp and renamed: a worker killed mid-write never leaves a half checkpoint."""
    tmp = final.with_name(f"{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_servable(model, tmp)
    tokenizer.save_pretrained(tmp)  # with the chat template
    if isinstance(model, PeftModel):
        model.save_pretrained(str(tmp / ADAPTER_DIR))  # the adapter alone, what a resume loads
    torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_lm_card(
    output_dir: Path, spec: TrainSpec, lora: dict[str, Any] | None, metrics: dict[str, Any]
) -> None:
    card = {
        "format_version": FORMAT_VERSION,
        "task": "generation",
        "method": {"type": METHOD, "lora": lora},
        "metrics": metrics,
        "spec": spec.to_dict(),
        "base_model": spec.base_model_dir,
        "trained_tokens": "every non-padding token read (context and learned), all epochs",
    }
    tmp = output_dir / f"{MODEL_CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True))
    os.replace(tmp, output_dir / MODEL_CARD_FILE)  # readers never see a partial card


def check_resumable(saved: dict[str, Any], total_steps: int, lora: dict[str, Any] | None) -> None:
    if saved.get("trainer") != TRAINER or saved["total_steps"] != total_steps or saved.get("lora") != lora:
        raise ValueError(
            f"the checkpoint was written for a different run ({saved.get('trainer')} trainer, "
            f"{saved['total_steps']} steps, LoRA {saved.get('lora')}; this run: {total_steps} steps, LoRA {lora})"
        )


# --- the training function ---------------------------------------------------------------------


def train_lm(
    spec: TrainSpec,
    on_progress: Callable[[ProgressEvent], None],
    should_stop: Callable[[], bool],
) -> TrainResult:
    hp = spec.hyperparameters

    # -- seed / device
    device = resolve_device(spec.device)
    torch.manual_seed(hp.seed)  # also seeds CUDA; LoRA's A matrices and dropout draw from it
    with deterministic_algorithms(device):
        # -- data
        tokenizer = load_lm_tokenizer(spec.base_model_dir)
        max_length = effective_max_length(hp, tokenizer, spec.base_model_dir)
        data = prepare_lm_data(spec, tokenizer, max_length, hp.seed)
        total_steps = math.ceil(len(data.train) / hp.batch_size) * hp.n_epochs

        # -- model (fp32 master weights; autocast does bf16 on GPUs)
        saved = read_trainer_state(spec.resume_from) if spec.resume_from else None
        full_resume = spec.resume_from if spec.lora is None else None  # a LoRA resume loads the base
        base = AutoModelForCausalLM.from_pretrained(full_resume or spec.base_model_dir, dtype=torch.float32)
        lora = resolve_lora(spec.lora, base)
        if saved is not None:
            check_resumable(saved, total_steps, lora)
        model = attach_lora(base, lora, spec.resume_from)
        model.to(device).train()

        # -- optimizer / schedule
        optimizer = build_optimizer(model, hp, device)
        run = LMRun(spec=spec, device=device, tokenizer=tokenizer, data=data, model=model, optimizer=optimizer,
                    total_steps=total_steps, on_progress=on_progress, lora=lora)  # fmt: skip
        if saved is not None:
            run.restore(saved)
        run.log_banner()

        # -- loop
        state = run.state
        stopped = False
        while state.epoch < hp.n_epochs and not state.early_stopped and not stopped:
            batches = epoch_batches(run.train_lengths, hp.batch_size, hp.seed, state.epoch)
            for indices in batches[state.batch_in_epoch :]:  # a resumed run skips what it already did
                if should_stop():  # polled before every step, so a cancel or pause lands within one step
                    stopped = True
                    break
                batch = run.train_batch(indices)
                lr = lr_at(state.step, hp.learning_rate, run.warmup_steps, total_steps)
                loss, accuracy = train_step(model, run.parameters, optimizer, batch, lr, hp)
                state.record_lm_step(loss, accuracy, batch.n_tokens, batch.n_supervised)
                metrics = {"train_loss": loss, "train_mean_token_accuracy": accuracy, "learning_rate": lr}
                run.emit("step", metrics)
                every = spec.checkpoint_every_steps
                if every and state.step % every == 0 and state.batch_in_epoch < len(batches):
                    run.checkpoint(run.train_metrics())  # the epoch's end checkpoints anyway
            else:  # the epoch ran to its end
                run.end_epoch()
        if stopped and run.last_checkpoint_step() != state.step:
            run.checkpoint(run.train_metrics() if state.epoch_loss_steps else {})

        # -- save
        return run.save(stopped)


@dataclass
class LMLoopState(LoopState):
    """LoopState plus the token accuracy of the epoch and the count of learned tokens."""

    epoch_accuracy_sum: float = 0.0
    supervised_tokens: int = 0

    def record_lm_step(self, loss: float, accuracy: float, n_tokens: int, n_supervised: int) -> None:
        self.record_step(loss, n_tokens)
        self.epoch_accuracy_sum += accuracy
        self.supervised_tokens += n_supervised

    def mean_train_accuracy(self) -> float:
        return self.epoch_accuracy_sum / max(1, self.epoch_loss_steps)

    def finish_epoch(self, metrics: dict[str, Any], checkpoint: str, patience: int) -> None:
        self.epoch_accuracy_sum = 0.0
        super().finish_epoch(metrics, checkpoint, patience)


@dataclass(kw_only=True)
class LMRun(RunBase):
    """A causal LM's run: its data, token-level evaluation, epoch end and final save (merged)."""

    trainer_name: ClassVar[str] = TRAINER
    state_class: ClassVar[type[LoopState]] = LMLoopState

    data: LMData
    lora: dict[str, Any] | None
    state: LMLoopState = field(default_factory=LMLoopState)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pad_id = self.tokenizer.pad_token_id
        self.train_lengths = self.data.train.lengths()
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        # Validation batches never change: collate them once, longest first, twice the batch (no grads).
        self.valid_batches = [
            collate_lm(self.data.valid, indices, self.pad_id, self.pad_to)
            for indices in eval_batches(self.data.valid.lengths(), self.spec.hyperparameters.batch_size * 2)
        ]

    def train_batch(self, indices: Sequence[int]) -> LMBatch:
        return collate_lm(self.data.train, indices, self.pad_id, self.pad_to).to(self.device)

    def train_metrics(self) -> dict[str, Any]:
        return {
            "train_loss": self.state.mean_train_loss(),
            "train_mean_token_accuracy": self.state.mean_train_accuracy(),
        }

    def trainer_state_extras(self) -> dict[str, Any]:
        return {"lora": self.lora}

    def write_checkpoint(self, path: Path, trainer_state: dict[str, Any]) -> None:
        write_lm_checkpoint(path, self.model, self.tokenizer, trainer_state)

    def log_banner(self) -> None:
        hp = self.spec.hyperparameters
        train, valid = self.data.train, self.data.valid
        trainable, total = parameter_counts(self.model)
        if self.lora is None:
            how = "full fine-tune"
        else:
            how = f"LoRA r={self.lora['r']} alpha={self.lora['alpha']} on {self.lora['target_modules']}"
        message = (
            f"Running training: {len(train)} examples ({len(valid)} for validation"
            + (f", {self.data.skipped} skipped with nothing to learn" if self.data.skipped else "")
            + f"), {hp.n_epochs} epochs, batch size {hp.batch_size}, {self.total_steps} total steps "
            f"({self.warmup_steps} warmup), learning rate {hp.learning_rate:g}, {how}, "
            f"{trainable:,} of {total:,} parameters trainable, device {self.device}"
        )
        figures = {
            "train_examples": len(train),
            "valid_examples": len(valid),
            "skipped_examples": self.data.skipped,
            "n_epochs": hp.n_epochs,
            "batch_size": hp.batch_size,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "lora": self.lora,
        }
        self.emit("log", figures, message)
        if self.spec.resume_from:
            self.emit("log", message=f"Resumed from the checkpoint at step {self.state.step}.")

    def end_epoch(self) -> None:
        metrics: dict[str, Any] = self.train_metrics()
        if len(self.data.valid):
            metrics.update(evaluate(self.model, self.valid_batches, self.device))
            self.emit("eval", metrics)
        # The checkpoint is named before it is written, so its own saved state can point at it as best.
        path = checkpoint_path(self.checkpoint_root, self.state.step)
        self.state.finish_epoch(metrics, str(path), self.spec.hyperparameters.early_stopping_patience)
        self.checkpoint(metrics)
        self.early_stop_message()

    def save(self, stopped: bool) -> TrainResult:
        output_dir = Path(self.spec.output_dir)
        metrics = {
            **self.state.best_metrics,
            "early_stopped": self.state.early_stopped,
            "supervised_tokens": self.state.supervised_tokens,
        }
        best = self.state.best_checkpoint
        model = self.model
        if best is None and isinstance(model, PeftModel):
            model = model.merge_and_unload()  # the run is over: fold the adapters into the weights for good
        save_final_model(output_dir, best, model, self.tokenizer)  # the best checkpoint is merged already
        write_lm_card(output_dir, self.spec, self.lora, metrics)
        self.emit("log", message=saved_message(self.state))
        return TrainResult(
            status="stopped" if stopped else "completed",
            model_dir=str(output_dir),
            labels=[],
            metrics=metrics,
            steps=self.state.step,
            trained_tokens=self.state.trained_tokens,
            checkpoints=[CheckpointInfo(**info) for info in self.state.checkpoints],
        )
