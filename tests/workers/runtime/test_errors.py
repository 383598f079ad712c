"""Which runtime errors are the customer's: TrainingDataError for bad data or settings, a plain
ValueError for a state of ours that cannot be (the worker reports the first to the customer)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from workers.runtime.data import prepare_data, read_examples  # noqa: E402
from workers.runtime.lm_data import read_records  # noqa: E402
from workers.runtime.lora import resolve_lora  # noqa: E402
from workers.runtime.specs import TrainingDataError  # noqa: E402
from workers.runtime.training import check_resumable  # noqa: E402


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (
            '{"text": "hi", "label": "a"}\nnot json\n',
            "train.jsonl",
            "train.jsonl, line 2: invalid JSON (Expecting value)",
        ),
        ("words,label\nhello,a\n", "train.csv", 'train.csv: no "text" column in the header (words, label)'),
        ("text,label\nhello,\n", "train.csv", 'train.csv, line 2: "label" is missing or empty'),
        ("text,label\n", "train.csv", "train.csv: no examples"),
    ],
)
def test_bad_rows_are_training_data_errors(tmp_path: Path, content: str, name: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TrainingDataError) as raised:
        read_examples(path)
    assert str(raised.value) == message  # the file's name only, never a worker path


def test_a_single_label_is_a_training_data_error(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\nhello,a\nworld,a\n")
    with pytest.raises(
        TrainingDataError, match=r"at least 2 distinct labels in the training data, found \['a'\]"
    ):
        prepare_data(
            str(path),
            None,
            None,
            text_field="text",
            label_field="label",
            max_length=8,
            seed=0,
            validation_fraction=0.0,
        )


def test_an_empty_chat_file_and_a_bad_lora_module_are_training_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text("\n")
    with pytest.raises(TrainingDataError, match="chat.jsonl: no examples"):
        read_records(str(path))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=16))
    with pytest.raises(TrainingDataError, match="this model has no module named 'q_proj'"):
        resolve_lora({"target_modules": ["q_proj"]}, gpt2)


def test_a_checkpoint_of_another_run_is_not_the_customers_error() -> None:
    with pytest.raises(ValueError, match="written for a different run") as raised:
        check_resumable({"labels": ["a", "b"], "total_steps": 10}, ["a", "c"], 10)
    assert not isinstance(raised.value, TrainingDataError)
