"""Supervised fine-tuning of causal LMs: `train_lm(spec, on_progress, should_stop) -> TrainResult`.

The same phases and the same contract as `training.train`: seed/device → data → model →
optimizer/schedule → loop → save; the data order of an epoch depends only on (seed, epoch) and
every checkpoint holds what a resumed attempt needs, so a paused and resumed run ends with the
same weights as an uninterrupted one. The rows, masks and batches are `lm_data`'s; the optional
LoRA adapters (`spec.lora`) are `lora`'s.

`trained_tokens` counts every non-padding token the model read, context and supervised alike
(what OpenAI bills); `supervised_tokens` in the metrics counts the tokens the loss learned from.

A checkpoint directory is a standard transformers model at its top level (LoRA adapters merged
into the weights), so every kept checkpoint is servable as it is; `adapter/` holds the adapter
alone and `trainer_state.pt` the optimizer, loop position and RNG for a resume. The final model
is merged the same way.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from workers.runtime.data import eval_batches
from workers.runtime.distributed import choose_sharding, current_world, device_for, wrap
from workers.runtime.lm_data import LMBatch, LMData, collate_lm, load_lm_tokenizer, prepare_lm_data
from workers.runtime.lora import attach_lora, causal_lm_of, resolve_lora
from workers.runtime.specs import CheckpointInfo, Hyperparameters, ProgressEvent, TrainResult, TrainSpec
from workers.runtime.training import (
    FORMAT_VERSION,
    MODEL_CARD_FILE,
    LoopState,
    RunBase,
    autocast_for,
    build_optimizer,
    deterministic_algorithms,
    effective_max_length,
    lora_text,
    lr_at,
    parameter_counts,
    read_trainer_state,
    resolve_device,
    save_final_model,
    saved_message,
)

METHOD = "supervised"
TRAINER = "sft"  # marks this trainer's checkpoints; a classifier's cannot be resumed here
# Config fields that transform logits after the LM head (Gemma-2 softcapping, Cohere's and
# Granite's scaling): models with any of them run their own forward, not our head-only shortcut.
HEAD_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


# --- model -------------------------------------------------------------------------------------


# --- forward, step, evaluation -----------------------------------------------------------------


def supervised_logits(
    model: Any, batch: LMBatch, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits at the positions whose next token is learned, and those next tokens.

    The LM head runs at those positions only: with a 49k vocabulary it costs as much per token as
    several transformer layers, and full [batch, length, vocab] logits dominate activation memory.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel | SupervisedLogits):
        # DDP(SupervisedLogits(...)), or SupervisedLogits sharded by FSDP: through their forward
        return model(batch, device, dtype)
    lm = causal_lm_of(model)
    rows, positions = batch.learned_rows, batch.learned_positions
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    with autocast_for(device, dtype):
        if any(getattr(lm.config, name, None) for name in HEAD_POSTPROCESSING):
            logits = lm(**inputs).logits[rows, positions]
        else:
            hidden = lm.base_model(**inputs).last_hidden_state  # the decoder body, without the head
            logits = lm.get_output_embeddings()(hidden[rows, positions])
    # the loss in fp32 whatever the autocast dtype; position t predicts the token at t + 1
    return logits.float(), batch.labels[rows, positions + 1]


class SupervisedLogits(torch.nn.Module):
    """`supervised_logits` as a module's forward, for DDP to wrap: DDP exchanges the gradients of
    what runs through its own forward, and a step here runs the body and the head apart."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: LMBatch, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return supervised_logits(self.model, batch, device, dtype)


