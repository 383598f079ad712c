"""resolve_hyperparameters and estimate_steps: pure Python, imported by the web process (no torch)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from workers.runtime.specs import (
    HyperparameterError,
    Hyperparameters,
    auto_learning_rate,
    estimate_steps,
    resolve_hyperparameters,
)


def test_auto_values_follow_the_dataset_size() -> None:
    small = resolve_hyperparameters({}, 50)
    medium = resolve_hyperparameters({"n_epochs": "auto", "batch_size": "auto"}, 2_000)
    large = resolve_hyperparameters({}, 200_000)

    assert (small.n_epochs, small.batch_size) == (10, 2)
    assert (medium.n_epochs, medium.batch_size) == (3, 16)
    assert (large.n_epochs, large.batch_size) == (1, 64)
    assert small.learning_rate == 5e-5 and small.warmup_ratio == 0.1 and small.max_seq_length == 128
    assert small.early_stopping_patience == 3 and small.seed == 42 and small.max_grad_norm == 1.0


@pytest.mark.parametrize(
    ("n_examples", "batch_size"),
    [(1, 1), (18, 1), (31, 1), (32, 2), (63, 2), (64, 4), (127, 4), (128, 8), (499, 8), (500, 16)]
    + [(1_000, 16), (4_999, 16), (5_000, 32), (49_999, 32), (50_000, 64), (10**7, 64)],
)
def test_auto_batch_size_gives_a_small_set_enough_steps_and_a_large_one_big_batches(
    n_examples: int, batch_size: int
) -> None:
    hp = resolve_hyperparameters({"n_epochs": 1}, n_examples)

    assert hp.batch_size == batch_size
    # an epoch over the whole file takes at least 16 steps, or one step an example for a smaller set
    assert estimate_steps(n_examples, hp, 0.0) >= min(n_examples, 16)


def test_a_thousand_examples_still_train_in_efficient_batches() -> None:
    hp = resolve_hyperparameters({}, 1_000)

    assert (hp.n_epochs, hp.batch_size) == (3, 16)
    assert estimate_steps(1_000, hp, 0.1) == 57 * 3  # 900 training examples, 57 batches an epoch


def test_a_lora_adapter_learns_at_a_larger_base_rate() -> None:
    full = resolve_hyperparameters({}, 100, base_learning_rate=auto_learning_rate(lora=False))
    lora = resolve_hyperparameters({}, 100, base_learning_rate=auto_learning_rate(lora=True))
    doubled = resolve_hyperparameters(
        {"learning_rate_multiplier": 2}, 100, base_learning_rate=auto_learning_rate(lora=True)
    )

    assert (full.learning_rate, lora.learning_rate, doubled.learning_rate) == (5e-5, 1e-3, 2e-3)


def test_explicit_values_win() -> None:
    hp = resolve_hyperparameters(
        {
            "n_epochs": 4,
            "batch_size": 32,
            "learning_rate_multiplier": 2,
            "warmup_ratio": 0,
            "weight_decay": 0.1,
            "max_seq_length": 64,
            "early_stopping_patience": 0,
            "seed": 7,
        },
        1_000,
        base_learning_rate=1e-4,
    )

    assert hp == Hyperparameters(
        n_epochs=4,
        batch_size=32,
        learning_rate=2e-4,
        warmup_ratio=0.0,
        weight_decay=0.1,
        max_seq_length=64,
        early_stopping_patience=0,
        seed=7,
    )


def test_absolute_learning_rate_and_seed_fallback() -> None:
    assert resolve_hyperparameters({"learning_rate": 3e-5}, 10).learning_rate == 3e-5
    assert resolve_hyperparameters({}, 10, seed=123).seed == 123
    assert resolve_hyperparameters({"seed": 5}, 10, seed=123).seed == 5


def test_resolved_values_resolve_to_themselves() -> None:
    hp = resolve_hyperparameters({"n_epochs": 2, "learning_rate_multiplier": 0.5}, 700)

    assert resolve_hyperparameters(hp.to_dict(), 700) == hp
    assert hp.to_dict()["learning_rate"] == 2.5e-5


@pytest.mark.parametrize(
    ("requested", "param", "message"),
    [
        ({"n_epochs": 0}, "n_epochs", 'n_epochs must be an integer between 1 and 50 or "auto"'),
        ({"n_epochs": 51}, "n_epochs", 'n_epochs must be an integer between 1 and 50 or "auto"'),
        ({"n_epochs": True}, "n_epochs", 'n_epochs must be an integer between 1 and 50 or "auto"'),
        ({"n_epochs": 2.0}, "n_epochs", 'n_epochs must be an integer between 1 and 50 or "auto"'),
        ({"n_epochs": "3"}, "n_epochs", 'n_epochs must be an integer between 1 and 50 or "auto"'),
        ({"batch_size": 257}, "batch_size", 'batch_size must be an integer between 1 and 256 or "auto"'),
        (
            {"learning_rate_multiplier": 0},
            "learning_rate_multiplier",
            'learning_rate_multiplier must be a number greater than 0 or "auto"',
        ),
        (
            {"learning_rate_multiplier": float("nan")},
            "learning_rate_multiplier",
            'learning_rate_multiplier must be a number greater than 0 or "auto"',
        ),
        (
            {"learning_rate": -1e-5},
            "learning_rate",
            'learning_rate must be a number greater than 0 or "auto"',
        ),
        (
            {"learning_rate": 1e-5, "learning_rate_multiplier": 2},
            "learning_rate",
            "give either learning_rate or learning_rate_multiplier, not both",
        ),
        ({"warmup_ratio": 0.6}, "warmup_ratio", 'warmup_ratio must be a number between 0 and 0.5 or "auto"'),
        ({"weight_decay": -0.1}, "weight_decay", 'weight_decay must be a number between 0 and 1 or "auto"'),
        (
            {"max_seq_length": 4},
            "max_seq_length",
            'max_seq_length must be an integer between 8 and 512 or "auto"',
        ),
        (
            {"early_stopping_patience": 21},
            "early_stopping_patience",
            'early_stopping_patience must be an integer between 0 and 20 or "auto"',
        ),
        ({"seed": -1}, "seed", 'seed must be an integer between 0 and 2147483647 or "auto"'),
        ({"max_grad_norm": 0}, "max_grad_norm", 'max_grad_norm must be a number greater than 0 or "auto"'),
    ],
)
def test_it_rejects_bad_values_with_a_clear_message(
    requested: dict[str, Any], param: str, message: str
) -> None:
    with pytest.raises(HyperparameterError) as caught:
        resolve_hyperparameters(requested, 100)

    assert caught.value.param == f"hyperparameters.{param}"
    assert str(caught.value) == message


def test_it_names_an_unknown_key() -> None:
    with pytest.raises(HyperparameterError, match='unknown hyperparameter "epochs"') as caught:
        resolve_hyperparameters({"epochs": 3}, 100)

    assert caught.value.param == "hyperparameters.epochs"


def test_estimate_steps_counts_the_training_side_of_the_split() -> None:
    hp = Hyperparameters(n_epochs=3, batch_size=8, learning_rate=1e-4)

    assert estimate_steps(96, hp, 0.1) == 33  # 86 training examples → 11 batches an epoch
    assert estimate_steps(96, hp, 0.0) == 36  # a validation file: all 96 train
    assert estimate_steps(0, hp, 0.1) == 0


def test_specs_do_not_import_torch() -> None:
    code = "import sys, workers.runtime.specs; sys.exit('torch' in sys.modules or 'django' in sys.modules)"

    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
