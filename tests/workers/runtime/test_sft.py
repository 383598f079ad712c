"""Supervised fine-tuning of causal LMs on a tiny GPT-2 (seconds on a CPU), plus one slow SmolLM2 run."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from workers.runtime.generate import generate  # noqa: E402
from workers.runtime.lm_data import IGNORE_INDEX, LMSplit, collate_lm, encode_chat, encode_completion  # noqa: E402
from workers.runtime.lora import ADAPTER_DIR, resolve_lora  # noqa: E402
from workers.runtime.models import load_model  # noqa: E402
from workers.runtime.sft import greedy_answer, train_lm  # noqa: E402
from workers.runtime.specs import (  # noqa: E402
    GenerateRequest,
    Hyperparameters,
    ProgressEvent,
    TrainResult,
    TrainSpec,
)
from workers.runtime.training import (  # noqa: E402
    MODEL_CARD_FILE,
    TRAINER_STATE_FILE,
    LoopState,
    read_trainer_state,
)

FAST = Hyperparameters(n_epochs=3, batch_size=4, learning_rate=3e-3, early_stopping_patience=0)
# Words the tiny GPT-2's tokenizer was trained on, so replies are a few tokens each.
CHATS = [
    ("hello", "i am fine thank you"),
    ("how are you today", "what a wonderful happy day"),
    ("please tell me a story", "the quick brown fox jumps over the lazy dog"),
    ("what a sad day", "good great excellent"),
]
CTX = "·"  # a context token (label IGNORE_INDEX) in the expected masks below


def chat_row(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One intra-op thread: these models' matmuls are too small to split, and on a busy 2-core box
    the threads' hand-offs made training five to ten times slower (SmolLM2 included)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def chat_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [chat_row(q, a) for q, a in CHATS] * 4 + [
        {"prompt": "the movie was", "completion": " great and i loved it"},
        {"prompt": "the film was", "completion": " terrible and i hated it"},
    ]
    return write_jsonl(tmp_path_factory.mktemp("sft") / "train.jsonl", rows)


@pytest.fixture(scope="module")
def tokenizer(tiny_gpt2_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_gpt2_dir)


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
    return train_lm(spec, events.append, should_stop), events


def stop_after(n_steps: int) -> Callable[[], bool]:
    """A should_stop that lets n_steps steps run (it is asked once before every step)."""
    calls = iter(range(10**9))
    return lambda: next(calls) >= n_steps


def learned(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """Each token as text where the loss learns it, "·" where it is context."""
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
    return [
        tokenizer.convert_ids_to_tokens(t) if label != IGNORE_INDEX else CTX
        for t, label in zip(ids, labels, strict=True)
    ]


def weights(model_dir: str | Path) -> dict[str, Any]:
    return load_file(Path(model_dir) / "model.safetensors")


# --- the loss mask -----------------------------------------------------------------------------


def test_chat_labels_are_the_weighted_assistant_replies_and_their_end_token(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "i am fine"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "bad", "weight": 0},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "great", "weight": 1},
    ]

    ids, labels = encode_chat(tokenizer, messages, None, max_length=256)

    # <|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n
    system_user_assistant = [CTX] * 21
    # \n<|im_start|>user\nhow are you<|im_end|>\n<|im_start|>assistant\nbad<|im_end|>\n
    # <|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n
    middle = [CTX] * 29
    assert learned(tokenizer, ids, labels) == [
        *system_user_assistant,
        *["i", "Ġam", "Ġfine", "<|im_end|>"],
        *middle,
        *["gre", "at", "<|im_end|>"],
        CTX,  # the newline after the last turn
    ]
    # the collated tensor, exactly
    batch = collate_lm(LMSplit([ids], [labels]), [0], pad_id=0)
    expected = torch.full((1, len(ids)), IGNORE_INDEX)
    expected[0, 21:25] = torch.tensor(ids[21:25])
    expected[0, 54:57] = torch.tensor(ids[54:57])
    assert torch.equal(batch.labels, expected)
    assert batch.n_supervised == 7 and batch.n_tokens == len(ids) == 58


def test_prompt_completion_labels_are_the_completion_and_eos(tokenizer: Any) -> None:
    ids, labels = encode_completion(tokenizer, "the movie was", " great", max_length=256)

    assert tokenizer.decode(ids) == "the movie was great<|im_end|>"
    assert learned(tokenizer, ids, labels) == [CTX, CTX, CTX, "Ġgreat", "<|im_end|>"]
    assert labels[:3] == [IGNORE_INDEX] * 3 and labels[3:] == ids[3:]
    assert ids[-1] == tokenizer.eos_token_id


def test_truncation_cuts_at_max_seq_length(tokenizer: Any) -> None:
    messages = chat_row(*CHATS[2])["messages"]
    ids, labels = encode_chat(tokenizer, messages, None, max_length=256)
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)

    short_ids, short_labels = encode_chat(tokenizer, messages, None, max_length=first + 2)

    # the reply's first two tokens survive; the rest of it and its end token are cut
    assert (short_ids, short_labels) == (ids[: first + 2], labels[: first + 2])
    assert short_labels[-2:] == ids[first : first + 2]


def test_examples_with_nothing_to_learn_are_skipped(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    # given: one row whose only reply is weight 0, one whose reply lies beyond max_seq_length
    silent = chat_row("hello", "hi")
    silent["messages"][1]["weight"] = 0
    long_prompt = chat_row("hello " * 40, "i am fine")
    rows = [chat_row(q, a) for q, a in CHATS] * 3 + [silent, long_prompt]
    training_file = write_jsonl(tmp_path / "train.jsonl", rows)

    # when
    result, events = run(
        make_spec(tmp_path, tiny_gpt2_dir, training_file, hp={"max_seq_length": 32, "n_epochs": 1})
    )

    # then
    banner = events[0]
    assert banner.metrics["skipped_examples"] == 2
    assert banner.metrics["train_examples"] + banner.metrics["valid_examples"] == 12
    assert "2 skipped with nothing to learn" in banner.message
    assert result.status == "completed"


def test_batches_pad_to_their_longest_row_with_ignored_labels() -> None:
    split = LMSplit([[5, 6, 7], [8, 9]], [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9]])

    batch = collate_lm(split, [1, 0], pad_id=0)

    assert batch.input_ids.tolist() == [[8, 9, 0], [5, 6, 7]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 9, IGNORE_INDEX], [IGNORE_INDEX, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch.n_tokens == 5 and batch.n_supervised == 3


# --- the loop ----------------------------------------------------------------------------------


def test_it_memorises_replies_and_then_generates_them(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    # given: four conversations to learn by heart (validated on themselves)
    training_file = write_jsonl(tmp_path / "train.jsonl", [chat_row(q, a) for q, a in CHATS] * 4)
    spec = make_spec(
        tmp_path,
        tiny_gpt2_dir,
        training_file,
        validation_file=str(training_file),
        hp={"n_epochs": 30, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0},
    )

    # when: 60 steps
    result, events = run(spec)

    # then
    losses = [event.metrics["train_loss"] for event in events if event.kind == "step"]
    assert len(losses) == 60 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-4:]) < 0.2 * sum(losses[:4])
    assert result.metrics["valid_mean_token_accuracy"] == 1.0
    model = load_model(result.model_dir, device="cpu")  # what serving does
    for question, answer in CHATS:
        request = GenerateRequest(
            messages=({"role": "user", "content": question},), max_tokens=20, temperature=0
        )
        choice = generate(model, request).choices[0]
        assert (choice.text, choice.finish_reason) == (answer, "stop")  # it stops at the learned <|im_end|>


def test_it_reports_openai_metrics(tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path) -> None:
    result, events = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl))

    banner = events[0]
    assert banner.kind == "log" and banner.message.startswith(
        "Running training: 16 examples (2 for validation)"
    )
    assert banner.metrics["total_steps"] == 12 and "full fine-tune" in banner.message
    steps = [event for event in events if event.kind == "step"]
    assert [event.step for event in steps] == list(range(1, 13))
    assert all({"train_loss", "train_mean_token_accuracy", "learning_rate"} <= set(e.metrics) for e in steps)
    assert all(0 <= event.metrics["train_mean_token_accuracy"] <= 1 for event in steps)
    evals = [event.metrics for event in events if event.kind == "eval"]
    assert len(evals) == 3
    assert all({"valid_loss", "valid_mean_token_accuracy", "train_loss"} <= set(m) for m in evals)
    # trained_tokens: every non-padding token (prompt and reply) of the 16 training rows, 3 epochs
    tokens = [event.trained_tokens for event in steps]
    assert tokens == sorted(tokens) and tokens[-1] == result.trained_tokens
    assert result.metrics["supervised_tokens"] < result.trained_tokens
    assert result.labels == [] and result.steps == 12


def test_same_seed_gives_the_same_weights(tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path) -> None:
    first, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "first", hp={"n_epochs": 1}))
    second, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "second", hp={"n_epochs": 1}))

    a, b = weights(first.model_dir), weights(second.model_dir)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_should_stop_halts_within_one_step_and_checkpoints(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    result, events = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl), should_stop=stop_after(2))

    assert result.status == "stopped" and result.steps == 2
    assert [event.step for event in events if event.kind == "step"] == [1, 2]
    assert [info.step for info in result.checkpoints] == [2]
    assert (Path(result.checkpoints[0].path) / TRAINER_STATE_FILE).exists()
    assert (Path(result.model_dir) / "model.safetensors").exists()


def test_it_checkpoints_every_n_steps_and_evaluates_every_epoch(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    result, events = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, checkpoint_every_steps=3))

    # 4 steps an epoch: every 3rd step, and each epoch's end (the last step of an epoch only once)
    checkpoints = [event for event in events if event.kind == "checkpoint"]
    assert [event.step for event in checkpoints] == [3, 4, 6, 8, 9, 12]
    assert set(checkpoints[0].metrics) == {"train_loss", "train_mean_token_accuracy"}
    assert [event.epoch for event in events if event.kind == "eval"] == [1, 2, 3]
    assert result.status == "completed" and result.steps == 12


def test_early_stopping_keeps_the_best_checkpoint(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    # given: a learning rate of 0, so valid_loss never improves after the first evaluation
    spec = make_spec(
        tmp_path, tiny_gpt2_dir, chat_jsonl, hp={"learning_rate": 0.0, "early_stopping_patience": 1}
    )

    # when
    result, events = run(spec)

    # then
    assert result.status == "completed" and result.metrics["early_stopped"] is True
    assert result.steps == 8 and [event.step for event in events if event.kind == "eval"] == [4, 8]
    assert result.metrics["best_step"] == 4
    assert any(event.message.startswith("Early stopping: no better valid_loss for 1") for event in events)


@pytest.mark.parametrize("lora", [None, {"r": 4}], ids=["full", "lora"])
def test_pause_then_resume_gives_the_same_weights_as_one_run(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path, lora: dict[str, Any] | None
) -> None:
    # given: a run paused in the middle of epoch 2 (4 steps per epoch; dropout on)
    whole, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "whole", lora=lora))
    paused, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "part", lora=lora), stop_after(6))
    assert paused.status == "stopped" and paused.steps == 6

    # when
    resume = paused.checkpoints[-1].path
    resumed, events = run(
        make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "part", lora=lora, resume_from=resume)
    )

    # then: the same steps, tokens and, bit for bit, weights
    assert [event.step for event in events if event.kind == "step"] == list(range(7, 13))
    assert resumed.steps == whole.steps == 12 and resumed.trained_tokens == whole.trained_tokens
    assert resumed.metrics == whole.metrics
    a, b = weights(whole.model_dir), weights(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_bfloat16_run_learns_and_resumes_to_the_same_weights(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    # given: bf16 autocast forced, whatever this host's "auto" would pick
    whole, events = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "whole", precision="bfloat16"))
    paused, _ = run(
        make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "part", precision="bfloat16"), stop_after(6)
    )

    # when
    resume = paused.checkpoints[-1].path
    resumed, _ = run(
        make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "part", precision="bfloat16", resume_from=resume)
    )

    # then: it learned, and the resume lands bit for bit on the uninterrupted run's fp32 weights
    assert events[0].metrics["precision"] == "bfloat16"
    losses = [event.metrics["train_loss"] for event in events if event.kind == "step"]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert resumed.metrics == whole.metrics
    a, b = weights(whole.model_dir), weights(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert all(tensor.dtype == torch.float32 for tensor in a.values())


def test_its_messages_name_no_path_on_the_worker(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    # Log messages become the job's events, which customers read through the API.
    paused, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "part"), stop_after(2))
    _, events = run(
        make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "part", resume_from=paused.checkpoints[-1].path)
    )

    messages = [event.message for event in events if event.kind == "log"]
    assert "Resumed from the checkpoint at step 2." in messages
    assert any(message.startswith("Saved the model ") for message in messages)
    assert [message for message in messages if str(tmp_path) in message] == []


@pytest.mark.parametrize("first_attempt_dir_is", ["removed", "kept"])
def test_a_resume_on_another_attempt_never_needs_or_touches_its_directory(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path, first_attempt_dir_is: str
) -> None:
    # given: attempt 1 paused at step 6; its best checkpoint is step 4 (lr 0: nothing ever improves)
    hp = {"learning_rate": 0.0}
    paused, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "attempt-1", hp=hp), stop_after(6))
    assert paused.metrics["best_step"] == 4
    download = tmp_path / "download"  # what the worker fetches from storage for attempt 2
    shutil.copytree(paused.checkpoints[-1].path, download)
    if first_attempt_dir_is == "removed":
        shutil.rmtree(tmp_path / "attempt-1")
    before = (
        sorted(p.name for p in (tmp_path / "attempt-1" / "checkpoints").iterdir())
        if first_attempt_dir_is == "kept"
        else []
    )

    # when: attempt 2 resumes in its own directory
    resumed, _ = run(
        make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "attempt-2", hp=hp, resume_from=str(download))
    )

    # then: it finishes with a model and never reached into attempt 1's directory
    assert resumed.status == "completed" and resumed.steps == 12
    assert (Path(resumed.model_dir) / "model.safetensors").exists()
    assert all(Path(info.path).is_relative_to(tmp_path / "attempt-2") for info in resumed.checkpoints)
    if first_attempt_dir_is == "kept":
        assert sorted(p.name for p in (tmp_path / "attempt-1" / "checkpoints").iterdir()) == before
        assert resumed.metrics["best_step"] == 4  # its best was copied over and stays the best
    else:
        assert resumed.metrics["best_step"] == 8  # the first evaluation after the resume


def test_resume_refuses_a_checkpoint_of_another_run(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    paused, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, "part", lora={}), stop_after(2))

    with pytest.raises(ValueError, match="different run"):
        run(
            make_spec(
                tmp_path,
                tiny_gpt2_dir,
                chat_jsonl,
                "other",
                lora={"r": 2},
                resume_from=paused.checkpoints[-1].path,
            )
        )


# --- LoRA --------------------------------------------------------------------------------------


def test_lora_trains_only_the_adapters_and_saves_a_merged_model(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    result, events = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, lora={"r": 8}))

    # only the adapters train: 2 layers x c_attn (32 -> 96) x r=8 → 2 x (8*32 + 96*8)
    assert events[0].metrics["trainable_parameters"] == 2 * (8 * 32 + 96 * 8) == 2048
    assert events[0].metrics["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["c_attn"]}
    # the checkpoint's adapter moved away from its zero-initialised B
    adapter = load_file(Path(result.checkpoints[-1].path) / ADAPTER_DIR / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert all(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)
    # the saved model is a plain GPT-2: merged c_attn weights changed, every other tensor is the base's
    base, merged = weights(tiny_gpt2_dir), weights(result.model_dir)
    assert merged.keys() == base.keys()
    changed = sorted(name for name in base if not torch.equal(base[name], merged[name]))
    assert changed == ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"]


def test_merged_checkpoint_equals_peft_merge_and_unload(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    from peft import PeftModel

    result, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, lora={}, hp={"n_epochs": 1}))
    checkpoint = Path(result.checkpoints[-1].path)

    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    expected = PeftModel.from_pretrained(base, checkpoint / ADAPTER_DIR).merge_and_unload().eval()
    served = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(served(ids).logits, expected(ids).logits, rtol=1e-5, atol=1e-5)


def test_lora_targets_default_by_architecture(tiny_gpt2_dir: Path) -> None:
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )

    assert resolve_lora({}, gpt2) == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["c_attn"]}
    assert resolve_lora({"r": 4, "alpha": 8}, llama)["target_modules"] == ["q_proj", "v_proj"]
    assert resolve_lora({"target_modules": ["c_attn", "c_proj"]}, gpt2)["target_modules"] == [
        "c_attn",
        "c_proj",
    ]
    assert resolve_lora({"target_modules": "all-linear"}, gpt2)["target_modules"] == "all-linear"
    assert resolve_lora(None, gpt2) is None


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ({"target_modules": ["q_proj"]}, "no module named 'q_proj'; its linear layers are: c_attn"),
        ({"rank": 4}, "unknown LoRA option 'rank'"),
        ({"r": 0}, "lora.r must be a positive integer"),
        ({"dropout": 1.0}, "lora.dropout"),
    ],
)
def test_lora_rejects_bad_settings(tiny_gpt2_dir: Path, requested: dict[str, Any], message: str) -> None:
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        resolve_lora(requested, gpt2)


# --- the saved model ---------------------------------------------------------------------------


def test_saved_model_loads_and_describes_itself(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    result, _ = run(make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, lora={}, hp={"n_epochs": 1}))

    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert type(model).__name__ == "GPT2LMHeadModel"
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_gpt2_dir).chat_template
    card = json.loads((Path(result.model_dir) / MODEL_CARD_FILE).read_text())
    assert card["task"] == "generation" and card["format_version"] == 1
    assert card["method"] == {
        "type": "supervised",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["c_attn"]},
    }
    assert card["metrics"]["valid_loss"] == result.metrics["valid_loss"]
    assert card["spec"]["lora"] == {} and card["spec"]["hyperparameters"]["seed"] == 42
    # the adapter alone too, for serving on a shared base: the best checkpoint's, without worker paths
    adapter = json.loads((Path(result.model_dir) / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["base_model_name_or_path"] is None
    state = read_trainer_state(result.checkpoints[-1].path)  # torch.load(weights_only=True) inside
    assert state["trainer"] == "sft" and state["optimizer"]["state"] and state["step"] == 4


def test_a_chat_row_without_a_template_is_a_clear_error(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    bare = tmp_path / "bare"
    AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).save_pretrained(bare)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    training_file = write_jsonl(tmp_path / "train.jsonl", [chat_row(*CHATS[0])] * 4)

    with pytest.raises(ValueError, match=r"^training file, line \d+: chat examples need a chat template"):
        run(make_spec(tmp_path, bare, training_file))


# --- the real SmolLM2 --------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_fine_tunes_with_lora_and_generates(tmp_path: Path, smollm2_dir: Path) -> None:
    # given: a few short chats; SmolLM2's template adds its own system prompt
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    ids, labels = encode_chat(tokenizer, chat_row("Capital of France?", "Paris.")["messages"], None, 128)
    assert (
        tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
        == "Paris.<|im_end|>"
    )
    rows = [chat_row(q, a) for q, a in [("Capital of France?", "Paris."), ("Two plus two?", "Four.")]] * 3
    training_file = write_jsonl(tmp_path / "train.jsonl", rows)
    spec = make_spec(
        tmp_path,
        smollm2_dir,
        training_file,
        validation_file=str(write_jsonl(tmp_path / "valid.jsonl", rows[:2])),
        lora={},
        hp={"n_epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "max_seq_length": 64},
    )

    # when: 3 steps
    result, events = run(spec)

    # then
    assert result.status == "completed" and result.steps == 3
    losses = [event.metrics["train_loss"] for event in events if event.kind == "step"]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert 0 < events[0].metrics["trainable_parameters"] < 0.01 * events[0].metrics["total_parameters"]
    model = load_model(result.model_dir, device="cpu")
    request = GenerateRequest(
        messages=({"role": "user", "content": "Capital of France?"},), max_tokens=8, temperature=0
    )
    assert "Paris" in generate(model, request).choices[0].text


def test_a_run_scored_by_an_eval_keeps_the_checkpoint_with_the_best_score_not_the_lowest_loss(
    tmp_path: Path, tiny_gpt2_dir: Path, chat_jsonl: Path
) -> None:
    # given: three epochs, a validation file, and a scorer whose best epoch is the second (the
    # real scorer answers an eval's items; here the scores are set, and the answers are real)
    spec = make_spec(tmp_path, tiny_gpt2_dir, chat_jsonl, hp={"n_epochs": 3}, validation_file=str(chat_jsonl))
    scores = iter([0.25, 0.75, 0.75])
    answered: list[tuple[str, int, int] | None] = []

    def score(model: Any, tokenizer: Any, device: Any, max_length: int) -> dict[str, Any]:
        assert not model.training  # scored in eval mode, as an answer would be
        answered.append(
            greedy_answer(model, tokenizer, [{"role": "user", "content": "hi"}], 5, max_length, device)
        )
        value = next(scores)
        return {"eval_score": value, "eval_passed": int(value * 4), "eval_items": 4}

    # when
    events: list[ProgressEvent] = []
    result = train_lm(spec, events.append, lambda: False, score=score)

    # then: each epoch's evaluation carries its score; a tie goes to the lower valid_loss
    evals = [event.metrics for event in events if event.kind == "eval"]
    assert [m["eval_score"] for m in evals] == [0.25, 0.75, 0.75]
    best = 1 if evals[1]["valid_loss"] <= evals[2]["valid_loss"] else 2
    steps = [event.step for event in events if event.kind == "eval"]
    assert result.metrics["best_step"] == steps[best] and result.metrics["eval_score"] == 0.75
    assert (
        events[-1].message
        == f"Saved the model from step {steps[best]}, the best by its eval: 75.0% of the eval's items passed (3 of 4)."
    )
    # greedy answers, with their token counts: at most 5 new tokens after the prompt
    assert len(answered) == 3
    assert all(a is not None and a[1] > 0 and 0 <= a[2] <= 5 for a in answered)


def test_a_chat_the_model_cannot_be_asked_gets_no_answer(tiny_gpt2_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    device = torch.device("cpu")
    hi = [{"role": "user", "content": "hi"}]
    assert (
        greedy_answer(model, tokenizer, [], 5, 128, device) is None
    )  # an empty chat: the template refuses it
    assert greedy_answer(model, tokenizer, hi, 5, 2, device) is None  # no room within the sequence length
    text, prompt, new = greedy_answer(model, tokenizer, hi, 50, prompt_len(tokenizer, hi) + 3, device) or (
        "",
        0,
        0,
    )
    assert prompt == prompt_len(tokenizer, hi) and new <= 3  # the answer stops at the sequence length
    tokenizer.chat_template = None
    assert greedy_answer(model, tokenizer, hi, 5, 128, device) is None  # no chat template


def prompt_len(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_the_best_by_eval_score_does_not_look_at_the_loss_unless_the_scores_tie() -> None:
    state = LoopState()
    state.finish_epoch({"valid_loss": 1.0, "eval_score": 0.5}, "a", patience=0)
    state.finish_epoch({"valid_loss": 0.5, "eval_score": 0.25}, "b", patience=0)  # lower loss, worse score
    assert state.best_checkpoint == "a"
    state.finish_epoch({"valid_loss": 0.9, "eval_score": 0.5}, "c", patience=0)  # same score, lower loss
    assert state.best_checkpoint == "c"
    state.finish_epoch({"eval_score": 0.75}, "d", patience=0)  # no validation file: the score alone
    assert state.best_checkpoint == "d" and state.best_metrics["eval_score"] == 0.75
    state.finish_epoch({"valid_loss": 0.1}, "e", patience=0)  # its scoring cut short: never the best
    assert state.best_checkpoint == "d"
    # early stopping counts epochs without a better score
    stopping = LoopState()
    for name, score in (("a", 0.5), ("b", 0.5), ("c", 0.25)):
        stopping.finish_epoch({"valid_loss": 1.0, "eval_score": score}, name, patience=2)
    assert stopping.early_stopped and stopping.best_checkpoint == "a"