def train_step(
    model: Any,
    parameters: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batch: LMBatch,
    lr: float,
    hp: Hyperparameters,
    dtype: torch.dtype = torch.float32,
    loss_scale: float = 1.0,
) -> tuple[float, float]:
    """One optimizer step; returns (loss, mean token accuracy) over the batch's learned tokens.
    `loss_scale` weights this batch's gradient: a rank's share of a global batch's learned tokens
    (workers/runtime/distributed.py), 0 for a rank with none."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits, targets = supervised_logits(model, batch, batch.input_ids.device, dtype)
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    loss = F.cross_entropy(logits, targets)  # the mean over the batch's learned tokens
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    torch.nn.utils.clip_grad_norm_(parameters, hp.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_value, n_correct = torch.stack(
        [loss.detach(), correct.float()]
    ).tolist()  # CPU-GPU sync: once a step
    return loss_value, n_correct / batch.n_supervised


@torch.no_grad()
def evaluate(
    model: Any, batches: Sequence[LMBatch], device: torch.device, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """valid_loss and valid_mean_token_accuracy per learned token, over the whole validation set
    (so the full_valid_* figures OpenAI reports separately are the same numbers here)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct; summed on the device
    count = 0
    for cpu_batch in batches:
        batch = cpu_batch.to(device)
        logits, targets = supervised_logits(model, batch, device, dtype)
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


# --- checkpoints and the model card ------------------------------------------------------------


