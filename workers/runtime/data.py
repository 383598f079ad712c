"""Reading, splitting, tokenizing and batching classification data.

Batches are padded per batch (never to max_seq_length) and grouped by length, because
padding tokens cost as much compute as real ones: on short, mixed-length texts this alone
roughly halves training time.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.runtime.specs import TrainingDataError, validation_size

JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
CSV_SUFFIXES = {".csv", ".tsv"}
# How errors name the files of a run: the customer reads them in the job's error.
TRAINING_FILE = "training file"
VALIDATION_FILE = "validation file"
# Length grouping sorts within chunks of this many batches: big enough that batches are
# nearly uniform in length, small enough that the epoch order stays random.
MEGA_BATCH_BATCHES = 50
TOKENIZE_CHUNK = 1_000


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    line: int  # 1-based line in the source file, for error messages
    soft: Mapping[str, float] | None = None  # a teacher's probabilities (distillation), else None


@dataclass(frozen=True)
class EncodedSplit:
    input_ids: list[list[int]]
    label_ids: list[int]
    soft_targets: list[list[float]] | None = None  # per example, in label-id order

    def __len__(self) -> int:
        return len(self.label_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


@dataclass(frozen=True)
class PreparedData:
    labels: list[str]
    train: EncodedSplit
    valid: EncodedSplit


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_tokens: int  # non-padding tokens, known without a device sync
    soft: torch.Tensor | None = None  # (batch, labels) target probabilities, when distilling

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.n_tokens,
            None if self.soft is None else self.soft.to(device, non_blocking=True),
        )


# --- reading -----------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """'jsonl' or 'csv', by extension, else by sniffing the first non-blank character.

    Storage keys often have no extension, hence the sniffing.
    """
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "csv"


def iter_records(
    path: str | Path, *, columns: Sequence[str] = (), source: str = ""
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) from a CSV-with-header or JSONL file, one row at a time.

    A CSV header that lacks one of `columns` is an error up front, not on every row. Errors name the
    file as `source` ("training file"), by default its name: never its directory, which is the
    worker's and means nothing to the customer who reads the job's error.
    """
    source = source or Path(path).name
    # utf-8-sig drops a BOM (Excel writes one); newline="" lets csv handle CRLF and quoted newlines.
    if detect_format(path) == "jsonl":
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise TrainingDataError(f"{source}, line {number}: invalid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise TrainingDataError(f"{source}, line {number}: each line must be a JSON object")
                yield number, record
        return
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=csv_delimiter(path))
        missing = [column for column in columns if column not in (reader.fieldnames or [])]
        if missing:
            header = ", ".join(reader.fieldnames or [])
            raise TrainingDataError(f'{source}: no "{missing[0]}" column in the header ({header})')
        for row in reader:
            yield reader.line_num, dict(row)


def csv_delimiter(path: str | Path) -> str:
    """The delimiter the upload's validation read the file with (apps/projects/validation.py,
    `sniff_delimiter`): tab for a .tsv, else the first of , tab ; in the header line. Excel in
    many European locales writes ";"."""
    if Path(path).suffix.lower() == ".tsv":
        return "\t"
    with open(path, encoding="utf-8-sig", newline="") as handle:
        header = next((line for line in handle if line.strip()), "")
    return next((char for char in (",", "\t", ";") if char in header), ",")


