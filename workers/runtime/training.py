"""Fine-tune a sequence classifier: `train(spec, on_progress, should_stop) -> TrainResult`.

Reads like nanoGPT's train.py, as one function with its phases in order: seed/device → data →
model → optimizer/schedule → loop → save. Everything a resumed attempt needs (weights,
optimizer, step, position in the epoch, RNG, best metric) is in each checkpoint, and the data
order of an epoch depends only on (seed, epoch), so resuming reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from workers.runtime.adapters import ADAPTER_DIR
from workers.runtime.data import (
    Batch,
    PreparedData,
    collate,
    count_tokens,
    epoch_batches,
    eval_batches,
    prepare_data,
)
from workers.runtime.distributed import (
    SINGLE,
    World,
    choose_sharding,
    current_world,
    device_for,
    gathered_optimizer_state,
    gathered_weights,
    shard_optimizer_state,
    wrap,
)
from workers.runtime.lora import (
    CLASSIFIER_HEADS,
    attach_lora,
    fresh_modules,
    resolve_lora,
    save_adapter,
    save_servable,
)
from workers.runtime.metrics import classification_metrics
from workers.runtime.models import cpu_has_bf16
from workers.runtime.specs import (
    PRECISIONS,
    VALIDATION_FRACTION,
    CheckpointInfo,
    Hyperparameters,
    ProgressEvent,
    TrainResult,
    TrainSpec,
)

FORMAT_VERSION = 1
TRAINER_STATE_FILE = "trainer_state.pt"
MODEL_CARD_FILE = "modelworks.json"


@dataclass
class LoopState:
    """The loop's position and bookkeeping; saved in every checkpoint, restored on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already done
    trained_tokens: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    best_valid_loss: float = math.inf
    # With an eval scoring each epoch (sft.Scorer), the best is its highest `eval_score`, ties going
    # to the lower valid_loss; otherwise the lowest valid_loss.
    best_score: float = -math.inf
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str | None = None
    evals_without_improvement: int = 0
    early_stopped: bool = False
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # CheckpointInfo as dicts, kept ones only

    def record_step(self, loss: float, n_tokens: int) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        self.trained_tokens += n_tokens
        self.epoch_loss_sum += loss
        self.epoch_loss_steps += 1

    def mean_train_loss(self) -> float:
        return self.epoch_loss_sum / max(1, self.epoch_loss_steps)

    def finish_epoch(self, metrics: dict[str, Any], checkpoint: str, patience: int) -> None:
        """Count the epoch, keep the best (by eval score, else valid_loss) and decide on early
        stopping."""
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_loss_sum, self.epoch_loss_steps = 0.0, 0
        loss = metrics.get("valid_loss", math.inf)
        if "eval_score" in metrics:
            better = (metrics["eval_score"], -loss) > (self.best_score, -self.best_valid_loss)
        elif "valid_loss" in metrics:
            # An epoch whose scoring was cut short (a cancel, a pause, the budget) never displaces a
            # scored best.
            better = loss < self.best_valid_loss and self.best_score == -math.inf
        else:  # nothing to validate on: every epoch is "the best"
            return
        if better:
            self.best_valid_loss = loss
            self.best_score = metrics.get("eval_score", -math.inf)
            self.best_metrics = {**metrics, "best_step": self.step, "best_epoch": self.epoch}
            self.best_checkpoint = checkpoint
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
            self.early_stopped = patience > 0 and self.evals_without_improvement >= patience

    def display_epoch(self) -> int:
        """1-based epoch of the work just done (a finished epoch counts as itself)."""
        return max(self.epoch + (1 if self.batch_in_epoch else 0), 1)


