"""The classification training runtime on a tiny BERT (seconds on a CPU), plus one slow MiniLM run."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from tests.workers.runtime.conftest import sentiment_rows, write_csv  # noqa: E402
from workers.runtime import training  # noqa: E402
from workers.runtime.data import (  # noqa: E402
    EncodedSplit,
    Example,
    collate,
    epoch_batches,
    length_grouped_batches,
    read_examples,
    sorted_labels,
    stratified_split,
)
from workers.runtime.metrics import classification_metrics  # noqa: E402
from workers.runtime.models import cpu_has_bf16  # noqa: E402
from workers.runtime.specs import Hyperparameters, ProgressEvent, TrainResult, TrainSpec  # noqa: E402
from workers.runtime.training import (  # noqa: E402
    MODEL_CARD_FILE,
    TRAINER_STATE_FILE,
    count_training_tokens,
    lr_at,
    read_trainer_state,
    resolve_precision,
    train,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: a 32-wide model gains nothing from more, and on a busy machine (the
    whole suite, Celery workers alongside) OpenMP's spinning threads make each step up to ten
    times slower. Even MiniLM loses only ~1.5x on an idle machine and gains far more on a busy one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FAST = Hyperparameters(n_epochs=3, batch_size=8, learning_rate=3e-3, early_stopping_patience=0)


def make_spec(
    tmp_path: Path, model_dir: Path, training_file: Path, name: str = "run", **changes: Any
) -> TrainSpec:
    hyperparameters = dataclasses.replace(FAST, **changes.pop("hp", {}))
    # float32 unless a test asks: "auto" picks bf16 on some hosts, and these tests must not vary by host.
    changes.setdefault("precision", "float32")
    return TrainSpec(
        job_id=f"ftjob-{name}",
        base_model_dir=str(model_dir),
        training_file=str(training_file),
        output_dir=str(tmp_path / name),
        hyperparameters=hyperparameters,
        **changes,
    )


def run(
    spec: TrainSpec, should_stop: Callable[[], bool] = lambda: False
) -> tuple[TrainResult, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    return train(spec, events.append, should_stop), events


def stop_after(n_steps: int) -> Callable[[], bool]:
    """A should_stop that lets n_steps steps run (it is asked once before every step)."""
    calls = iter(range(10**9))
    return lambda: next(calls) >= n_steps


def evals(events: list[ProgressEvent]) -> list[dict[str, Any]]:
    return [event.metrics for event in events if event.kind == "eval"]


# --- the loop ----------------------------------------------------------------------------------


def test_loss_falls_and_the_model_learns(tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    result, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, hp={"n_epochs": 6}))

    losses = [event.metrics["train_loss"] for event in events if event.kind == "step"]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert evals(events)[-1]["valid_loss"] < evals(events)[0]["valid_loss"]
    assert result.status == "completed"
    assert result.metrics["accuracy"] >= 0.9
    assert result.labels == ["negative", "positive"]


def test_it_reports_progress_in_order(tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    result, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv))

    assert events[0].kind == "log" and events[0].message.startswith("Running training: 86 examples")
    assert events[0].metrics["total_steps"] == 33 == events[0].total_steps
    steps = [event for event in events if event.kind == "step"]
    assert [event.step for event in steps] == list(range(1, 34))
    assert [event.epoch for event in steps[:12]] == [1] * 11 + [2]
    assert [event.epoch for event in events if event.kind == "eval"] == [1, 2, 3]
    tokens = [event.trained_tokens for event in steps]
    assert tokens == sorted(tokens) and tokens[-1] == result.trained_tokens > 0
    assert result.steps == 33
    metrics = evals(events)[-1]
    assert {
        "valid_loss",
        "accuracy",
        "f1_macro",
        "f1_micro",
        "f1_weighted",
        "per_class",
        "confusion_matrix",
    } <= set(metrics)
    assert sum(map(sum, metrics["confusion_matrix"])) == 10


def test_same_seed_gives_same_metrics(tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    first, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "first"))
    second, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "second"))
    other_seed, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "third", hp={"seed": 7}))

    assert first.metrics == second.metrics
    assert first.metrics["valid_loss"] != other_seed.metrics["valid_loss"]


def test_should_stop_halts_within_one_step(tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    result, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv), should_stop=stop_after(5))

    assert result.status == "stopped"
    assert result.steps == 5
    assert [event.step for event in events if event.kind == "step"][-1] == 5
    # where it stopped is checkpointed, and the current weights are the saved model (no eval yet)
    assert [info.step for info in result.checkpoints] == [5]
    assert (Path(result.checkpoints[0].path) / TRAINER_STATE_FILE).exists()
    assert (Path(result.model_dir) / "model.safetensors").exists()
    assert result.metrics == {"early_stopped": False}


def test_stop_after_an_epoch_keeps_the_best_model(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    result, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv), should_stop=stop_after(11))

    assert result.status == "stopped" and result.steps == 11
    assert [info.step for info in result.checkpoints] == [11]  # the epoch-end checkpoint is reused
    assert result.metrics["best_step"] == 11 and "accuracy" in result.metrics


def test_early_stopping_keeps_the_best_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    # given: a learning rate of 0, so valid_loss never improves after the first evaluation
    spec = make_spec(
        tmp_path, tiny_bert_dir, sentiment_csv, hp={"learning_rate": 0.0, "early_stopping_patience": 1}
    )

    # when
    result, events = run(spec)

    # then
    assert result.status == "completed" and result.metrics["early_stopped"] is True
    assert result.steps == 22 and len(evals(events)) == 2
    assert result.metrics["best_step"] == 11
    assert sorted(info.step for info in result.checkpoints) == [11, 22]


# --- checkpoints and resuming ------------------------------------------------------------------


def test_checkpoint_round_trips(tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    result, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, hp={"n_epochs": 1}))
    checkpoint = Path(result.checkpoints[-1].path)

    saved = load_file(checkpoint / "model.safetensors")
    reloaded = AutoModelForSequenceClassification.from_pretrained(checkpoint).state_dict()
    assert saved.keys() <= reloaded.keys()
    assert all(torch.equal(tensor, reloaded[name]) for name, tensor in saved.items())
    # the final model is the best checkpoint, byte for byte
    assert (checkpoint / "model.safetensors").read_bytes() == (
        Path(result.model_dir) / "model.safetensors"
    ).read_bytes()
    state = read_trainer_state(str(checkpoint))  # torch.load(weights_only=True) inside
    assert state["step"] == 11 and state["labels"] == ["negative", "positive"]
    assert state["optimizer"]["state"] and state["scheduler"]["total_steps"] == 11
    assert [event.checkpoint_dir for event in events if event.kind == "checkpoint"] == [str(checkpoint)]


def test_it_keeps_only_the_best_and_last_checkpoints(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    result, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, checkpoint_every_steps=4))

    written = [event.step for event in events if event.kind == "checkpoint"]
    assert written == [4, 8, 11, 12, 16, 20, 22, 24, 28, 32, 33]
    on_disk = sorted(path.name for path in (Path(result.model_dir) / "checkpoints").iterdir())
    assert on_disk == sorted(Path(info.path).name for info in result.checkpoints)
    assert 1 <= len(on_disk) <= 2 and "checkpoint-0000033" in on_disk


def test_resume_continues_and_matches_an_uninterrupted_run(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    # given: a run stopped in the middle of epoch 2 (11 steps per epoch)
    uninterrupted, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "whole"))
    stopped, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part"), should_stop=stop_after(15))
    assert stopped.steps == 15

    # when
    resumed, events = run(
        make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part", resume_from=stopped.checkpoints[-1].path)
    )

    # then
    assert [event.step for event in events if event.kind == "step"] == list(range(16, 34))
    assert resumed.steps == uninterrupted.steps == 33
    assert resumed.trained_tokens == uninterrupted.trained_tokens
    assert resumed.metrics["valid_loss"] == pytest.approx(uninterrupted.metrics["valid_loss"], rel=1e-5)
    assert resumed.metrics["confusion_matrix"] == uninterrupted.metrics["confusion_matrix"]


# --- precision ---------------------------------------------------------------------------------


def test_auto_precision_is_bfloat16_only_where_the_hardware_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_precision("auto", cuda) == torch.float32  # never float16: it would need loss scaling


def test_a_precision_override_wins_over_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    for device in (torch.device("cpu"), torch.device("cuda")):
        assert resolve_precision("float32", device) == torch.float32
        assert resolve_precision("bfloat16", device) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        resolve_precision("float16", torch.device("cpu"))


def test_without_torchs_probes_a_cpu_counts_as_having_no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_bf16() is True


def test_a_float32_run_computes_in_float32(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a host where "auto" would pick bf16, and a spec that says float32
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    seen: set[torch.dtype] = set()
    original = training.forward_logits

    def spy(model: Any, batch: Any, device: Any, dtype: Any = torch.float32) -> Any:
        seen.add(dtype)
        return original(model, batch, device, dtype)

    monkeypatch.setattr(training, "forward_logits", spy)

    # when
    result, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, hp={"n_epochs": 1}))

    # then
    assert seen == {torch.float32}
    assert events[0].metrics["precision"] == "float32" and events[0].message.endswith("float32")
    assert read_trainer_state(result.checkpoints[-1].path)["precision"] == "float32"


def test_a_bfloat16_run_learns_and_resumes_exactly(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    # given: an uninterrupted bf16 run, and one stopped in the middle of epoch 2 (11 steps per epoch)
    bf16: dict[str, Any] = {"precision": "bfloat16", "hp": {"n_epochs": 6}}
    whole, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "whole", **bf16))
    stopped, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part", **bf16), stop_after(15))

    # when
    resume = stopped.checkpoints[-1].path
    resumed, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part", resume_from=resume, **bf16))

    # then: it learned in bf16, and the resumed run ends bit for bit where the whole one did
    assert events[0].metrics["precision"] == "bfloat16"
    assert (
        whole.metrics["accuracy"] >= 0.9 and evals(events)[-1]["valid_loss"] < evals(events)[0]["valid_loss"]
    )
    assert resumed.steps == whole.steps and resumed.metrics == whole.metrics
    a, b = (
        load_file(Path(whole.model_dir) / "model.safetensors"),
        load_file(Path(resumed.model_dir) / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert all(tensor.dtype == torch.float32 for tensor in a.values())  # fp32 master weights


def test_its_messages_name_no_path_of_the_worker(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    # given a run stopped at step 15, then resumed: the messages a customer reads as job events
    stopped, first = run(
        make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part"), should_stop=stop_after(15)
    )
    resumed, second = run(
        make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part", resume_from=stopped.checkpoints[-1].path)
    )

    # then
    messages = [event.message for event in [*first, *second] if event.message]
    assert not [message for message in messages if "/" in message], messages
    assert "Resumed from the checkpoint at step 15." in messages
    assert messages[-1] == "Saved the model from step 33, the best by validation loss."
    assert [e.message for e in first if e.kind == "log"][-1] == (
        "Saved the model from step 11, the best by validation loss."
    )
    early, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "early"), should_stop=stop_after(3))
    assert events[-1].message == "Saved the model at step 3."  # stopped before any evaluation


def test_a_bad_row_is_named_by_its_files_role_and_line_not_its_path(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    training = write_csv(tmp_path / "train.csv", sentiment_rows(20))
    validation = tmp_path / "valid.jsonl"
    validation.write_text('{"text": "fine", "label": "positive"}\n{"text": "", "label": "negative"}\n')
    spec = make_spec(tmp_path, tiny_bert_dir, training, validation_file=str(validation))

    with pytest.raises(ValueError) as raised:
        run(spec)

    assert str(raised.value) == 'validation file, line 2: "text" is missing or empty'


def test_resume_refuses_a_checkpoint_of_another_run(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    stopped, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part"), should_stop=stop_after(3))
    other = make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "other", hp={"n_epochs": 5})

    with pytest.raises(ValueError, match="different run"):
        run(dataclasses.replace(other, resume_from=stopped.checkpoints[-1].path))


def test_saved_model_describes_itself(tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    result, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, hp={"n_epochs": 1}))

    card = json.loads((Path(result.model_dir) / MODEL_CARD_FILE).read_text())
    assert card["format_version"] == 1 and card["task"] == "classification"
    assert card["labels"] == ["negative", "positive"] and card["metrics"] == result.metrics
    assert card["spec"]["hyperparameters"]["batch_size"] == 8
    config = json.loads((Path(result.model_dir) / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}


def test_it_trains_with_a_validation_file_and_numeric_labels(tmp_path: Path, tiny_bert_dir: Path) -> None:
    rows = [
        {"text": row["text"], "label": "1" if row["label"] == "positive" else "0"}
        for row in sentiment_rows(40)
    ]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(
        "\n".join(json.dumps({"text": r["text"], "label": int(r["label"])}) for r in rows[:30])
    )
    valid_file = write_csv(tmp_path / "valid.csv", rows[30:])

    result, _ = run(make_spec(tmp_path, tiny_bert_dir, train_file, validation_file=str(valid_file)))

    assert result.labels == ["0", "1"]
    assert sum(result.metrics["per_class"][label]["support"] for label in result.labels) == 10


def test_it_rejects_validation_labels_unseen_in_training(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    valid_file = write_csv(tmp_path / "valid.csv", [{"text": "so so", "label": "neutral"}])

    with pytest.raises(ValueError, match="never occur in the training data: 'neutral'"):
        run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, validation_file=str(valid_file)))


def test_count_training_tokens(tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    assert count_training_tokens(str(sentiment_csv), "text", 128, str(tiny_bert_dir)) > 96 * 3
    assert count_training_tokens(str(sentiment_csv), "text", 4, str(tiny_bert_dir)) <= 96 * 4


# --- data --------------------------------------------------------------------------------------


def test_batches_are_padded_to_their_longest_row() -> None:
    split = EncodedSplit(input_ids=[[1] * 3, [1] * 9, [1] * 5], label_ids=[0, 1, 0])

    batch = collate(split, [0, 2], pad_id=0)
    wide = collate(split, [0, 1, 2], pad_id=0)
    rounded = collate(split, [0, 2], pad_id=0, pad_to_multiple_of=8)

    assert (
        batch.input_ids.shape == (2, 5)
        and wide.input_ids.shape == (3, 9)
        and rounded.input_ids.shape == (2, 8)
    )
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.n_tokens == 8


def test_training_batches_never_pad_to_max_seq_length(tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    from workers.runtime.data import prepare_data
    from workers.runtime.training import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_bert_dir))
    data = prepare_data(
        str(sentiment_csv),
        None,
        tokenizer,
        text_field="text",
        label_field="label",
        max_length=128,
        seed=0,
        validation_fraction=0.1,
    )
    lengths = data.train.lengths()
    for indices in epoch_batches(lengths, 8, seed=0, epoch=0):
        assert collate(data.train, indices, tokenizer.pad_token_id).input_ids.shape[1] == max(
            lengths[i] for i in indices
        )
    assert max(lengths) < 128


def test_length_grouping_makes_uniform_batches() -> None:
    lengths = [(i * 37) % 100 + 1 for i in range(1000)]

    batches = length_grouped_batches(lengths, 10, torch.Generator().manual_seed(0))
    again = length_grouped_batches(lengths, 10, torch.Generator().manual_seed(0))
    other = length_grouped_batches(lengths, 10, torch.Generator().manual_seed(1))

    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert len(batches) == 100 and batches == again and batches != other
    padding = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert padding < 0.05 * sum(lengths)  # random batches of 10 would waste about 45%
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # widest first, to fail fast on OOM


def test_stratified_split_keeps_every_class() -> None:
    examples = [Example(f"text {i}", label, i) for i, label in enumerate(["a"] * 60 + ["b"] * 30 + ["c"] * 2)]

    train_part, valid_part = stratified_split(examples, 0.1, seed=0)

    assert sorted_labels(valid_part) == sorted_labels(train_part) == ["a", "b", "c"]
    assert len(valid_part) == 9 and len(train_part) == 83
    assert [e.label for e in valid_part].count("a") == 5  # gave one up so that "c" is represented
    assert stratified_split(examples, 0.1, seed=0) == (train_part, valid_part)


def test_it_reads_csv_with_bom_crlf_and_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "upload"  # no extension: sniffed
    path.write_bytes('\ufefftext,label\r\n"line one\r\nline two",good\r\n"say ""hi""",bad\r\n'.encode())

    examples = read_examples(path)

    assert [(e.text, e.label) for e in examples] == [("line one\r\nline two", "good"), ('say "hi"', "bad")]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("train.csv", "text;label\nGood film, really;pos\nBad film;neg\n"),
        ("train.csv", "text\tlabel\nGood film, really\tpos\nBad film\tneg\n"),
        ("train.tsv", "text\tlabel, tab-separated\nGood film, really\tpos\nBad film\tneg\n"),
    ],
)
def test_it_reads_csv_with_the_delimiter_the_upload_was_validated_with(
    tmp_path: Path, name: str, data: str
) -> None:
    path = tmp_path / name
    path.write_text(data)

    examples = read_examples(path, label_field="label, tab-separated" if name.endswith(".tsv") else "label")

    assert [(e.text, e.label) for e in examples] == [("Good film, really", "pos"), ("Bad film", "neg")]