def label_to_str(value: Any) -> str | None:
    """Labels may arrive as numbers (JSON) or strings (CSV); 1, 1.0 and "1" are the same label.

    Same rules as the upload validation report (apps/projects/validation.py), so the label set
    the user saw is the one the model gets: no stripping, and booleans are not labels.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def read_examples(
    path: str | Path,
    text_field: str = "text",
    label_field: str = "label",
    soft_field: str = "",
    *,
    source: str = "",
) -> list[Example]:
    source = source or Path(path).name
    examples = []
    for number, record in iter_records(path, columns=(text_field, label_field), source=source):
        where = f"{source}, line {number}"
        text = record.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise TrainingDataError(f'{where}: "{text_field}" is missing or empty')
        label = label_to_str(record.get(label_field))
        if label is None:
            raise TrainingDataError(f'{where}: "{label_field}" is missing or empty')
        soft = _soft_targets(record.get(soft_field), f'{where}: "{soft_field}"') if soft_field else None
        examples.append(Example(text=text, label=label, line=number, soft=soft))
    if not examples:
        raise TrainingDataError(f"{source}: no examples")
    return examples


def _soft_targets(value: Any, where: str) -> dict[str, float]:
    if (
        not isinstance(value, dict)
        or not value
        or not all(
            isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p <= 1 for p in value.values()
        )
        or not math.isclose(sum(value.values()), 1.0, abs_tol=1e-3)
    ):
        # Not the customer's: soft targets come only from the teacher's labels, written by the worker.
        raise ValueError(f"{where} must map labels to probabilities that sum to 1")
    return {str(label): float(p) for label, p in value.items()}


def sorted_labels(examples: Sequence[Example]) -> list[str]:
    """The label set sorted by name, so label ids do not depend on file order. Plain string order
    ("10" before "2") on purpose: the web side orders a file's labels the same way."""
    return sorted({example.label for example in examples})


# --- splitting ---------------------------------------------------------------------------------


def _validation_quotas(counts: dict[str, int], n_valid: int) -> dict[str, int]:
    """How many examples of each label to hold out: proportional (largest remainder), at least
    one per label that has two or more, and never a label's last training example."""
    n_total = sum(counts.values())
    exact = {label: count * n_valid / n_total for label, count in counts.items()}
    quotas = {label: math.floor(share) for label, share in exact.items()}
    by_remainder = sorted(counts, key=lambda label: (quotas[label] - exact[label], label))
    for label in by_remainder[: n_valid - sum(quotas.values())]:
        quotas[label] += 1
    for label in sorted(counts):
        if counts[label] >= 2 and quotas[label] == 0:
            quotas[label] = 1
            # Take the extra one from the largest share so the total (and estimate_steps) holds.
            largest = max(sorted(quotas), key=lambda other: quotas[other])
            if quotas[largest] > 1:
                quotas[largest] -= 1
    return {label: min(quota, counts[label] - 1) for label, quota in quotas.items()}


def stratified_split(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, valid) with every label's share kept; both keep file order."""
    by_label: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_label.setdefault(example.label, []).append(index)
    quotas = _validation_quotas(
        {label: len(indices) for label, indices in by_label.items()}, validation_size(len(examples), fraction)
    )
    rng = random.Random(seed)  # a local RNG: the split must not depend on (or move) global state
    held_out: set[int] = set()
    for label in sorted(by_label):
        held_out.update(rng.sample(by_label[label], quotas[label]))
    train = [example for index, example in enumerate(examples) if index not in held_out]
    valid = [example for index, example in enumerate(examples) if index in held_out]
    return train, valid


def check_validation_labels(train_labels: Sequence[str], valid: Sequence[Example]) -> None:
    unknown = sorted({example.label for example in valid} - set(train_labels))
    if unknown:
        raise TrainingDataError(
            "the validation data has labels that never occur in the training data: "
            + ", ".join(repr(label) for label in unknown)
        )


# --- tokenizing and batching -------------------------------------------------------------------


