"""DPO of causal LMs on a tiny GPT-2 (seconds on a CPU): the loss, the reference computed once, the
preferred reply gaining on held-out pairs, pause/resume and LoRA."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from workers.runtime import dpo  # noqa: E402
from workers.runtime.dpo import dpo_loss, encode_pairs, reference_logps, train_dpo  # noqa: E402
from workers.runtime.lm_data import IGNORE_INDEX, load_lm_tokenizer  # noqa: E402
from workers.runtime.specs import Hyperparameters, ProgressEvent, TrainingDataError, TrainResult, TrainSpec  # noqa: E402
from workers.runtime.training import TRAINER_STATE_FILE, read_trainer_state  # noqa: E402

FAST = Hyperparameters(n_epochs=3, batch_size=4, learning_rate=3e-3, early_stopping_patience=0)
QUESTIONS = ["hello", "how are you today", "please tell me a story", "what a sad day", "the movie was"]
PREFERRED = "good great excellent"
REJECTED = "bad terrible awful"


def pair(question: str, preferred: str = PREFERRED, rejected: str = REJECTED) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One intra-op thread: these matmuls are too small to split (as in test_sft)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 16 training pairs (after the 10% held out: 4 steps an epoch at batch 4)
    rows = [pair(f"{question} {n}") for n in range(4) for question in QUESTIONS[:4]]
    rows += [pair("i loved it", "good great", "bad awful"), pair("what a day", "excellent", "terrible")]
    return write_jsonl(tmp_path_factory.mktemp("dpo") / "train.jsonl", rows)


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
        task="generation",
        **changes,
    )


def run(
    spec: TrainSpec, should_stop: Callable[[], bool] = lambda: False
) -> tuple[TrainResult, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    return train_dpo(spec, events.append, should_stop), events


def stop_after(n_steps: int) -> Callable[[], bool]:
    calls = iter(range(10**9))
    return lambda: next(calls) >= n_steps


@pytest.fixture
def reference_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many pairs each reference pass read: the runtime's own function, counted."""
    calls: list[int] = []
    original = dpo.reference_logps

    def counted(model: Any, split: Any, *args: Any) -> Any:
        calls.append(len(split))
        return original(model, split, *args)

    monkeypatch.setattr(dpo, "reference_logps", counted)
    return calls


def margins(model_dir: Path | str, tokenizer: Any, rows: list[dict[str, Any]]) -> Any:
    """Each pair's log p(preferred) - log p(non-preferred) under the model in model_dir."""
    split, skipped = encode_pairs([(f"line {i}", row) for i, row in enumerate(rows)], tokenizer, 128)
    assert skipped == 0
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    logps = reference_logps(model, split, tokenizer.pad_token_id, 1, 8, torch.device("cpu"))
    return logps[:, 0] - logps[:, 1]


# --- the loss and the data ---------------------------------------------------------------------


def test_the_loss_is_dpo_s_and_the_rewards_are_beta_times_the_log_ratio() -> None:
    policy = torch.tensor([[-1.0, -3.0], [-2.0, -1.0]])
    reference = torch.tensor([[-2.0, -2.0], [-2.0, -2.0]])

    loss, chosen, rejected = dpo_loss(policy, reference, beta=0.5)

    assert chosen.tolist() == [0.5, 0.0] and rejected.tolist() == [-0.5, 0.5]
    expected = -(torch.nn.functional.logsigmoid(torch.tensor([1.0, -0.5]))).mean()
    assert torch.allclose(loss, expected)


