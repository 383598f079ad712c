"""Direct preference optimization of causal LMs: `train_dpo(spec, on_progress, should_stop) -> TrainResult`.

Each training row is a conversation and two replies to it, a preferred and a non-preferred one
(OpenAI's preference format). The loss is DPO's (Rafailov et al., 2023):

    -logsigmoid(beta * ((logp(chosen) - ref_logp(chosen)) - (logp(rejected) - ref_logp(rejected))))

where a log-probability is summed over the reply's tokens only (the prompt rendered with the model's
chat template, as supervised fine-tuning renders it) and `ref_logp` is the starting model's. The
reference log-probabilities are computed once, before the first step, with the frozen starting
weights (with LoRA, the base with its adapters off) and saved in every checkpoint, so that a resumed
run reads them back instead of computing them again with weights that have already moved.

The phases, the epoch loop, the checkpoints and the resume are those of supervised fine-tuning
(`training.RunBase`, `sft`): only the data, the step and the evaluation differ.

`trained_tokens` counts what the model read: each pair's prompt once, and both replies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from jinja2.exceptions import TemplateError
from peft import PeftModel
from transformers import AutoModelForCausalLM

from workers.runtime.data import TRAINING_FILE, VALIDATION_FILE, eval_batches
from workers.runtime.lm_data import (
    IGNORE_INDEX,
    LMBatch,
    LMSplit,
    collate_lm,
    encode_chat,
    load_lm_tokenizer,
    read_records,
    split_records,
)
from workers.runtime.lora import attach_lora, resolve_lora
from workers.runtime.sft import supervised_logits, write_lm_card
from workers.runtime.specs import (
    CheckpointInfo,
    Hyperparameters,
    ProgressEvent,
    TrainingDataError,
    TrainResult,
    TrainSpec,
)
from workers.runtime.training import (
    LoopState,
    RunBase,
    build_optimizer,
    deterministic_algorithms,
    effective_max_length,
    lr_at,
    parameter_counts,
    read_trainer_state,
    resolve_device,
    save_final_model,
    saved_message,
)

METHOD = "dpo"
TRAINER = "dpo"  # marks this trainer's checkpoints; another trainer's cannot be resumed here


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceSplit:
    """Row i of `chosen` and of `rejected` are the same prompt with the preferred and the
    non-preferred reply; their labels mark the reply's tokens only."""

    chosen: LMSplit
    rejected: LMSplit
    shared: list[int]  # tokens the two rows of a pair share from the start (the prompt, read once)

    def __len__(self) -> int:
        return len(self.chosen)

    def lengths(self) -> list[int]:
        return [c + r for c, r in zip(self.chosen.lengths(), self.rejected.lengths(), strict=True)]


@dataclass(frozen=True)
class PreferenceData:
    train: PreferenceSplit
    valid: PreferenceSplit
    skipped: int  # pairs whose replies were cut off entirely by max_seq_length


def _reply_turns(record: Mapping[str, Any], output: str) -> list[dict[str, Any]]:
    """The input conversation, its own assistant turns only context (weight 0), then the reply."""
    turns = [
        {**message, "weight": 0} if message.get("role") == "assistant" else dict(message)
        for message in record["input"]["messages"]
    ]
    return [*turns, dict(record[output][0])]


def encode_pair(
    record: Mapping[str, Any], where: str, tokenizer: Any, max_length: int
) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """((ids, labels) with the preferred reply, (ids, labels) with the non-preferred one)."""
    try:
        source = record["input"]
        tools = source.get("tools")
        return (
            encode_chat(tokenizer, _reply_turns(record, "preferred_output"), tools, max_length),
            encode_chat(tokenizer, _reply_turns(record, "non_preferred_output"), tools, max_length),
        )
    except (KeyError, IndexError, AttributeError, TypeError) as error:
        raise TrainingDataError(
            f'{where}: expected "input" with "messages", and "preferred_output" and '
            f'"non_preferred_output" of one assistant message each ({type(error).__name__}: {error})'
        ) from None
    except (TemplateError, ValueError) as error:  # what a chat template raises
        raise TrainingDataError(f"{where}: the chat template failed on this conversation ({error})") from None


def _shared_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    shared = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        shared += 1
    return shared


