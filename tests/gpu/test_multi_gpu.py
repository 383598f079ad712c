"""A fine-tune on two GPUs (NCCL), data-parallel and FSDP-sharded: the steps one GPU takes, and
the same saved weights. Skipped without two CUDA devices; tests/workers/runtime/test_distributed.py
runs the same comparisons on CPU ranks over gloo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.workers.runtime import test_sft, test_training  # noqa: E402
from tests.workers.runtime.conftest import sentiment_rows, write_csv  # noqa: E402
from tests.workers.runtime.test_distributed import (  # noqa: E402
    banner,
    chats,  # noqa: F401  (a fixture)
    losses,
    on_two_ranks,
    without_dropout,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices"
    ),
]


def close_weights(left: str, right: str) -> None:
    from safetensors.torch import load_file

    a, b = load_file(f"{left}/model.safetensors"), load_file(f"{right}/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # GPU kernels are not bit-reproducible across batch shapes: close, not equal
        assert torch.allclose(a[key], b[key], atol=1e-4), key


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_a_classifier_on_two_gpus_takes_the_one_gpu_steps(
    tmp_path: Path, tiny_bert_dir: Path, sharding: str
) -> None:
    base = without_dropout(tiny_bert_dir, tmp_path / "base")
    data = write_csv(tmp_path / "train.csv", sentiment_rows(21))
    changes: dict[str, Any] = {"hp": {"n_epochs": 2, "batch_size": 4}, "device": "auto"}

    alone, alone_events = test_training.run(test_training.make_spec(tmp_path, base, data, "one", **changes))
    ranks, rank_events = on_two_ranks(
        test_training.make_spec(tmp_path, base, data, "two", sharding=sharding, **changes), tmp_path / "w"
    )

    assert "device cuda" in banner(alone_events)
    assert "2 devices (cuda, data-parallel" in banner(rank_events)
    assert ("FSDP-sharded" in banner(rank_events)) == (sharding == "fsdp")
    assert ranks.steps == alone.steps and ranks.trained_tokens == alone.trained_tokens
    assert losses(rank_events) == pytest.approx(losses(alone_events), rel=1e-3)
    close_weights(alone.model_dir, ranks.model_dir)


def test_an_lm_sharded_on_two_gpus_saves_the_one_gpu_weights(
    tmp_path: Path,
    tiny_gpt2_dir: Path,
    chats: Path,  # noqa: F811
) -> None:
    base = without_dropout(tiny_gpt2_dir, tmp_path / "base")
    changes: dict[str, Any] = {"hp": {"n_epochs": 1, "batch_size": 3}, "device": "auto"}

    alone, alone_events = test_sft.run(test_sft.make_spec(tmp_path, base, chats, "one", **changes))
    ranks, rank_events = on_two_ranks(
        test_sft.make_spec(tmp_path, base, chats, "two", sharding="fsdp", **changes), tmp_path / "w"
    )

    assert "2 devices (cuda, data-parallel, FSDP-sharded)" in banner(rank_events)
    assert losses(rank_events) == pytest.approx(losses(alone_events), rel=1e-3)
    close_weights(alone.model_dir, ranks.model_dir)