def test_a_pair_learns_only_its_final_reply(tiny_gpt2_dir: Path) -> None:
    tokenizer = load_lm_tokenizer(str(tiny_gpt2_dir))
    row = pair("how are you")
    row["input"]["messages"] = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "what a day"},
        {"role": "user", "content": "how are you"},
    ]

    split, _ = encode_pairs([("line 1", row)], tokenizer, 128)

    for side, reply in ((split.chosen, PREFERRED), (split.rejected, REJECTED)):
        ids, labels = side.input_ids[0], side.labels[0]
        learned = [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        # the reply and its end-of-turn token; the earlier assistant turn is context
        assert tokenizer.decode(learned).strip() == reply + "<|im_end|>"
    # the two rows share everything before the reply: the prompt, read once in trained_tokens
    first_learned = next(i for i, label in enumerate(split.chosen.labels[0]) if label != IGNORE_INDEX)
    assert split.shared[0] == first_learned > 0


def test_a_base_without_a_chat_template_is_refused(
    tmp_path: Path, tiny_gpt2_dir: Path, pairs_jsonl: Path
) -> None:
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_gpt2_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in plain.glob("chat_template.*"):
        extra.unlink()

    with pytest.raises(TrainingDataError, match="DPO needs a base model with a chat template"):
        run(make_spec(tmp_path, plain, pairs_jsonl))


# --- training ----------------------------------------------------------------------------------


def test_dpo_raises_the_preferred_reply_over_the_rejected_one_on_held_out_pairs(
    tmp_path: Path, tiny_gpt2_dir: Path, pairs_jsonl: Path
) -> None:
    # given pairs where the preferred reply is always the kind words, and prompts never trained on
    tokenizer = load_lm_tokenizer(str(tiny_gpt2_dir))
    held_out = [pair("tell me about your film"), pair("what is it today"), pair("a story please")]
    before = margins(tiny_gpt2_dir, tokenizer, held_out)

    # when the model is trained with DPO
    result, events = run(make_spec(tmp_path, tiny_gpt2_dir, pairs_jsonl, beta=0.1))

    # then every held-out pair's margin grew, by a lot
    after = margins(result.model_dir, tokenizer, held_out)
    assert result.status == "completed" and result.steps == 12
    assert all(a > b + 1.0 for a, b in zip(after.tolist(), before.tolist(), strict=True)), (before, after)
    # and the events report the loss and the rewards under OpenAI-style names
    steps = [event.metrics for event in events if event.kind == "step"]
    assert set(steps[0]) == {"train_loss", "train_rewards_margin", "train_rewards_accuracy", "learning_rate"}
    assert steps[-1]["train_rewards_accuracy"] == 1.0 and steps[-1]["train_rewards_margin"] > 0
    evals = [event.metrics for event in events if event.kind == "eval"]
    assert len(evals) == 3 and evals[-1]["valid_rewards_accuracy"] == 1.0
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"] < 0.6932  # log 2: where DPO starts
    # trained tokens: each pair's prompt once and both replies, every epoch
    spec = make_spec(tmp_path, tiny_gpt2_dir, pairs_jsonl)
    train = dpo.prepare_preference_data(spec, tokenizer, 128, FAST.seed).train
    both = sum(train.lengths())
    assert result.trained_tokens == 3 * (both - sum(train.shared)) and sum(train.shared) > 0


def test_the_reference_is_computed_once_across_epochs_and_a_pause_and_resume(
    tmp_path: Path, tiny_gpt2_dir: Path, pairs_jsonl: Path, reference_calls: list[int]
) -> None:
    # given an uninterrupted run of 3 epochs
    whole, events = run(make_spec(tmp_path, tiny_gpt2_dir, pairs_jsonl, "whole"))
    # then the reference was one pass over the training pairs and one over the validation pairs
    assert reference_calls == [16, 2]
    logs = [event.message for event in events if event.kind == "log"]
    assert logs.count("Computed the reference model's log-probabilities of 18 pairs.") == 1

    # when another run is paused in epoch 2 and resumed
    reference_calls.clear()
    paused, _ = run(make_spec(tmp_path, tiny_gpt2_dir, pairs_jsonl, "part"), stop_after(6))
    assert paused.status == "stopped" and paused.steps == 6 and reference_calls == [16, 2]
    saved = read_trainer_state(paused.checkpoints[-1].path)
    assert saved["reference"]["train"].shape == (16, 2)
    resumed, events = run(
        make_spec(tmp_path, tiny_gpt2_dir, pairs_jsonl, "part", resume_from=paused.checkpoints[-1].path)
    )

    # then the resume read the reference from the checkpoint instead of computing it again
    assert reference_calls == [16, 2]
    assert [event.step for event in events if event.kind == "step"] == list(range(7, 13))
    # and it ends, bit for bit, where the uninterrupted run did
    assert resumed.steps == whole.steps == 12 and resumed.trained_tokens == whole.trained_tokens
    a, b = (
        load_file(Path(whole.model_dir) / "model.safetensors"),
        load_file(Path(resumed.model_dir) / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_lora_dpo_uses_the_base_without_adapters_as_reference_and_resumes(
    tmp_path: Path, tiny_gpt2_dir: Path, pairs_jsonl: Path, reference_calls: list[int]
) -> None:
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    tokenizer = load_lm_tokenizer(str(tiny_gpt2_dir))
    held_out = [pair("tell me about your film"), pair("a story please")]
    before = margins(tiny_gpt2_dir, tokenizer, held_out)

    paused, _ = run(
        make_spec(tmp_path, tiny_gpt2_dir, pairs_jsonl, "lora", lora=lora, hp={"learning_rate": 1e-2}),
        stop_after(5),
    )
    resumed, _ = run(
        make_spec(
            tmp_path,
            tiny_gpt2_dir,
            pairs_jsonl,
            "lora",
            lora=lora,
            hp={"learning_rate": 1e-2},
            resume_from=paused.checkpoints[-1].path,
        )
    )

    assert reference_calls == [16, 2]  # once, in the first attempt
    assert resumed.status == "completed" and resumed.steps == 12
    assert (Path(resumed.model_dir) / "model.safetensors").exists()
    assert not (Path(resumed.model_dir) / TRAINER_STATE_FILE).exists()
    after = margins(resumed.model_dir, tokenizer, held_out)
    assert all(a > b for a, b in zip(after.tolist(), before.tolist(), strict=True)), (before, after)
