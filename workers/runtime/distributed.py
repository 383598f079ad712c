"""One fine-tune on several devices: data-parallel training (torch.distributed's DDP) launched with
torchrun, for a job that asks for more than one device (docs/architecture.md, "Training on several
devices").

Each process (a *rank*) holds the whole model and takes its share of every global batch; DDP averages
the gradients, each rank's loss being weighted by its share of the batch, so a step is the step one
process would take on the whole batch (`tests/workers/runtime/test_distributed.py` checks the losses
match). Everything else stays as in one process: the same batches in the same order, the same
schedule, evaluation (every rank evaluates the same weights, so every rank takes the same early-
stopping decision without talking), and checkpoints, progress and the final model from rank 0 only.

The worker's task launches the ranks (`run_distributed`) and stays the job's single voice: rank 0
writes its progress events to a file the task reads and reports as usual, and the task asks the ranks
to stop (cancel, pause, budget) by creating a file that rank 0 reads before each step and passes to
the others. CUDA ranks talk over NCCL, CPU ranks over gloo (which is how the tests run two ranks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from workers.runtime.specs import (
    CheckpointInfo,
    Hyperparameters,
    ProgressEvent,
    TrainingDataError,
    TrainResult,
    TrainSpec,
)

SPEC_FILE, EVENTS_FILE, RESULT_FILE, STOP_FILE, ERROR_FILE, LOG_FILE = (
    "spec.json",
    "events.jsonl",
    "result.json",
    "stop",
    "error.json",
    "ranks.log",
)
WORKER_PID = "MODELWORKS_WORKER_PID"  # the worker process that launched the ranks


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


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The module a training step runs: DDP around `model` across the ranks, or `model` itself. Its
    weights stay `model`'s: checkpoints, evaluation and the final save use `model`."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = (
        [model.device.index] if getattr(model, "device", None) and model.device.type == "cuda" else None
    )
    return DistributedDataParallel(model, device_ids=device_ids)


# --- the worker's side: launching the ranks and relaying them --------------------------------------


def run_distributed(
    spec: TrainSpec,
    devices: int,
    on_progress: Callable[[ProgressEvent], None],
    should_stop: Callable[[], bool],
    work: Path,
    poll_seconds: float = 0.2,
) -> TrainResult:
    """Runs `spec` on `devices` ranks (torchrun, one machine) and relays them: rank 0's events to
    `on_progress`, a True `should_stop()` to the ranks. Returns rank 0's result; a rank's
    TrainingDataError is raised here with its message, any other failure as a RuntimeError."""
    work.mkdir(parents=True, exist_ok=True)
    for name in (EVENTS_FILE, RESULT_FILE, STOP_FILE, ERROR_FILE):
        (work / name).unlink(missing_ok=True)
    (work / SPEC_FILE).write_text(json.dumps(spec.to_dict()))
    (work / EVENTS_FILE).touch()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={devices}",
        "-m",
        "workers.runtime.distributed",
        str(work),
    ]
    # The ranks stop by themselves should this process die outright (the hard time limit, an OOM
    # kill) and leave no one to stop them.
    env = {**os.environ, WORKER_PID: str(os.getpid())}
    if not torch.cuda.is_available():  # CPU ranks share the cores: one BLAS pool each, not n of them
        env.setdefault("OMP_NUM_THREADS", str(max(1, torch.get_num_threads() // devices)))
    root = Path(__file__).resolve().parents[2]  # where `-m workers.runtime.distributed` is found
    with (work / LOG_FILE).open("ab") as log, (work / EVENTS_FILE).open() as events:
        # Our own module under our own interpreter: nothing of the customer's reaches the command.
        # A session of its own: the launcher and its ranks are stopped together.
        process = subprocess.Popen(  # noqa: S603
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while True:
                exited = process.poll() is not None
                for line in _complete_lines(events):
                    on_progress(_event(json.loads(line)))
                if exited:
                    break
                if should_stop() and not (work / STOP_FILE).exists():
                    (work / STOP_FILE).touch()
                time.sleep(poll_seconds)
        finally:
            _stop(process)
    return _outcome(process.returncode, work)


def _complete_lines(handle: Any) -> Iterator[str]:
    # A line rank 0 is still writing stays for the next poll.
    while True:
        position = handle.tell()
        line = handle.readline()
        if not line:
            return
        if not line.endswith("\n"):
            handle.seek(position)
            return
        yield line


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # torchrun passes it to the ranks
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _outcome(returncode: int, work: Path) -> TrainResult:
    error_path, result_path = work / ERROR_FILE, work / RESULT_FILE
    if error_path.exists():
        error = json.loads(error_path.read_text())
        if error["type"] == "TrainingDataError":
            raise TrainingDataError(error["message"])
        raise RuntimeError(f"a training rank failed: {error['type']}: {error['message']}")
    if returncode != 0 or not result_path.exists():
        log = (work / LOG_FILE).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"distributed training exited with {returncode}: {log}")
    saved = json.loads(result_path.read_text())
    return TrainResult(**{**saved, "checkpoints": [CheckpointInfo(**c) for c in saved["checkpoints"]]})


def _event(saved: dict[str, Any]) -> ProgressEvent:
    return ProgressEvent(**saved)


# --- a rank's side ----------------------------------------------------------------------------------


def _spec(saved: dict[str, Any]) -> TrainSpec:
    return TrainSpec(**{**saved, "hyperparameters": Hyperparameters(**saved["hyperparameters"])})


def trainer_for(spec: TrainSpec) -> Callable[..., TrainResult]:
    if spec.task != "generation":
        from workers.runtime.training import train

        return train
    from workers.runtime.sft import train_lm

    return train_lm


def main(work: Path) -> None:
    """A rank: the spec's training, rank 0 reporting to the worker through files."""
    world = current_world()
    spec = _spec(json.loads((work / SPEC_FILE).read_text()))
    events = (work / EVENTS_FILE).open("a") if world.is_main else None

    def report(event: ProgressEvent) -> None:
        if events is not None:
            events.write(json.dumps(dataclasses.asdict(event)) + "\n")
            events.flush()

    worker = int(os.environ.get(WORKER_PID, "0"))

    def should_stop() -> bool:
        return (work / STOP_FILE).exists() or (worker > 0 and not _alive(worker))

    try:
        result = trainer_for(spec)(spec, report, should_stop)
        if world.is_main:
            _write(work / RESULT_FILE, dataclasses.asdict(result))
    except Exception as exc:
        if world.is_main or isinstance(exc, TrainingDataError):
            _write(work / ERROR_FILE, {"type": type(exc).__name__, "message": str(exc)})
        raise
    finally:
        if events is not None:
            events.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)  # the worker never reads half a file


if __name__ == "__main__":
    main(Path(sys.argv[1]))
