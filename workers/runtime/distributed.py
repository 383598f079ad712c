"""One fine-tune on several devices: data-parallel training launched with torchrun, for a job that
asks for more than one device (docs/architecture.md, "Training on several devices").

Each process (a *rank*) takes its share of every global batch, and the ranks average their gradients,
each rank's loss being weighted by its share of the batch, so a step is the step one process would
take on the whole batch (`tests/workers/runtime/test_distributed.py` checks the losses match). How
the ranks hold the model (`choose_sharding`):
- DDP: each rank holds all of it, with its gradients and optimizer state;
- FSDP (torch's `fully_shard`): each rank holds 1/N of the weights, gradients and optimizer state,
  and gathers one transformer block at a time for its forward and backward passes, so a model
  whose training state does not fit one device still trains. Checkpoints and the final model are
  gathered whole (`gathered_weights`, `gathered_optimizer_state`): the same files whichever way the
  ranks trained, and a run resumes from them on any number of devices.
Everything else stays as in one process: the same batches in the same order, the same schedule,
evaluation (every rank evaluates the same weights, so every rank takes the same early-stopping
decision without talking), and checkpoints, progress and the final model written by rank 0 only.

The worker's task launches the ranks (`run_distributed`) and stays the job's single voice. Rank 0
reports to it over a Unix socket: its progress events, and before each step the question one process
asks itself, whether to stop (cancel, pause, the job's max_cost, the spend cap), answered only once
every earlier event is recorded; rank 0 passes the answer to the others. CUDA ranks talk over NCCL,
CPU ranks over gloo (which is how the tests run two ranks).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from workers.runtime.specs import (
    CheckpointInfo,
    ProgressEvent,
    TrainingDataError,
    TrainResult,
    TrainSpec,
)

SPEC_FILE, RESULT_FILE, ERROR_FILE, LOG_FILE = ("spec.json", "result.json", "error.json", "ranks.log")
RELAY_ADDRESS = "MODELWORKS_RANKS_RELAY"  # the worker's socket that rank 0 reports to


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one run; `SINGLE` outside distributed training."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's share of a global batch: every size-th example, from its rank on."""
        return list(indices[self.rank :: self.size])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (float64: token counts stay exact)."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return [float(value) for value in tensor.tolist()]

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank."""
        if self.size == 1:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())


SINGLE = World()


def _collective_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current_world() -> World:
    """The world torchrun started this process in (its RANK and WORLD_SIZE), joined on first use;
    `SINGLE` when it was not started by torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def device_for(world: World, requested: str) -> str:
    """A rank's own GPU ("auto" on a CUDA machine), else what the spec asked for."""
    if world.size > 1 and requested == "auto" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return requested


# A full fine-tune with AdamW keeps 16 bytes a parameter on its device: float32 weights, gradients
# and the optimizer's two moments. Activations and the allocator's slack need the rest.
TRAINING_BYTES_PER_PARAMETER = 16
DEVICE_FRACTION_FOR_STATE = 0.6


def choose_sharding(
    requested: str, world: World, model: torch.nn.Module, device: torch.device, lora: object
) -> str:
    """How the ranks hold the model: "none" (one process), "ddp" or "fsdp".

    A LoRA run is data-parallel: its base is frozen (no gradients, no optimizer state) and what it
    trains is small. Otherwise `requested` ("ddp" or "fsdp", the worker's TRAINING_SHARDING) stands;
    "auto" shards a model whose training state would take more than 60% of one GPU, and never on
    CPUs, where the ranks share one memory and DDP is the faster of the two."""
    if world.size == 1:
        return "none"
    if lora is not None:
        return "ddp"
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "ddp"
    state = sum(p.numel() for p in model.parameters()) * TRAINING_BYTES_PER_PARAMETER
    memory = torch.cuda.get_device_properties(device).total_memory
    return "fsdp" if state > DEVICE_FRACTION_FOR_STATE * memory else "ddp"


