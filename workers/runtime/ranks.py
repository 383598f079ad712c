"""A rank of a fine-tune on several devices: what `torchrun` starts, once per device
(`python -m workers.runtime.ranks <work dir>`; workers/runtime/distributed.py launches it and
relays it, docs/architecture.md, "Training on several devices").

Every rank runs the spec's trainer, which joins the process group itself (`current_world`). Rank 0
reports to the worker over its socket and asks it before each step; the others follow rank 0's
answer (`World.agree`). Rank 0 writes the result, and the first rank to fail writes why.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from workers.runtime.distributed import ERROR_FILE, RELAY_ADDRESS, RESULT_FILE, SPEC_FILE, current_world
from workers.runtime.specs import Hyperparameters, ProgressEvent, TrainResult, TrainSpec

_PR_SET_PDEATHSIG = 1  # prctl(2)


def _spec(saved: dict[str, Any]) -> TrainSpec:
    return TrainSpec(**{**saved, "hyperparameters": Hyperparameters(**saved["hyperparameters"])})


def trainer_for(spec: TrainSpec) -> Callable[..., TrainResult]:
    if spec.task != "generation":
        from workers.runtime.training import train

        return train
    from workers.runtime.sft import train_lm

    return train_lm


class Reporter:
    """Rank 0's end of the worker's socket (`_Relay`)."""

    def __init__(self, address: str) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.connect(address)
        self.answers = self.socket.makefile("rb")

    def report(self, event: ProgressEvent) -> None:
        with contextlib.suppress(OSError):  # the worker is gone: the next question stops the run
            self.socket.sendall(json.dumps({"event": dataclasses.asdict(event)}).encode() + b"\n")

    def should_stop(self) -> bool:
        """The worker's answer; True when it is gone (it hung up, or died): nobody would record more."""
        try:
            self.socket.sendall(b'{"ask": true}\n')
            return bool(self.answers.readline() != b"go\n")
        except OSError:
            return True


def main(work: Path) -> None:
    """A rank: the spec's training, rank 0 reporting to the worker and asking it before each step."""
    _die_with_launcher()
    world = current_world()
    spec = _spec(json.loads((work / SPEC_FILE).read_text()))
    try:
        if world.is_main:
            reporter = Reporter(os.environ[RELAY_ADDRESS])
            result = trainer_for(spec)(spec, reporter.report, reporter.should_stop)
            _write(work / RESULT_FILE, dataclasses.asdict(result))
        else:  # rank 0's answers reach the others through World.agree
            trainer_for(spec)(spec, lambda event: None, lambda: False)
    except Exception as exc:
        with contextlib.suppress(FileExistsError):  # the first rank to fail says why
            _write(work / ERROR_FILE, {"type": type(exc).__name__, "message": str(exc)}, exclusive=True)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _die_with_launcher() -> None:
    """SIGTERM when torchrun dies, however it dies: a rank never trains on with nobody watching."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _write(path: Path, content: dict[str, Any], exclusive: bool = False) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content))
    if exclusive:  # the first writer wins: FileExistsError for the others
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink()
        return
    os.replace(tmp, path)  # the worker never reads half a file


if __name__ == "__main__":
    main(Path(sys.argv[1]))