def encode(
    examples: Sequence[Example], tokenizer: Any, labels: Sequence[str], max_length: int
) -> EncodedSplit:
    """Token ids per example, truncated but not padded (padding happens per batch)."""
    label_id = {label: i for i, label in enumerate(labels)}
    input_ids: list[list[int]] = []
    for start in range(0, len(examples), TOKENIZE_CHUNK):
        chunk = [example.text for example in examples[start : start + TOKENIZE_CHUNK]]
        encoded = tokenizer(
            chunk,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        input_ids.extend(list(ids) for ids in encoded["input_ids"])
    soft = None
    if examples and all(example.soft is not None for example in examples):
        soft = [[(example.soft or {}).get(label, 0.0) for label in labels] for example in examples]
    return EncodedSplit(
        input_ids=input_ids, label_ids=[label_id[example.label] for example in examples], soft_targets=soft
    )


def prepare_data(
    training_file: str,
    validation_file: str | None,
    tokenizer: Any,
    *,
    text_field: str,
    label_field: str,
    max_length: int,
    seed: int,
    validation_fraction: float,
    labels: Sequence[str] = (),
    soft_field: str = "",
) -> PreparedData:
    """`labels` fixes the label set (a distillation's: the teacher may never give some of them);
    otherwise it is the training data's. `soft_field` names per-example target probabilities."""
    train_examples = read_examples(training_file, text_field, label_field, soft_field, source=TRAINING_FILE)
    if validation_file:
        valid_examples = read_examples(validation_file, text_field, label_field, source=VALIDATION_FILE)
    else:
        train_examples, valid_examples = stratified_split(train_examples, validation_fraction, seed)
    unknown = sorted({example.label for example in train_examples} - set(labels)) if labels else []
    if unknown:
        raise TrainingDataError(
            f"the training data has labels outside the label set: {', '.join(map(repr, unknown))}"
        )
    labels = sorted(labels) if labels else sorted_labels(train_examples)
    if len(labels) < 2:
        raise TrainingDataError(
            f"classification needs at least 2 distinct labels in the training data, found {labels}"
        )
    check_validation_labels(labels, valid_examples)
    return PreparedData(
        labels=labels,
        train=encode(train_examples, tokenizer, labels, max_length),
        valid=encode(valid_examples, tokenizer, labels, max_length),
    )


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Batches of indices with similar lengths, in a random but seeded order.

    Shuffle, cut into mega-chunks of MEGA_BATCH_BATCHES batches, sort each chunk by length,
    cut into batches, then shuffle the batch order. A mega-chunk is a whole number of batches,
    so only the last batch can be short and there are ceil(n / batch_size) batches.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    mega = batch_size * MEGA_BATCH_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda index: -lengths[index])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    # The widest batch goes first so an out-of-memory error shows at step one, not hours in.
    widest = max(range(len(batches)), key=lambda i: max(lengths[j] for j in batches[i]), default=0)
    if batches:
        batches[0], batches[widest] = batches[widest], batches[0]
    return batches


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batch order of one epoch depends only on (seed, epoch), so a resumed run can
    rebuild it exactly and skip the batches it already did."""
    generator = torch.Generator().manual_seed(seed * 1_000 + epoch)
    return length_grouped_batches(lengths, batch_size, generator)


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Sorted by length, no shuffling: evaluation order does not matter, padding does."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(split: EncodedSplit, indices: Sequence[int], pad_id: int, pad_to_multiple_of: int = 1) -> Batch:
    """Pad the rows to the longest one in this batch (rounded up to pad_to_multiple_of)."""
    rows = [split.input_ids[i] for i in indices]
    longest = max(len(row) for row in rows)
    width = math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, : len(row)] = 1
    labels = torch.tensor([split.label_ids[i] for i in indices], dtype=torch.long)
    soft = None
    if split.soft_targets is not None:
        soft = torch.tensor([split.soft_targets[i] for i in indices], dtype=torch.float32)
    return Batch(input_ids, attention_mask, labels, n_tokens=sum(len(row) for row in rows), soft=soft)


def count_tokens(path: str | Path, text_field: str, max_length: int, tokenizer: Any) -> int:
    """Tokens one epoch over this file would process (truncated, no padding)."""
    total = 0
    texts: list[str] = []
    for _, record in iter_records(path, columns=(text_field,)):
        text = record.get(text_field)
        if isinstance(text, str):
            texts.append(text)
        if len(texts) >= TOKENIZE_CHUNK:
            total += _count_chunk(texts, tokenizer, max_length)
            texts = []
    return total + (_count_chunk(texts, tokenizer, max_length) if texts else 0)


def _count_chunk(texts: list[str], tokenizer: Any, max_length: int) -> int:
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return sum(len(ids) for ids in encoded["input_ids"])