def test_it_reads_jsonl_and_turns_numeric_labels_into_strings(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"text": "a", "label": 10}\n\n{"text": "b", "label": 2.0}\n{"text": "c", "label": "x"}\n'
    )

    examples = read_examples(path)

    assert [e.label for e in examples] == ["10", "2", "x"]
    assert sorted_labels(examples) == ["10", "2", "x"]  # by name, as the web side orders them


def test_it_names_the_line_of_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "", "label": 1}\n')

    with pytest.raises(ValueError, match=r'data.jsonl, line 2: "text" is missing or empty'):
        read_examples(path)


def test_it_names_a_missing_csv_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", [{"text": "a", "label": "x"}])

    with pytest.raises(ValueError, match=r'no "category" column in the header \(text, label\)'):
        read_examples(path, label_field="category")


# --- pure helpers ------------------------------------------------------------------------------


def test_lr_warms_up_then_decays_linearly() -> None:
    schedule = [lr_at(step, 1.0, warmup_steps=2, total_steps=10) for step in range(10)]

    assert schedule[:3] == [0.5, 1.0, 1.0]
    assert schedule[2:] == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_classification_metrics() -> None:
    metrics = classification_metrics(
        golds=[0, 0, 0, 1, 1, 2], preds=[0, 0, 1, 1, 1, 1], labels=["a", "b", "c"]
    )

    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert metrics["accuracy"] == pytest.approx(4 / 6) == metrics["f1_micro"]
    assert metrics["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": 0.8,
        "support": 3,
    }
    assert metrics["per_class"]["b"]["precision"] == 0.5 and metrics["per_class"]["c"]["f1"] == 0.0
    assert metrics["f1_macro"] == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)
    assert metrics["f1_weighted"] == pytest.approx((0.8 * 3 + 2 / 3 * 2) / 6)


# --- the real encoder --------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_learns_a_separable_task(tmp_path: Path, minilm_dir: Path) -> None:
    data = write_csv(tmp_path / "reviews.csv", sentiment_rows(200, seed=1))
    spec = make_spec(tmp_path, minilm_dir, data, hp={"n_epochs": 2, "batch_size": 16, "learning_rate": 1e-4})

    result, _ = run(spec)

    assert result.metrics["accuracy"] >= 0.9
    assert (Path(result.model_dir) / "model.safetensors").exists()