# --- small pure helpers ------------------------------------------------------------------------


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to peak_lr, then linear decay towards 0; `step` counts steps already done."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def warmup_steps_for(hp: Hyperparameters, total_steps: int) -> int:
    return math.ceil(total_steps * hp.warmup_ratio)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype training computes its forward pass in; weights and AdamW state stay float32.

    "auto": bfloat16 on GPUs that support it and on CPUs with bf16 matmul units (AVX512-BF16 or
    AMX), float32 elsewhere. bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss
    scaling (hence never float16); a CPU without those units only emulates it, slower than float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return torch.bfloat16 if precision == "bfloat16" else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def autocast_for(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[Any]:
    """Autocast to `dtype` around a forward pass (never the backward); a no-op for float32."""
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


@contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU (costs nothing there), restored afterwards because the flag is
    process-wide. Not on CUDA: it needs CUBLAS_WORKSPACE_CONFIG before CUDA starts and costs speed."""
    previous = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def effective_max_length(hp: Hyperparameters, tokenizer: Any, model_dir: str) -> int:
    """hp.max_seq_length, capped by what the model's position embeddings can take."""
    limits = [hp.max_seq_length]
    if isinstance(getattr(tokenizer, "model_max_length", None), int) and tokenizer.model_max_length < 100_000:
        limits.append(tokenizer.model_max_length)  # huge sentinel values mean "no limit"
    config_path = Path(model_dir) / "config.json"
    if config_path.exists():
        positions = json.loads(config_path.read_text()).get("max_position_embeddings")
        if isinstance(positions, int):
            limits.append(positions)
    return min(limits)


# --- model, optimizer, evaluation --------------------------------------------------------------


def load_tokenizer(model_dir: str) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:  # decoder-only bases (GPT-2) ship without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_dir: str, labels: Sequence[str], pad_token_id: int) -> tuple[Any, list[str]]:
    """The classifier, and the modules it did not find in `model_dir` (its new head, a pooler the
    checkpoint lacked), which start random."""
    # ignore_mismatched_sizes: a classifier base with another label count gets a fresh head;
    # a bare encoder (MiniLM) gets one anyway. fp32 master weights; autocast does the bf16.
    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
        dtype=torch.float32,
        output_loading_info=True,
    )
    model.config.pad_token_id = pad_token_id  # GPT-2-style heads find the last real token with it
    return model, fresh_modules([*info["missing_keys"], *info["mismatched_keys"]])


def build_optimizer(model: torch.nn.Module, hp: Hyperparameters, device: torch.device) -> torch.optim.AdamW:
    # No weight decay on 1-D tensors: in transformer encoders those are the biases and LayerNorm gains.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=device.type == "cuda")


