"""The data of supervised fine-tuning: JSONL rows → token ids and loss masks → padded batches.

What the model learns from (every other token is context only, label IGNORE_INDEX):
- chat rows (`{"messages": [...]}`), formatted with the model's chat template: the assistant
  replies, each with its end-of-turn token, except replies marked `"weight": 0`;
- prompt/completion rows: the completion and an EOS token.
Batches are padded per batch, like the classifier's (`workers.runtime.data`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2.exceptions import TemplateError

from workers.runtime.data import TRAINING_FILE, VALIDATION_FILE, iter_records
from workers.runtime.specs import VALIDATION_FRACTION, TrainingDataError, TrainSpec, validation_size
from workers.runtime.tools import render
from workers.runtime.training import load_tokenizer

IGNORE_INDEX = -100  # the label of a token the loss skips (PyTorch's and transformers' convention)


@dataclass(frozen=True)
class LMSplit:
    input_ids: list[list[int]]
    labels: list[list[int]]  # the token id where the loss learns it, IGNORE_INDEX where it is context

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


@dataclass(frozen=True)
class LMData:
    train: LMSplit
    valid: LMSplit
    skipped: int  # examples left with nothing to learn (all weight 0, or truncated away)


@dataclass(frozen=True)
class LMBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    # (row, position) of every token whose next token is learned: found here on the CPU, because
    # a boolean mask on the GPU would sync to learn how many there are
    learned_rows: torch.Tensor
    learned_positions: torch.Tensor
    n_tokens: int  # non-padding tokens, known without a device sync
    n_supervised: int  # tokens the loss predicts (labels past the first position)

    def to(self, device: torch.device) -> LMBatch:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=True)

        return LMBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.labels),
            move(self.learned_rows),
            move(self.learned_positions),
            self.n_tokens,
            self.n_supervised,
        )


def render_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any, *, add_generation_prompt: bool = False
) -> str:
    # Conversations with tools use the tool template the served model is called with (workers.runtime.tools).
    return render(tokenizer, messages, tools, add_generation_prompt=add_generation_prompt)


def _template_message(message: Mapping[str, Any]) -> dict[str, Any]:
    turn = {key: value for key, value in message.items() if key != "weight"}
    if turn.get("content") is None:  # a reply that only calls tools: OpenAI's format allows null
        turn["content"] = ""
    return turn


def chat_spans(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any = None
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template renders it, and the character spans to learn from.

    A span starts where the template's generation prompt for that reply ends (what the model sees
    when serving) and runs to the end of the reply's turn, end-of-turn token included and the
    whitespace between turns excluded. Rendering prefixes, rather than searching for the reply's
    text, stays right when the same text occurs earlier and for any template that renders turn
    by turn (system prompts it injects, BOS tokens, role headers).
    """
    turns = [_template_message(message) for message in messages]
    text = render_chat(tokenizer, turns, tools)
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        before = render_chat(tokenizer, turns[:index], tools, add_generation_prompt=True)
        through = render_chat(tokenizer, turns[: index + 1], tools).rstrip()
        if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
            raise ValueError(
                "the model's chat template does not render a conversation turn by turn, "
                "so the assistant replies cannot be located"
            )
        spans.append((len(before), len(through)))
    return text, spans