def wrap(
    model: torch.nn.Module, world: World, device: torch.device, sharding: str = "ddp"
) -> torch.nn.Module:
    """Puts `model` on `device` and returns the module a training step runs.

    One process: `model` itself. DDP: DDP around `model`; its weights stay `model`'s, so checkpoints,
    evaluation and the final save use `model`. FSDP: `model` itself, sharded in place (its repeated
    blocks each a unit of their own, the rest a unit with the root), each rank's shards placed on
    its device by `fully_shard`, never the whole model first: it may not fit."""
    if sharding == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world.size,))
        for block in repeated_blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    torch.nn.Module.to(model, device)
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's layers: the entries of each outermost ModuleList of two or more modules of
    one class (BERT's `encoder.layer`, GPT-2's `h`, Llama's `layers`). Sharded one by one, only one
    block's weights are whole at a time; embeddings, heads and final norms stay with the root, so a
    head tied to the input embeddings stays one weight."""
    blocks: list[torch.nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{prefix}.") for prefix in taken):
            continue
        one_class = len({type(entry) for entry in module.children()}) == 1
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and one_class:
            blocks.extend(module)
            taken.append(name)
    return blocks


def _whole(value: Any) -> Any:
    """A sharded (FSDP) tensor gathered whole onto the CPU; any other value as it is."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor().cpu() if isinstance(value, DTensor) else value


def gathered_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every FSDP shard gathered whole, on the CPU: what one process
    would save. A collective: every rank calls it, in step."""
    whole: dict[int, torch.Tensor] = {}  # by parameter: a tied weight is gathered once and stays one
    weights = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in whole:
            whole[id(value)] = _whole(value).detach()
        weights[name] = whole[id(value)]
    return weights


def gathered_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with its FSDP-sharded moments gathered whole: the format one
    process saves, so that any number of devices resumes from it. A collective, as above."""
    state = optimizer.state_dict()
    state["state"] = {
        index: {key: _whole(value) for key, value in moments.items()}
        for index, moments in state["state"].items()
    }
    return state


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After `load_state_dict` of a whole (gathered) optimizer state into an FSDP run's optimizer:
    each moment becomes this rank's shard of it, laid out as its parameter is. Every rank read the
    same file, so each takes its own slice without talking (src_data_rank=None)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for parameter, moments in optimizer.state.items():
        if not isinstance(parameter, DTensor):
            continue
        for key, value in moments.items():
            if (
                isinstance(value, torch.Tensor)
                and not isinstance(value, DTensor)
                and value.shape == parameter.shape
            ):
                moments[key] = distribute_tensor(
                    value.to(parameter.device),
                    parameter.device_mesh,
                    parameter.placements,
                    src_data_rank=None,
                )


# --- the worker's side: launching the ranks and relaying them --------------------------------------


def run_distributed(
    spec: TrainSpec,
    devices: int,
    on_progress: Callable[[ProgressEvent], None],
    should_stop: Callable[[], bool],
    work: Path,
    poll_seconds: float = 0.2,
) -> TrainResult:
    """Runs `spec` on `devices` ranks (torchrun, one machine) and relays them: rank 0's events go to
    `on_progress` in order, and before each step rank 0 waits for `should_stop()`, asked once every
    earlier event is handled (its bill, its checkpoint), as one process calls them. Returns rank 0's
    result; a rank's TrainingDataError is raised here with its message, running out of memory as
    MemoryError, anything else as RuntimeError."""
    work.mkdir(parents=True, exist_ok=True)
    for name in (RESULT_FILE, ERROR_FILE):
        (work / name).unlink(missing_ok=True)
    (work / SPEC_FILE).write_text(json.dumps(spec.to_dict()))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={devices}",
        "-m",
        "workers.runtime.ranks",
        str(work),
    ]
    # A socket's path must stay under about 100 bytes: a short directory of its own, not the work dir.
    sockets = Path(tempfile.mkdtemp(prefix="mw-ranks-"))
    address = str(sockets / "relay")
    env = {**os.environ, RELAY_ADDRESS: address}
    if not torch.cuda.is_available():  # CPU ranks share the cores: one BLAS pool each, not n of them
        env.setdefault("OMP_NUM_THREADS", str(max(1, torch.get_num_threads() // devices)))
    root = Path(__file__).resolve().parents[2]  # where `-m workers.runtime.ranks` is found
    relay = _Relay(address, on_progress, should_stop)
    try:
        with (work / LOG_FILE).open("ab") as log:
            # Our own module under our own interpreter: nothing of the customer's reaches the command.
            # A session of its own, so that stopping the launcher reaches nothing else of ours.
            process = subprocess.Popen(  # noqa: S603
                command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                while process.poll() is None and relay.serve(poll_seconds):
                    pass
                process.wait()  # rank 0 hung up: the ranks are saving and leaving
            finally:
                # Whatever ended the wait (the soft time limit, an error here): rank 0 finds the relay
                # closed at its next question and every rank stops there, even should the launcher
                # be gone first (the ranks run in sessions of their own).
                relay.close()
                _stop(process)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    return _outcome(process.returncode, work)


class _Relay:
    """The worker's end of the socket rank 0 reports to (`ranks.Reporter`): JSON lines,
    {"event": …} or {"ask": true}, each question answered "go" or "stop"."""

    def __init__(
        self, address: str, on_progress: Callable[[ProgressEvent], None], should_stop: Callable[[], bool]
    ) -> None:
        self.on_progress, self.should_stop = on_progress, should_stop
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(address)
        self.server.listen(1)
        self.connection: socket.socket | None = None
        self.buffer = b""

    def serve(self, timeout: float) -> bool:
        """Handles what arrives within `timeout`; False once rank 0 has hung up."""
        waiting_on = self.connection or self.server
        if not select.select([waiting_on], [], [], timeout)[0]:
            return True
        if self.connection is None:
            self.connection, _ = self.server.accept()
            return True
        chunk = self.connection.recv(1 << 16)
        if not chunk:
            return False
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "event" in message:
                self.on_progress(ProgressEvent(**message["event"]))
            else:
                self.connection.sendall(b"stop\n" if self.should_stop() else b"go\n")
        return True

    def close(self) -> None:
        for end in (self.connection, self.server):
            if end is not None:
                end.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # torchrun passes it to the ranks
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the ranks get SIGTERM as it dies (ranks.py)
        process.wait()


def _outcome(returncode: int, work: Path) -> TrainResult:
    error_path, result_path = work / ERROR_FILE, work / RESULT_FILE
    if error_path.exists():
        error = json.loads(error_path.read_text())
        if error["type"] == "TrainingDataError":
            raise TrainingDataError(error["message"])
        if (
            error["type"] in ("OutOfMemoryError", "MemoryError")
            or "can't allocate memory" in error["message"]
        ):
            raise MemoryError(error["message"])  # the job fails with out_of_memory, and is not retried
        raise RuntimeError(f"a training rank failed: {error['type']}: {error['message']}")
    if returncode != 0 or not result_path.exists():
        log = (work / LOG_FILE).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"distributed training exited with {returncode}: {log}")
    saved = json.loads(result_path.read_text())
    return TrainResult(**{**saved, "checkpoints": [CheckpointInfo(**c) for c in saved["checkpoints"]]})