def forward_logits(
    model: Any, batch: Batch, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    with autocast_for(device, dtype):
        logits: torch.Tensor = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits.float()  # the loss in fp32 whatever the autocast dtype


def batch_loss(logits: torch.Tensor, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy on the labels, or, when the batch carries a teacher's softened probabilities,
    the KL divergence to them at the same temperature, scaled by T² so that its gradients keep the
    size of a hard-label loss whatever T is (Hinton et al., 2015)."""
    if batch.soft is None:
        return F.cross_entropy(logits, batch.labels)
    log_probs = F.log_softmax(logits / temperature, dim=-1)
    return F.kl_div(log_probs, batch.soft, reduction="batchmean") * temperature**2


def train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    lr: float,
    hp: Hyperparameters,
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float32,
    loss_scale: float = 1.0,
) -> float:
    """One optimizer step; returns the batch's loss. `loss_scale` weights this batch's gradient: a
    rank's share of a global batch (workers/runtime/distributed.py), 0 for a rank with none."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = forward_logits(model, batch, batch.input_ids.device, dtype)
    loss = batch_loss(logits, batch, temperature)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()  # outside autocast: fp32 gradients
    torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())  # CPU-GPU sync point: once per step, for the progress event


@torch.no_grad()
def evaluate(
    model: Any,
    batches: Sequence[Batch],
    labels: Sequence[str],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """valid_loss (mean per example) and the classification metrics over all batches."""
    model.eval()
    loss_sum = 0.0
    golds: list[int] = []
    preds: list[int] = []
    for cpu_batch in batches:
        batch = cpu_batch.to(device)
        logits = forward_logits(model, batch, device, dtype)
        loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum").item())
        golds.extend(batch.labels.tolist())
        preds.extend(logits.argmax(dim=-1).tolist())
    model.train()
    return {"valid_loss": loss_sum / max(1, len(golds)), **classification_metrics(golds, preds, labels)}


# --- checkpoints -------------------------------------------------------------------------------


def checkpoint_path(root: Path, step: int) -> Path:
    return root / f"checkpoint-{step:07d}"


def write_checkpoint(
    final: Path,
    model: Any,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the checkpoint directory atomically: a worker killed mid-write leaves only a *.tmp
    directory, never a half checkpoint that a resumed attempt would load. `weights`: the model's,
    gathered whole, when its own are FSDP shards."""
    tmp = final.with_name(f"{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_servable(model, tmp, weights)  # safetensors; LoRA adapters merged into the weights
    tokenizer.save_pretrained(tmp)  # with the chat template
    if isinstance(model, PeftModel):
        save_adapter(model, tmp / ADAPTER_DIR)  # the adapter alone: what a resume loads, and serving
    torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def read_trainer_state(checkpoint_dir: str) -> dict[str, Any]:
    # weights_only: only tensors and plain containers come back; nothing is unpickled as code.
    state: dict[str, Any] = torch.load(
        Path(checkpoint_dir) / TRAINER_STATE_FILE, map_location="cpu", weights_only=True
    )
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"the checkpoint has an unsupported format ({state.get('format_version')!r})")
    return state


def rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def track_checkpoint(state: LoopState, info: CheckpointInfo) -> list[str]:
    """Add `info` to the kept checkpoints, keeping only it and the best; return the paths to delete."""
    keep = {info.path, state.best_checkpoint}
    dropped = [c["path"] for c in state.checkpoints if c["path"] not in keep]
    state.checkpoints = [c for c in state.checkpoints if c["path"] in keep and c["path"] != info.path]
    state.checkpoints.append(asdict(info))
    return dropped


def save_final_model(
    output_dir: Path,
    best_checkpoint: str | None,
    model: Any,
    tokenizer: Any,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """The run's model: the best checkpoint's files (merged already), or the current weights (LoRA
    adapters merged; `weights` when the model's own are FSDP shards) when no evaluation happened
    yet; for LoRA, with its adapter beside them in `adapter/`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if best_checkpoint is None:
        if isinstance(model, PeftModel):
            save_adapter(model, output_dir / ADAPTER_DIR)
            model = model.merge_and_unload()  # the run is over: fold the adapters into the weights for good
        model.save_pretrained(output_dir, state_dict=weights)
        tokenizer.save_pretrained(output_dir)
        return
    for item in Path(best_checkpoint).iterdir():
        if item.is_file() and item.name != TRAINER_STATE_FILE:
            shutil.copy2(item, output_dir / item.name)
    if (Path(best_checkpoint) / ADAPTER_DIR).is_dir():
        shutil.copytree(Path(best_checkpoint) / ADAPTER_DIR, output_dir / ADAPTER_DIR, dirs_exist_ok=True)


def saved_message(state: LoopState) -> str:
    """The event that ends a run. Where the model went is the worker's business, never the
    customer's: events and errors carry no paths."""
    best_step = state.best_metrics.get("best_step")
    if best_step is None:
        return f"Saved the model at step {state.step}."
    metrics = state.best_metrics
    if "eval_score" in metrics:
        figures = f"{metrics['eval_score']:.1%} of the eval's items passed"
        if "eval_passed" in metrics and "eval_items" in metrics:
            figures += f" ({metrics['eval_passed']} of {metrics['eval_items']})"
        return f"Saved the model from step {best_step}, the best by its eval: {figures}."
    return f"Saved the model from step {best_step}, the best by validation loss."


def write_model_card(
    output_dir: Path, spec: TrainSpec, labels: Sequence[str], metrics: dict[str, Any]
) -> None:
    card = {
        "format_version": FORMAT_VERSION,
        "task": spec.task,
        "labels": list(labels),
        "metrics": metrics,
        "spec": spec.to_dict(),
        "base_model": spec.base_model_dir,
    }
    tmp = output_dir / f"{MODEL_CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True))
    os.replace(tmp, output_dir / MODEL_CARD_FILE)  # readers never see a partial card


def count_training_tokens(path: str, text_field: str, max_seq_length: int, tokenizer_dir: str) -> int:
    """Tokens one epoch over `path` would train on (truncated, unpadded), for cost estimates."""
    return count_tokens(path, text_field, max_seq_length, load_tokenizer(tokenizer_dir))


# --- the training function ---------------------------------------------------------------------


def train(
    spec: TrainSpec,
    on_progress: Callable[[ProgressEvent], None],
    should_stop: Callable[[], bool],
) -> TrainResult:
    """Fine-tune a sequence classifier. Returns status "completed" (early stopping included:
    metrics["early_stopped"]) or "stopped" when should_stop() said so; either way output_dir holds
    the best model so far and the last checkpoint is kept for `resume_from`."""
    if spec.task != "classification":
        raise ValueError(f'this trainer fine-tunes classifiers, not task "{spec.task}"')
    hp = spec.hyperparameters

    # -- seed / device (one of several ranks when torchrun started this process)
    world = current_world()
    device = resolve_device(device_for(world, spec.device))
    torch.manual_seed(hp.seed)  # also seeds CUDA; the new head's init and dropout draw from it
    with deterministic_algorithms(device):
        # -- data
        tokenizer = load_tokenizer(spec.base_model_dir)
        data = prepare_data(
            spec.training_file,
            spec.validation_file,
            tokenizer,
            text_field=spec.text_field,
            label_field=spec.label_field,
            max_length=effective_max_length(hp, tokenizer, spec.base_model_dir),
            seed=hp.seed,
            validation_fraction=VALIDATION_FRACTION,
            labels=spec.labels,
            soft_field=spec.soft_label_field,
        )
        total_steps = math.ceil(len(data.train) / hp.batch_size) * hp.n_epochs

        # -- model
        saved = read_trainer_state(spec.resume_from) if spec.resume_from else None
        full_resume = spec.resume_from if spec.lora is None else None  # a LoRA resume loads the base
        model, fresh = load_model(full_resume or spec.base_model_dir, data.labels, tokenizer.pad_token_id)
        lora = resolve_lora(spec.lora, model, whole=[*CLASSIFIER_HEADS, *fresh])
        if saved is not None:
            check_resumable(saved, data.labels, total_steps, lora)
        # A LoRA classifier trains its adapters and, whole, what the base lacked (its head at least).
        model = attach_lora(model, lora, spec.resume_from, task_type="SEQ_CLS", modules_to_save=fresh)
        model.train()
        sharding = choose_sharding(spec.sharding, world, model, device, lora)
        # What a step runs: DDP across the ranks, or the model itself (sharded in place by FSDP).
        stepped = wrap(model, world, device, sharding)

        # -- optimizer / schedule
        optimizer = build_optimizer(model, hp, device)
        run = Run(
            spec=spec,
            device=device,
            tokenizer=tokenizer,
            data=data,
            model=model,
            optimizer=optimizer,
            total_steps=total_steps,
            on_progress=on_progress,
            world=world,
            sharding=sharding,
            lora=lora,
        )
        if saved is not None:
            run.restore(saved)
        run.log_banner()

        # -- loop (lr, forward, backward, clip, step, log; eval and checkpoints in run_epochs)
        def step(indices: Sequence[int]) -> None:
            local, share = run.share(indices)
            batch = run.train_batch(local)
            lr = lr_at(run.state.step, hp.learning_rate, run.warmup_steps, total_steps)
            loss = train_step(stepped, optimizer, batch, lr, hp, spec.distill_temperature, run.dtype, share)
            n_tokens = batch.n_tokens if share else 0
            if world.size > 1:  # the global batch's mean loss and token count
                loss, tokens = world.sum([loss * share / world.size, n_tokens])
                n_tokens = int(tokens)
            run.state.record_step(loss, n_tokens)
            run.emit("step", {"train_loss": loss, "learning_rate": lr})

        def validate() -> dict[str, Any]:
            return evaluate(model, run.valid_batches, data.labels, device, run.dtype)

        stopped = run.run_epochs(should_stop, step, validate if len(data.valid) else None)

        # -- save
        return run.save(stopped)


@dataclass(kw_only=True)
class RunBase:
    """What every training run shares: the epoch loop (`run_epochs`) with its bookkeeping, progress
    events, checkpoints, the trainer state saved in them, and resuming from one. `Run`
    (classifiers) and `sft.LMRun` (causal LMs) add their data, batches, banner and final save; the
    step and the evaluation are the callables their training function passes to `run_epochs`."""

    trainer_name: ClassVar[str] = "classification"  # marks the checkpoints; another trainer refuses them
    state_class: ClassVar[type[LoopState]] = LoopState

    spec: TrainSpec
    device: torch.device
    tokenizer: Any
    model: Any
    optimizer: torch.optim.Optimizer
    total_steps: int
    on_progress: Callable[[ProgressEvent], None]
    # Of several ranks (workers/runtime/distributed.py), rank 0 alone reports, checkpoints and saves.
    world: World = SINGLE
    sharding: str = "none"  # of those ranks: "ddp" or "fsdp" (distributed.choose_sharding)
    state: LoopState = field(default_factory=LoopState)
    train_lengths: list[int] = field(init=False, default_factory=list)  # each run sets it from its data

    def __post_init__(self) -> None:
        self.warmup_steps = warmup_steps_for(self.spec.hyperparameters, self.total_steps)
        # Chosen per attempt: a resume on other hardware may compute in another dtype, and is then
        # close to, not bit for bit, the uninterrupted run.
        self.dtype = resolve_precision(self.spec.precision, self.device)
        self.pad_to = 8 if self.device.type == "cuda" else 1  # tensor cores want widths in multiples of 8
        spec_dir = self.spec.checkpoint_dir
        self.checkpoint_root = Path(spec_dir) if spec_dir else Path(self.spec.output_dir) / "checkpoints"

    def run_epochs(
        self,
        should_stop: Callable[[], bool],
        step: Callable[[Sequence[int]], None],
        evaluate: Callable[[], dict[str, Any]] | None,
    ) -> bool:
        """The loop every trainer shares: the epochs' batches from where the state is, `step` on
        each, a checkpoint every spec.checkpoint_every_steps, and at each epoch's end `evaluate`
        (None: nothing to validate on), the epoch's checkpoint and early stopping. True when
        should_stop() ended it; the step it stopped at is then checkpointed for the resume."""
        hp = self.spec.hyperparameters
        state = self.state
        stopped = False
        while state.epoch < hp.n_epochs and not state.early_stopped and not stopped:
            batches = epoch_batches(self.train_lengths, hp.batch_size, hp.seed, state.epoch)
            for indices in batches[state.batch_in_epoch :]:  # a resumed run skips what it already did
                # Polled before every step, so a cancel or pause lands within one step; rank 0's
                # answer is every rank's.
                if self.world.agree(should_stop()):
                    stopped = True
                    break
                step(indices)
                every = self.spec.checkpoint_every_steps
                if every and state.step % every == 0 and state.batch_in_epoch < len(batches):
                    self.checkpoint(self.train_metrics())  # the epoch's end checkpoints anyway
            else:  # the epoch ran to its end
                self.end_epoch(evaluate)
        if stopped and self.last_checkpoint_step() != state.step:
            self.checkpoint(self.train_metrics() if state.epoch_loss_steps else {})
        return stopped

    def end_epoch(self, evaluate: Callable[[], dict[str, Any]] | None) -> None:
        metrics = self.train_metrics()
        if evaluate is not None:
            metrics.update(evaluate())
            self.emit("eval", metrics)
        # The checkpoint is named before it is written, so its own saved state can point at it as best.
        path = checkpoint_path(self.checkpoint_root, self.state.step)
        self.state.finish_epoch(metrics, str(path), self.spec.hyperparameters.early_stopping_patience)
        self.checkpoint(metrics)
        self.early_stop_message()

    def train_metrics(self) -> dict[str, Any]:
        """The current epoch's training figures so far, saved with a checkpoint."""
        return {"train_loss": self.state.mean_train_loss()}

    def share(self, indices: Sequence[int]) -> tuple[list[int], float]:
        """This rank's examples of a global batch, and the weight of their mean loss in the global
        batch's (times the ranks, as DDP averages the ranks' gradients). A rank left without any
        (a last batch smaller than the ranks) steps on one example with weight 0: every rank must
        take part in each step's gradient exchange."""
        if self.world.size == 1:
            return list(indices), 1.0
        local = self.world.shard(indices)
        if not local:
            return [indices[0]], 0.0
        return local, len(local) * self.world.size / len(indices)

    def emit(
        self, kind: str, metrics: dict[str, Any] | None = None, message: str = "", path: str = ""
    ) -> None:
        if not self.world.is_main:
            return
        self.on_progress(
            ProgressEvent(
                kind=kind,
                step=self.state.step,
                total_steps=self.total_steps,
                epoch=self.state.display_epoch(),
                metrics=metrics or {},
                message=message,
                checkpoint_dir=path or None,
                trained_tokens=self.state.trained_tokens,
            )
        )

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        path = checkpoint_path(self.checkpoint_root, self.state.step)
        info = CheckpointInfo(self.state.step, self.state.display_epoch(), str(path), metrics)
        dropped = track_checkpoint(self.state, info)
        weights, optimizer_state = None, None
        if self.sharding == "fsdp":  # every rank gives its shards; rank 0 gets them whole
            weights = gathered_weights(self.model)
            optimizer_state = gathered_optimizer_state(self.optimizer)
        if not self.world.is_main:  # the same bookkeeping on every rank; rank 0 writes
            return
        self.write_checkpoint(path, self.trainer_state(metrics, optimizer_state), weights)
        for old in dropped:  # only once the new one is safely on disk
            shutil.rmtree(old, ignore_errors=True)
        self.emit("checkpoint", metrics, f"checkpoint at step {self.state.step}", str(path))

    def write_checkpoint(
        self, path: Path, trainer_state: dict[str, Any], weights: dict[str, torch.Tensor] | None = None
    ) -> None:
        write_checkpoint(path, self.model, self.tokenizer, trainer_state, weights)

    def trainer_state(
        self, metrics: dict[str, Any], optimizer_state: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Everything but the weights; only tensors and plain containers, so weights_only loads it.
        `optimizer_state`: the optimizer's, gathered whole, when its own is FSDP shards."""
        return {
            "format_version": FORMAT_VERSION,
            "trainer": self.trainer_name,
            "step": self.state.step,
            "total_steps": self.total_steps,
            "precision": self.precision_name(),
            **self.trainer_state_extras(),
            "spec": self.spec.to_dict(),
            "metrics": metrics,
            "optimizer": optimizer_state or self.optimizer.state_dict(),
            # The schedule is a pure function of the step (lr_at), so its state is just its inputs.
            "scheduler": {
                "name": "linear_warmup_decay",
                "peak_lr": self.spec.hyperparameters.learning_rate,
                "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps,
                "last_step": self.state.step,
            },
            "rng": rng_state(),
            "loop": asdict(self.state),
        }

    def devices_text(self) -> str:
        """Where the run trains, for its banner: "device cuda:0", or "2 devices (cpu, data-parallel)"."""
        if self.world.size == 1:
            return f"device {self.device}"
        sharded = ", FSDP-sharded" if self.sharding == "fsdp" else ""
        return f"{self.world.size} devices ({self.device.type}, data-parallel{sharded})"

    def precision_name(self) -> str:
        """The dtype forward passes compute in ("bfloat16" or "float32"), for banners and checkpoints."""
        return str(self.dtype).removeprefix("torch.")

    def trainer_state_extras(self) -> dict[str, Any]:
        """What a resumed run of this trainer checks it matches (labels, LoRA settings)."""
        return {}

    def restore(self, saved: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])  # moves the moments to the params' device
        if self.sharding == "fsdp":  # checkpoints hold the whole state: each rank keeps its shard
            shard_optimizer_state(self.optimizer)
        restore_rng_state(saved["rng"])  # dropout continues exactly where the interrupted run was
        self.state = self.state_class(**saved["loop"])
        self.adopt_checkpoints(int(saved["step"]))

    def adopt_checkpoints(self, resumed_step: int) -> None:
        """The restored state names checkpoints by the paths of the attempt that wrote them: its own
        work directory, perhaps on another machine, perhaps already removed. Keep only what this
        attempt owns: the checkpoint it resumed from, and a copy of the best one when it is still on
        this disk; otherwise the resumed checkpoint stands in for the best. Never delete (or save
        the final model from) another attempt's directory."""
        assert self.spec.resume_from is not None
        resumed = str(self.spec.resume_from)
        state = self.state
        info = next((c for c in state.checkpoints if c["step"] == resumed_step), None)
        state.checkpoints = [{**info, "path": resumed}] if info else []
        best = state.best_checkpoint
        if best is None or best == resumed:
            return
        if Path(best).name == checkpoint_path(self.checkpoint_root, resumed_step).name:
            state.best_checkpoint = resumed
        elif Path(best).is_dir():
            copy = self.checkpoint_root / Path(best).name
            if not copy.exists() and self.world.is_main:
                shutil.copytree(best, copy)
            state.best_checkpoint = str(copy)
        else:
            metrics = (info or {}).get("metrics") or {}
            state.best_checkpoint = resumed
            state.best_valid_loss = metrics.get("valid_loss", math.inf)
            state.best_score = metrics.get("eval_score", -math.inf)
            state.best_metrics = (
                {**metrics, "best_step": resumed_step, "best_epoch": info["epoch"]}
                if info and ("valid_loss" in metrics or "eval_score" in metrics)
                else {}
            )

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights the final save writes when no checkpoint is the best: an FSDP run's gathered
        whole (every rank takes part), None for the model's own."""
        if self.sharding == "fsdp" and self.state.best_checkpoint is None:
            return gathered_weights(self.model)
        return None

    def last_checkpoint_step(self) -> int:
        return self.state.checkpoints[-1]["step"] if self.state.checkpoints else -1

    def early_stop_message(self) -> None:
        if self.state.early_stopped:
            waited, best_step = self.state.evals_without_improvement, self.state.best_metrics.get("best_step")
            what = "eval score" if "eval_score" in self.state.best_metrics else "valid_loss"
            message = f"Early stopping: no better {what} for {waited} evaluations; keeping step {best_step}"
            self.emit("log", message=message)


@dataclass(kw_only=True)
class Run(RunBase):
    """A classifier's run: its data, batches, banner and final save."""

    data: PreparedData
    lora: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.train_lengths = self.data.train.lengths()
        # Validation batches never change: collate them once, longest first, twice the batch (no grads).
        self.valid_batches = [
            collate(self.data.valid, indices, self.tokenizer.pad_token_id, self.pad_to)
            for indices in eval_batches(self.data.valid.lengths(), self.spec.hyperparameters.batch_size * 2)
        ]

    def train_batch(self, indices: Sequence[int]) -> Batch:
        return collate(self.data.train, indices, self.tokenizer.pad_token_id, self.pad_to).to(self.device)

    def trainer_state_extras(self) -> dict[str, Any]:
        return {"labels": self.data.labels, "lora": self.lora}

    def log_banner(self) -> None:
        hp = self.spec.hyperparameters
        n_train, n_valid = len(self.data.train), len(self.data.valid)
        trainable, total = parameter_counts(self.model)
        message = (
            f"Running training: {n_train} examples ({n_valid} for validation), {hp.n_epochs} epochs, "
            f"batch size {hp.batch_size}, {self.total_steps} total steps ({self.warmup_steps} warmup), "
            f"learning rate {hp.learning_rate:g}, {len(self.data.labels)} labels, {lora_text(self.lora)}, "
            f"{trainable:,} of {total:,} parameters trainable, {self.devices_text()}, {self.precision_name()}"
        )
        figures = {
            "train_examples": n_train,
            "valid_examples": n_valid,
            "labels": self.data.labels,
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
        weights = self.final_weights()
        if self.world.is_main:
            save_final_model(output_dir, self.state.best_checkpoint, self.model, self.tokenizer, weights)
            write_model_card(output_dir, self.spec, self.data.labels, metrics)
        self.emit("log", message=saved_message(self.state))
        return TrainResult(
            status="stopped" if stopped else "completed",
            model_dir=str(output_dir),
            labels=list(self.data.labels),
            metrics=metrics,
            steps=self.state.step,
            trained_tokens=self.state.trained_tokens,
            checkpoints=[CheckpointInfo(**info) for info in self.state.checkpoints],
        )


def check_resumable(
    saved: dict[str, Any], labels: list[str], total_steps: int, lora: dict[str, Any] | None = None
) -> None:
    # .get: a generation (sft) checkpoint has no labels, and is refused here with the same message;
    # a classifier's checkpoint from before LoRA has none either, and was a full fine-tune.
    if saved.get("labels") != labels or saved.get("total_steps") != total_steps or saved.get("lora") != lora:
        raise ValueError(
            f"the checkpoint was written for a different run (labels {saved.get('labels')}, "
            f"{saved.get('total_steps')} steps, LoRA {saved.get('lora')}; this run has labels {labels}, "
            f"{total_steps} steps, LoRA {lora})"
        )


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), tied weights counted once: the banner's measure of what a LoRA run trains."""
    seen: set[int] = set()
    trainable = total = 0
    for name, parameter in model.named_parameters():
        # peft keeps a frozen copy of each module it trains whole: the model has only the trained one.
        if id(parameter) in seen or ".original_module." in name:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


def lora_text(lora: dict[str, Any] | None) -> str:
    """How a run trains, for its banner: "full fine-tune", or the LoRA settings."""
    if lora is None:
        return "full fine-tune"
    return f"LoRA r={lora['r']} alpha={lora['alpha']} on {lora['target_modules']}"
