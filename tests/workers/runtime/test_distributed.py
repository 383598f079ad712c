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
from workers.runtime.distributed import (  # noqa: E402
    World,
    choose_sharding,
    repeated_blocks,
    run_distributed,
)
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


# --- FSDP: each rank holds a shard of the weights, gradients and optimizer state -------------------


def banner(events: list[ProgressEvent]) -> str:
    return next(e.message for e in events if e.kind == "log" and e.message.startswith("Running training"))


def test_a_classifier_sharded_with_fsdp_takes_the_single_process_steps(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    base = without_dropout(tiny_bert_dir, tmp_path / "base")
    data = write_csv(tmp_path / "train.csv", sentiment_rows(21))  # the last batch leaves rank 1 empty
    valid = write_csv(tmp_path / "valid.csv", sentiment_rows(8, seed=1))
    changes: dict[str, Any] = {"validation_file": str(valid), "hp": {"n_epochs": 2, "batch_size": 4}}

    alone, alone_events = test_training.run(test_training.make_spec(tmp_path, base, data, "one", **changes))
    ranks, rank_events = on_two_ranks(
        test_training.make_spec(tmp_path, base, data, "two", sharding="fsdp", **changes), tmp_path / "w"
    )

    assert "2 devices (cpu, data-parallel, FSDP-sharded)" in banner(rank_events)
    assert ranks.status == "completed" and ranks.steps == alone.steps == 12
    assert losses(rank_events) == pytest.approx(losses(alone_events), rel=1e-4)
    assert ranks.trained_tokens == alone.trained_tokens
    figures = [e.metrics["valid_loss"] for e in rank_events if e.kind == "eval"]
    assert figures == pytest.approx(
        [e.metrics["valid_loss"] for e in alone_events if e.kind == "eval"], rel=1e-4
    )
    # checkpoints and the final model are the whole model, in the files one process writes
    assert [c.step for c in ranks.checkpoints] == [c.step for c in alone.checkpoints]
    same_weights(alone.model_dir, ranks.model_dir)
    same_weights(alone.checkpoints[-1].path, ranks.checkpoints[-1].path)


def test_an_lm_with_tied_embeddings_sharded_with_fsdp_saves_the_single_process_weights(
    tmp_path: Path, tiny_gpt2_dir: Path, chats: Path
) -> None:
    base = without_dropout(tiny_gpt2_dir, tmp_path / "base")
    changes: dict[str, Any] = {"hp": {"n_epochs": 1, "batch_size": 3}}

    alone, alone_events = test_sft.run(test_sft.make_spec(tmp_path, base, chats, "one", **changes))
    ranks, rank_events = on_two_ranks(
        test_sft.make_spec(tmp_path, base, chats, "two", sharding="fsdp", **changes), tmp_path / "w"
    )

    assert "FSDP-sharded" in banner(rank_events)
    assert ranks.steps == alone.steps and ranks.trained_tokens == alone.trained_tokens
    assert losses(rank_events) == pytest.approx(losses(alone_events), rel=1e-4)
    same_weights(alone.model_dir, ranks.model_dir)
    # GPT-2's head is its input embedding: saved as one weight, as one process saves it
    config = json.loads((Path(ranks.model_dir) / "config.json").read_text())
    assert config.get("tie_word_embeddings", True)
    assert (
        load_file(f"{ranks.model_dir}/model.safetensors").keys()
        == load_file(f"{alone.model_dir}/model.safetensors").keys()
    )


def test_an_fsdp_run_resumes_exactly_from_its_checkpoint_on_any_number_of_devices(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    base = without_dropout(tiny_bert_dir, tmp_path / "base")
    data = write_csv(tmp_path / "train.csv", sentiment_rows(24))
    changes: dict[str, Any] = {"hp": {"n_epochs": 2, "batch_size": 4}, "checkpoint_every_steps": 3}
    alone, _ = test_training.run(test_training.make_spec(tmp_path, base, data, "one", **changes))

    # two sharded ranks stop at step 3; the checkpoint holds the whole model and optimizer state
    first = test_training.make_spec(tmp_path, base, data, "first", sharding="fsdp", **changes)
    stopped = run_distributed(
        first, 2, lambda event: None, test_training.stop_after(3), tmp_path / "w1", poll_seconds=0.05
    )
    assert stopped.status == "stopped" and stopped.steps == 3
    checkpoint = stopped.checkpoints[-1].path

    # resumed sharded on two ranks, and in one process: both end where the uninterrupted run did.
    # Each from its own copy, as a worker downloads it: a run drops the checkpoints it moves past.
    for name, devices in (("sharded", 2), ("single", 1)):
        copy = shutil.copytree(checkpoint, tmp_path / f"resume-{name}")
        spec = test_training.make_spec(
            tmp_path, base, data, name, sharding="fsdp", resume_from=str(copy), **changes
        )
        if devices == 1:
            resumed, _ = test_training.run(spec)
        else:
            resumed = run_distributed(spec, 2, lambda event: None, lambda: False, tmp_path / f"w-{name}")
        assert resumed.status == "completed" and resumed.steps == alone.steps
        same_weights(alone.model_dir, resumed.model_dir)


def test_sharding_is_fsdp_only_where_asked_or_needed() -> None:
    model = torch.nn.Linear(4, 4)
    two, cpu = World(rank=0, size=2), torch.device("cpu")
    assert choose_sharding("fsdp", World(), model, cpu, None) == "none"  # one process: nothing to share
    assert choose_sharding("fsdp", two, model, cpu, None) == "fsdp"
    assert choose_sharding("ddp", two, model, cpu, None) == "ddp"
    assert choose_sharding("auto", two, model, cpu, None) == "ddp"  # CPU ranks share one memory
    assert choose_sharding("fsdp", two, model, cpu, {"r": 8}) == "ddp"  # LoRA: a frozen base, small state


def test_the_blocks_sharded_one_by_one_are_the_transformers_layers(
    tiny_gpt2_dir: Path, tiny_bert_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert repeated_blocks(gpt2) == list(gpt2.transformer.h)
    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    assert repeated_blocks(bert) == list(bert.bert.encoder.layer)