def encode_pairs(
    records: Sequence[tuple[str, dict[str, Any]]], tokenizer: Any, max_length: int
) -> tuple[PreferenceSplit, int]:
    chosen = LMSplit([], [])
    rejected = LMSplit([], [])
    shared: list[int] = []
    skipped = 0
    for where, record in records:
        (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = encode_pair(
            record, where, tokenizer, max_length
        )
        # A pair teaches only if both replies keep a token within max_seq_length.
        if all(label == IGNORE_INDEX for label in chosen_labels[1:]) or all(
            label == IGNORE_INDEX for label in rejected_labels[1:]
        ):
            skipped += 1
            continue
        chosen.input_ids.append(chosen_ids)
        chosen.labels.append(chosen_labels)
        rejected.input_ids.append(rejected_ids)
        rejected.labels.append(rejected_labels)
        shared.append(_shared_prefix(chosen_ids, rejected_ids))
    return PreferenceSplit(chosen, rejected, shared), skipped


def prepare_preference_data(spec: TrainSpec, tokenizer: Any, max_length: int, seed: int) -> PreferenceData:
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingDataError("DPO needs a base model with a chat template, and this one has none")
    train_records = read_records(spec.training_file, TRAINING_FILE)
    if spec.validation_file:
        valid_records = read_records(spec.validation_file, VALIDATION_FILE)
    else:
        train_records, valid_records = split_records(train_records, seed)
    train, skipped_train = encode_pairs(train_records, tokenizer, max_length)
    valid, skipped_valid = encode_pairs(valid_records, tokenizer, max_length)
    if not len(train):
        raise TrainingDataError(
            f"no training pair keeps a token of both replies within max_seq_length ({max_length})"
        )
    return PreferenceData(train, valid, skipped_train + skipped_valid)


def collate_pairs(
    split: PreferenceSplit, indices: Sequence[int], pad_id: int, pad_to: int = 1
) -> tuple[LMBatch, LMBatch]:
    return collate_lm(split.chosen, indices, pad_id, pad_to), collate_lm(
        split.rejected, indices, pad_id, pad_to
    )


# --- log-probabilities, the loss, the reference --------------------------------------------------


def sequence_logps(
    model: Any, batch: LMBatch, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Each row's log-probability of its learned tokens (the reply), summed: shape [rows]."""
    logits, targets = supervised_logits(model, batch, device, dtype)
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(batch.input_ids.shape[0], dtype=token_logps.dtype, device=device)
    return sums.index_add(0, batch.learned_rows, token_logps)


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards) from [pairs, 2] log-probabilities (chosen,
    rejected); a reward is beta times how much more likely the policy makes the reply than the
    reference does."""
    rewards = beta * (policy - reference)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    return -F.logsigmoid(chosen - rejected).mean(), chosen, rejected


def _without_adapters(model: Any) -> AbstractContextManager[Any]:
    # With LoRA the reference is the base itself: the same weights with the adapters switched off.
    return model.disable_adapter() if isinstance(model, PeftModel) else nullcontext()


@torch.no_grad()
def reference_logps(
    model: Any,
    split: PreferenceSplit,
    pad_id: int,
    pad_to: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) log-probabilities under the model as it is now (adapters
    off), on the CPU: one pass, in eval mode so that dropout does not blur the reference."""
    was_training = model.training
    model.eval()
    out = torch.zeros((len(split), 2), dtype=torch.float32)
    try:
        with _without_adapters(model):
            for indices in _chunks(len(split), batch_size):
                chosen, rejected = (
                    batch.to(device) for batch in collate_pairs(split, indices, pad_id, pad_to)
                )
                out[indices, 0] = sequence_logps(model, chosen, device, dtype).float().cpu()
                out[indices, 1] = sequence_logps(model, rejected, device, dtype).float().cpu()
    finally:
        model.train(was_training)
    return out


def _chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def pair_logps(
    model: Any, chosen: LMBatch, rejected: LMBatch, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.stack(
        [sequence_logps(model, chosen, device, dtype), sequence_logps(model, rejected, device, dtype)], dim=1
    )


def train_step(
    model: Any,
    parameters: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: tuple[LMBatch, LMBatch],
    reference: torch.Tensor,
    lr: float,
    hp: Hyperparameters,
    beta: float,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float, float]:
    """One optimizer step; returns (loss, mean reward margin, share of pairs ranked right)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    chosen, rejected = batches
    device = chosen.input_ids.device
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        pair_logps(model, chosen, rejected, device, dtype), reference, beta
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, hp.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    margins = (chosen_rewards - rejected_rewards).detach()
    loss_value, margin, accuracy = torch.stack(
        [loss.detach(), margins.mean(), (margins > 0).float().mean()]
    ).tolist()  # CPU-GPU sync: once a step
    return loss_value, margin, accuracy


@torch.no_grad()
def evaluate(
    model: Any,
    split: PreferenceSplit,
    reference: torch.Tensor,
    pad_id: int,
    pad_to: int,
    batch_size: int,
    beta: float,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """valid_loss, valid_rewards_margin and valid_rewards_accuracy over every validation pair."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss, margin, correct: summed per pair
    for indices in eval_batches(split.lengths(), batch_size):
        chosen, rejected = (batch.to(device) for batch in collate_pairs(split, indices, pad_id, pad_to))
        policy = pair_logps(model, chosen, rejected, device, dtype)
        loss, chosen_rewards, rejected_rewards = dpo_loss(policy, reference[indices].to(device), beta)
        margins = chosen_rewards - rejected_rewards
        totals += torch.stack([loss * len(indices), margins.sum(), (margins > 0).sum()]).double()
    model.train()
    loss_sum, margin_sum, correct = totals.tolist()
    count = max(1, len(split))
    return {
        "valid_loss": loss_sum / count,
        "valid_rewards_margin": margin_sum / count,
        "valid_rewards_accuracy": correct / count,
    }


# --- the run -----------------------------------------------------------------------------------


@dataclass
class DPOLoopState(LoopState):
    """LoopState plus the epoch's reward margins and accuracy."""

    epoch_margin_sum: float = 0.0
    epoch_accuracy_sum: float = 0.0

    def record_pair_step(self, loss: float, margin: float, accuracy: float, n_tokens: int) -> None:
        self.record_step(loss, n_tokens)
        self.epoch_margin_sum += margin
        self.epoch_accuracy_sum += accuracy

    def finish_epoch(self, metrics: dict[str, Any], checkpoint: str, patience: int) -> None:
        self.epoch_margin_sum = self.epoch_accuracy_sum = 0.0
        super().finish_epoch(metrics, checkpoint, patience)


@dataclass(kw_only=True)
class DPORun(RunBase):
    """A DPO run: preference pairs, their reference log-probabilities, banner and final save."""

    trainer_name: ClassVar[str] = TRAINER
    state_class: ClassVar[type[LoopState]] = DPOLoopState

    data: PreferenceData
    lora: dict[str, Any] | None
    state: DPOLoopState = field(default_factory=DPOLoopState)
    # (chosen, rejected) log-probabilities of the starting weights, per pair: [pairs, 2] on the CPU
    reference: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pad_id = self.tokenizer.pad_token_id
        self.train_lengths = self.data.train.lengths()
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]

    def compute_reference(self) -> None:
        """The one pass of the frozen starting weights over every pair, before the first step."""
        size = self.spec.hyperparameters.batch_size * 2  # no gradients: twice the batch fits
        self.reference = {
            name: reference_logps(self.model, split, self.pad_id, self.pad_to, size, self.device, self.dtype)
            for name, split in (("train", self.data.train), ("valid", self.data.valid))
        }
        pairs = len(self.data.train) + len(self.data.valid)
        self.emit("log", message=f"Computed the reference model's log-probabilities of {pairs} pairs.")

    def train_batch(self, indices: Sequence[int]) -> tuple[LMBatch, LMBatch]:
        chosen, rejected = collate_pairs(self.data.train, indices, self.pad_id, self.pad_to)
        return chosen.to(self.device), rejected.to(self.device)

    def pair_tokens(self, batches: tuple[LMBatch, LMBatch], indices: Sequence[int]) -> int:
        """Tokens read: both rows, less the prompt the rejected row repeats."""
        return batches[0].n_tokens + batches[1].n_tokens - sum(self.data.train.shared[i] for i in indices)

    def train_metrics(self) -> dict[str, Any]:
        steps = max(1, self.state.epoch_loss_steps)
        return {
            "train_loss": self.state.mean_train_loss(),
            "train_rewards_margin": self.state.epoch_margin_sum / steps,
            "train_rewards_accuracy": self.state.epoch_accuracy_sum / steps,
        }

    def trainer_state_extras(self) -> dict[str, Any]:
        return {"lora": self.lora, "beta": self.spec.beta, "reference": self.reference}

    def restore(self, saved: dict[str, Any]) -> None:
        super().restore(saved)
        self.reference = {name: tensor.clone() for name, tensor in saved["reference"].items()}

    def log_banner(self) -> None:
        hp = self.spec.hyperparameters
        train, valid = self.data.train, self.data.valid
        trainable, total = parameter_counts(self.model)
        how = (
            "full fine-tune"
            if self.lora is None
            else f"LoRA r={self.lora['r']} alpha={self.lora['alpha']} on {self.lora['target_modules']}"
        )
        message = (
            f"Running DPO: {len(train)} pairs ({len(valid)} for validation"
            + (f", {self.data.skipped} skipped with a reply cut off" if self.data.skipped else "")
            + f"), beta {self.spec.beta:g}, {hp.n_epochs} epochs, batch size {hp.batch_size}, "
            f"{self.total_steps} total steps ({self.warmup_steps} warmup), learning rate {hp.learning_rate:g}, "
            f"{how}, {trainable:,} of {total:,} parameters trainable, {self.devices_text()}, "
            f"{self.precision_name()}"
        )
        figures = {
            "train_examples": len(train),
            "valid_examples": len(valid),
            "skipped_examples": self.data.skipped,
            "beta": self.spec.beta,
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
        metrics = {**self.state.best_metrics, "early_stopped": self.state.early_stopped}
        save_final_model(output_dir, self.state.best_checkpoint, self.model, self.tokenizer)
        write_lm_card(output_dir, self.spec, self.lora, metrics, method=METHOD)
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


def check_resumable(
    saved: dict[str, Any], total_steps: int, lora: dict[str, Any] | None, data: PreferenceData
) -> None:
    reference = saved.get("reference") or {}
    sizes = [len(reference[name]) if name in reference else -1 for name in ("train", "valid")]
    if (
        saved.get("trainer") != TRAINER
        or saved["total_steps"] != total_steps
        or saved.get("lora") != lora
        or sizes != [len(data.train), len(data.valid)]
    ):
        raise ValueError(
            f"the checkpoint was written for a different run ({saved.get('trainer')} trainer, "
            f"{saved['total_steps']} steps, LoRA {saved.get('lora')}, reference of {sizes} pairs; this run: "
            f"{total_steps} steps, LoRA {lora}, {len(data.train)} and {len(data.valid)} pairs)"
        )


# --- the training function ---------------------------------------------------------------------


def train_dpo(
    spec: TrainSpec,
    on_progress: Callable[[ProgressEvent], None],
    should_stop: Callable[[], bool],
) -> TrainResult:
    hp = spec.hyperparameters

    # -- seed / device
    device = resolve_device(spec.device)
    torch.manual_seed(hp.seed)
    with deterministic_algorithms(device):
        # -- data
        tokenizer = load_lm_tokenizer(spec.base_model_dir)
        max_length = effective_max_length(hp, tokenizer, spec.base_model_dir)
        data = prepare_preference_data(spec, tokenizer, max_length, hp.seed)
        total_steps = math.ceil(len(data.train) / hp.batch_size) * hp.n_epochs

        # -- model (fp32 master weights; autocast does the bf16 where spec.precision picks it)
        saved = read_trainer_state(spec.resume_from) if spec.resume_from else None
        full_resume = spec.resume_from if spec.lora is None else None  # a LoRA resume loads the base
        base = AutoModelForCausalLM.from_pretrained(full_resume or spec.base_model_dir, dtype=torch.float32)
        lora = resolve_lora(spec.lora, base)
        if saved is not None:
            check_resumable(saved, total_steps, lora, data)
        model = attach_lora(base, lora, spec.resume_from)
        model.to(device).train()

        # -- optimizer / schedule
        optimizer = build_optimizer(model, hp, device)
        run = DPORun(
            spec=spec,
            device=device,
            tokenizer=tokenizer,
            data=data,
            model=model,
            optimizer=optimizer,
            total_steps=total_steps,
            on_progress=on_progress,
            lora=lora,
        )
        if saved is not None:
            run.restore(saved)  # the reference comes back with it: the weights have moved since
        run.log_banner()
        if saved is None:
            run.compute_reference()

        # -- loop
        def step(indices: Sequence[int]) -> None:
            batches = run.train_batch(indices)
            reference = run.reference["train"][list(indices)].to(device)
            lr = lr_at(run.state.step, hp.learning_rate, run.warmup_steps, total_steps)
            loss, margin, accuracy = train_step(
                model, run.parameters, optimizer, batches, reference, lr, hp, spec.beta, run.dtype
            )
            run.state.record_pair_step(loss, margin, accuracy, run.pair_tokens(batches, indices))
            metrics = {
                "train_loss": loss,
                "train_rewards_margin": margin,
                "train_rewards_accuracy": accuracy,
                "learning_rate": lr,
            }
            run.emit("step", metrics)

        def validate() -> dict[str, Any]:
            return evaluate(
                model,
                data.valid,
                run.reference["valid"],
                run.pad_id,
                run.pad_to,
                hp.batch_size * 2,
                spec.beta,
                device,
                run.dtype,
            )

        stopped = run.run_epochs(should_stop, step, validate if len(data.valid) else None)

        # -- save
        return run.save(stopped)
