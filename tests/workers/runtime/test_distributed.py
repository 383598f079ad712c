"""Data-parallel training on two ranks (workers/runtime/distributed.py): torchrun, the gloo backend,
two CPU processes. A step on two ranks is the step one process takes on the whole global batch: the
losses match a single-process run, and so do the saved weights."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from tests.workers.runtime import test_sft, test_training  # noqa: E402
from tests.workers.runtime.conftest import sentiment_rows, write_csv  # noqa: E402
from workers.runtime.distributed import World, run_distributed  # noqa: E402
from workers.runtime.specs import ProgressEvent, TrainingDataError, TrainSpec  # noqa: E402

pytestmark = pytest.mark.slow


def without_dropout(model_dir: Path, out: Path) -> Path:
    """A copy of a tiny model with its dropout off: dropout draws differ from rank to rank, and the
    comparison is of the arithmetic, not of the random masks."""
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    for key in list(config):
        if "dropout" in key or key.endswith("_pdrop"):
            config[key] = 0.0
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def chats(tmp_path: Path) -> Path:
    rows = [test_sft.chat_row(question, answer) for question, answer in test_sft.CHATS] * 4
    return test_sft.write_jsonl(tmp_path / "chats.jsonl", rows)


def losses(events: list[ProgressEvent]) -> list[float]:
    return [event.metrics["train_loss"] for event in events if event.kind == "step"]


def on_two_ranks(
    spec: TrainSpec, work: Path, should_stop: Callable[[], bool] = lambda: False
) -> tuple[Any, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    return run_distributed(spec, 2, events.append, should_stop, work, poll_seconds=0.05), events


def same_weights(left: str, right: str) -> None:
    a, b = load_file(f"{left}/model.safetensors"), load_file(f"{right}/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_a_classifier_on_two_ranks_takes_the_single_process_steps(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    base = without_dropout(tiny_bert_dir, tmp_path / "base")
    # 21 training rows at batch 4: each epoch ends on a batch of one, which leaves the second rank
    # without an example (it takes part with a zero weight)
    data = write_csv(tmp_path / "train.csv", sentiment_rows(21))
    valid = write_csv(tmp_path / "valid.csv", sentiment_rows(8, seed=1))
    changes: dict[str, Any] = {"validation_file": str(valid), "hp": {"n_epochs": 2, "batch_size": 4}}

    alone, alone_events = test_training.run(test_training.make_spec(tmp_path, base, data, "one", **changes))
    ranks, rank_events = on_two_ranks(
        test_training.make_spec(tmp_path, base, data, "two", **changes), tmp_path / "w"
    )

    assert ranks.status == "completed" and ranks.steps == alone.steps == 12
    assert losses(rank_events) == pytest.approx(losses(alone_events), rel=1e-4)
    # the same tokens counted (billing), the same evaluations, the same checkpoints kept
    assert ranks.trained_tokens == alone.trained_tokens
    figures = [[e.metrics[k] for k in ("valid_loss", "accuracy")] for e in rank_events if e.kind == "eval"]
    assert figures == [
        pytest.approx([e.metrics[k] for k in ("valid_loss", "accuracy")], rel=1e-4)
        for e in alone_events
        if e.kind == "eval"
    ]
    assert [c.step for c in ranks.checkpoints] == [c.step for c in alone.checkpoints]
    # events in the order one process gives them, from rank 0 alone
    assert [e.kind for e in rank_events] == [e.kind for e in alone_events]
    same_weights(alone.model_dir, ranks.model_dir)


def test_a_lora_lm_on_two_ranks_takes_the_single_process_steps(
    tmp_path: Path, tiny_gpt2_dir: Path, chats: Path
) -> None:
    base = without_dropout(tiny_gpt2_dir, tmp_path / "base")
    changes: dict[str, Any] = {"lora": {"dropout": 0.0}, "hp": {"n_epochs": 1, "batch_size": 3}}

    alone, alone_events = test_sft.run(test_sft.make_spec(tmp_path, base, chats, "one", **changes))
    ranks, rank_events = on_two_ranks(
        test_sft.make_spec(tmp_path, base, chats, "two", **changes), tmp_path / "w"
    )

    assert ranks.steps == alone.steps and ranks.trained_tokens == alone.trained_tokens
    assert losses(rank_events) == pytest.approx(losses(alone_events), rel=1e-4)
    accuracy = [e.metrics["train_mean_token_accuracy"] for e in rank_events if e.kind == "step"]
    assert accuracy == pytest.approx(
        [e.metrics["train_mean_token_accuracy"] for e in alone_events if e.kind == "step"], abs=1e-6
    )
    same_weights(alone.model_dir, ranks.model_dir)
    assert (Path(ranks.model_dir) / "adapter" / "adapter_config.json").is_file()


def test_a_stop_reaches_every_rank_at_the_step_it_was_asked_and_keeps_a_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    data = write_csv(tmp_path / "train.csv", sentiment_rows(40))
    spec = test_training.make_spec(tmp_path, tiny_bert_dir, data, "two", hp={"n_epochs": 50, "batch_size": 4})
    seen: list[int] = []

    def stop_once_stepping() -> bool:
        return len(seen) >= 3

    events: list[ProgressEvent] = []

    def record(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "step":
            seen.append(event.step)

    result = run_distributed(spec, 2, record, stop_once_stepping, tmp_path / "w", poll_seconds=0.05)
    # asked before each step, once the earlier steps' events are in: it stops at the very step a
    # single process would (the budget check depends on it: the step must not run unchecked)
    assert result.status == "stopped" and result.steps == 3 and seen == [1, 2, 3]
    assert result.checkpoints and result.checkpoints[-1].step == result.steps
    assert Path(result.checkpoints[-1].path, "trainer_state.pt").is_file()


def test_a_ranks_data_error_is_the_jobs(tmp_path: Path, tiny_gpt2_dir: Path, chats: Path) -> None:
    spec = test_sft.make_spec(tmp_path, tiny_gpt2_dir, chats, "two", lora={"target_modules": ["q_proj"]})
    with pytest.raises(
        TrainingDataError, match="lora.target_modules: this model has no module named 'q_proj'"
    ):
        on_two_ranks(spec, tmp_path / "w")


def test_a_rank_takes_every_nth_example_and_an_empty_share_weighs_nothing() -> None:
    assert World(rank=1, size=2).shard([10, 11, 12, 13, 14]) == [11, 13]
    assert World(rank=0, size=2).shard([10]) == [10] and World(rank=1, size=2).shard([10]) == []
    # one process: sums are the values, and rank 0's word is final
    assert World().sum([1.5, 2.0]) == [1.5, 2.0] and World().agree(True)