def write_lm_card(
    output_dir: Path,
    spec: TrainSpec,
    lora: dict[str, Any] | None,
    metrics: dict[str, Any],
    method: str = METHOD,
) -> None:
    card = {
        "format_version": FORMAT_VERSION,
        "task": "generation",
        "method": {"type": method, "lora": lora},
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


# Scores the model as it is at an epoch's end (an eval's items answered and graded; the model, its
# tokenizer, the device, and the training's sequence length, which bounds prompt and answer): its
# figures join the epoch's metrics, and `eval_score` then picks the best checkpoint (LoopState).
Scorer = Callable[[Any, Any, torch.device, int], dict[str, Any]]


def train_lm(
    spec: TrainSpec,
    on_progress: Callable[[ProgressEvent], None],
    should_stop: Callable[[], bool],
    score: Scorer | None = None,
) -> TrainResult:
    hp = spec.hyperparameters

    # -- seed / device (one of several ranks when torchrun started this process)
    world = current_world()
    device = resolve_device(device_for(world, spec.device))
    torch.manual_seed(hp.seed)  # also seeds CUDA; LoRA's A matrices and dropout draw from it
    with deterministic_algorithms(device):
        # -- data
        tokenizer = load_lm_tokenizer(spec.base_model_dir)
        max_length = effective_max_length(hp, tokenizer, spec.base_model_dir)
        data = prepare_lm_data(spec, tokenizer, max_length, hp.seed)
        total_steps = math.ceil(len(data.train) / hp.batch_size) * hp.n_epochs

        # -- model (fp32 master weights; autocast does the bf16 where spec.precision picks it)
        saved = read_trainer_state(spec.resume_from) if spec.resume_from else None
        full_resume = spec.resume_from if spec.lora is None else None  # a LoRA resume loads the base
        base = AutoModelForCausalLM.from_pretrained(full_resume or spec.base_model_dir, dtype=torch.float32)
        lora = resolve_lora(spec.lora, base)
        if saved is not None:
            check_resumable(saved, total_steps, lora)
        model = attach_lora(base, lora, spec.resume_from)
        model.train()
        sharding = choose_sharding(spec.sharding, world, model, device, lora)
        # What a step (and, sharded, an evaluation) runs: the model itself, or SupervisedLogits
        # around it, which DDP wraps or FSDP shards: both act on what runs through a forward.
        stepped = wrap(SupervisedLogits(model) if world.size > 1 else model, world, device, sharding)
        forward_model = stepped if sharding == "fsdp" else model

        # -- optimizer / schedule
        optimizer = build_optimizer(model, hp, device)
        run = LMRun(
            spec=spec,
            device=device,
            tokenizer=tokenizer,
            data=data,
            model=model,
            optimizer=optimizer,
            total_steps=total_steps,
            on_progress=on_progress,
            lora=lora,
            world=world,
            sharding=sharding,
        )
        if saved is not None:
            run.restore(saved)
        run.log_banner()

        # -- loop (lr, forward, backward, clip, step, log; eval and checkpoints in run_epochs)
        def step(indices: Sequence[int]) -> None:
            local, share = run.share(indices)
            batch = run.train_batch(local)
            lr = lr_at(run.state.step, hp.learning_rate, run.warmup_steps, total_steps)
            n_tokens, n_supervised = (batch.n_tokens, batch.n_supervised) if share else (0, 0)
            if world.size > 1:  # the loss is a mean over learned tokens: weigh by the rank's share of them
                supervised = world.sum([n_supervised])[0]
                share = n_supervised * world.size / supervised
            loss, accuracy = train_step(stepped, run.parameters, optimizer, batch, lr, hp, run.dtype, share)
            if world.size > 1:  # the global batch's figures
                loss_sum, correct, tokens = world.sum(
                    [loss * n_supervised, accuracy * n_supervised, n_tokens]
                )
                loss, accuracy = loss_sum / supervised, correct / supervised
                n_tokens, n_supervised = int(tokens), int(supervised)
            run.state.record_lm_step(loss, accuracy, n_tokens, n_supervised)
            metrics = {"train_loss": loss, "train_mean_token_accuracy": accuracy, "learning_rate": lr}
            run.emit("step", metrics)

        def validate() -> dict[str, Any]:
            metrics = evaluate(forward_model, run.valid_batches, device, run.dtype) if len(data.valid) else {}
            if score is not None:
                model.eval()
                metrics.update(score(model, tokenizer, device, max_length))
                model.train()
            return metrics

        stopped = run.run_epochs(
            should_stop, step, validate if len(data.valid) or score is not None else None
        )

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
    """A causal LM's run: its data, batches, token accuracy, banner and final save (merged)."""

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

    def log_banner(self) -> None:
        hp = self.spec.hyperparameters
        train, valid = self.data.train, self.data.valid
        trainable, total = parameter_counts(self.model)
        message = (
            f"Running training: {len(train)} examples ({len(valid)} for validation"
            + (f", {self.data.skipped} skipped with nothing to learn" if self.data.skipped else "")
            + f"), {hp.n_epochs} epochs, batch size {hp.batch_size}, {self.total_steps} total steps "
            f"({self.warmup_steps} warmup), learning rate {hp.learning_rate:g}, {lora_text(self.lora)}, "
            f"{trainable:,} of {total:,} parameters trainable, {self.devices_text()}, "
            f"{self.precision_name()}"
        )
        figures = {
            "train_examples": len(train),
            "valid_examples": len(valid),
            "skipped_examples": self.data.skipped,
            "n_epochs": hp.n_epochs,
            "batch_size": hp.batch_size,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "precision": self.precision_name(),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "lora": self.lora,
        }
        self.emit("log", figures, message)
        if self.spec.resume_from:
            self.emit("log", message=f"Resumed from the checkpoint at step {self.state.step}.")

    def save(self, stopped: bool) -> TrainResult:
        output_dir = Path(self.spec.output_dir)
        metrics = {
            **self.state.best_metrics,
            "early_stopped": self.state.early_stopped,
            "supervised_tokens": self.state.supervised_tokens,
        }
        weights = self.final_weights()
        if self.world.is_main:
            save_final_model(output_dir, self.state.best_checkpoint, self.model, self.tokenizer, weights)
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


@torch.no_grad()
def greedy_answer(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    max_new_tokens: int,
    max_length: int,
    device: torch.device,
) -> tuple[str, int, int] | None:
    """The chat's answer by greedy decoding, with its prompt and answer token counts: what a
    checkpoint says to one of an eval's items. None when the model cannot be asked it: its chat
    template refuses the messages (or it has none), or the prompt leaves no room within
    `max_length`, the training's own sequence length."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template's own refusal (jinja raises what the template says), or none at all
        return None
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    room = max_length - ids.shape[1]
    if room <= 0:
        return None
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=torch.ones_like(ids).to(device),
        max_new_tokens=min(max_new_tokens, room),
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    new = out[0, ids.shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], int(new.shape[0])