def encode_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Any, max_length: int
) -> tuple[list[int], list[int]]:
    text, spans = chat_spans(tokenizer, messages, tools)
    # The template wrote the special tokens (BOS too, if any): adding them again would double them.
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length
    )
    ids = list(encoded["input_ids"])
    # A token is learned when it starts inside a span; zero-width tokens (no text) never are.
    labels = [
        token if end > start and any(low <= start < high for low, high in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


def encode_completion(
    tokenizer: Any, prompt: str, completion: str, max_length: int
) -> tuple[list[int], list[int]]:
    # Tokenized apart, the prompt gets exactly the ids /v1/completions feeds the model for it.
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    completion_ids = [*tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
    return ids, labels


def encode_record(
    record: dict[str, Any], where: str, spec: TrainSpec, tokenizer: Any, max_length: int
) -> tuple[list[int], list[int]]:
    messages = record.get(spec.messages_field)
    if isinstance(messages, list):
        if not getattr(tokenizer, "chat_template", None):
            raise TrainingDataError(
                f"{where}: chat examples need a chat template and this base model has none; "
                "use prompt/completion rows"
            )
        try:
            return encode_chat(tokenizer, messages, record.get("tools"), max_length)
        except (TemplateError, TypeError, KeyError, ValueError) as error:  # what a template raises
            raise TrainingDataError(
                f"{where}: the chat template failed on this conversation ({error})"
            ) from None
    prompt, completion = record.get(spec.prompt_field), record.get(spec.completion_field)
    if isinstance(prompt, str) and isinstance(completion, str):
        return encode_completion(tokenizer, prompt, completion, max_length)
    raise TrainingDataError(
        f'{where}: expected "{spec.messages_field}" (a list of messages) or '
        f'"{spec.prompt_field}" and "{spec.completion_field}" (strings)'
    )


def read_records(path: str, source: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(where, record) pairs; `where` names the file as `source` (by default its name, never the
    worker's directory) and the line."""
    source = source or Path(path).name
    records = [(f"{source}, line {number}", record) for number, record in iter_records(path, source=source)]
    if not records:
        raise TrainingDataError(f"{source}: no examples")
    return records


def split_records(
    records: Sequence[tuple[str, dict[str, Any]]], seed: int
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """(train, valid): a seeded random 10% held out; both keep file order."""
    n_valid = validation_size(len(records), VALIDATION_FRACTION)
    held_out = set(random.Random(seed).sample(range(len(records)), n_valid))  # local: global RNG untouched
    train = [record for index, record in enumerate(records) if index not in held_out]
    valid = [record for index, record in enumerate(records) if index in held_out]
    return train, valid


def encode_split(
    records: Sequence[tuple[str, dict[str, Any]]], spec: TrainSpec, tokenizer: Any, max_length: int
) -> tuple[LMSplit, int]:
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    skipped = 0
    for where, record in records:
        ids, row_labels = encode_record(record, where, spec, tokenizer, max_length)
        if all(label == IGNORE_INDEX for label in row_labels[1:]):  # nothing predicts the first token
            skipped += 1
            continue
        input_ids.append(ids)
        labels.append(row_labels)
    return LMSplit(input_ids, labels), skipped


def prepare_lm_data(spec: TrainSpec, tokenizer: Any, max_length: int, seed: int) -> LMData:
    train_records = read_records(spec.training_file, TRAINING_FILE)
    if spec.validation_file:
        valid_records = read_records(spec.validation_file, VALIDATION_FILE)
    else:
        train_records, valid_records = split_records(train_records, seed)
    train, skipped_train = encode_split(train_records, spec, tokenizer, max_length)
    valid, skipped_valid = encode_split(valid_records, spec, tokenizer, max_length)
    if not len(train):
        raise TrainingDataError(
            "no training example has a token to learn from within max_seq_length "
            f"({max_length}): every assistant reply is weight 0 or cut off"
        )
    return LMData(train, valid, skipped_train + skipped_valid)


def collate_lm(split: LMSplit, indices: Sequence[int], pad_id: int, pad_to_multiple_of: int = 1) -> LMBatch:
    """Pad the rows to the longest one in this batch (rounded up to pad_to_multiple_of)."""
    rows = [split.input_ids[i] for i in indices]
    width = math.ceil(max(len(row) for row in rows) / pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, index in enumerate(indices):
        row, row_labels = split.input_ids[index], split.labels[index]
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        labels[r, : len(row)] = torch.tensor(row_labels, dtype=torch.long)
        attention_mask[r, : len(row)] = 1
    learned_rows, learned_positions = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    n_tokens = sum(len(row) for row in rows)
    return LMBatch(
        input_ids, attention_mask, labels, learned_rows, learned_positions, n_tokens, len(learned_rows)
    )


def load_lm_tokenizer(model_dir: str) -> Any:
    tokenizer = load_tokenizer(model_dir)  # sets a pad token on bases that lack one
    # Plain ValueErrors: a base model that cannot be fine-tuned is ours to fix (staff mark which
    # bases are fine-tunable), not a fault in the customer's data.
    if not tokenizer.is_fast:
        raise ValueError("supervised fine-tuning needs a fast tokenizer (tokenizer.json) to locate replies")
    if tokenizer.eos_token_id is None:
        raise ValueError("the base model's tokenizer has no EOS token, so it cannot learn where to stop")
    return tokenizer
