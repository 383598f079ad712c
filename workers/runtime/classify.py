"""Text classification with a loaded sequence classifier.

Texts are sorted by length and padded per batch: a batch of similar lengths wastes almost
no compute on padding, which on mixed-length input is most of the speed-up over a padded,
input-ordered pipeline (bench/classify.py measures it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.runtime.models import CLASSIFICATION, LoadedModel
from workers.runtime.specs import ClassifyRequest, ClassifyResult, LabelScore


def _check(model: LoadedModel, request: ClassifyRequest) -> None:
    if model.task != CLASSIFICATION:
        raise ValueError(f"this is a {model.task} model, not a classifier")
    if request.top_k is not None and request.top_k < 1:
        raise ValueError("top_k must be at least 1")
    if request.batch_size < 1 or request.max_seq_length < 1:
        raise ValueError("batch_size and max_seq_length must be at least 1")


def batch_tensors(model: LoadedModel, rows: Sequence[list[int]]) -> dict[str, torch.Tensor]:
    """Token rows padded to the longest, with their attention mask, on the model's device."""
    pad_id = model.tokenizer.pad_token_id or 0
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids.to(model.device), "attention_mask": attention_mask.to(model.device)}


def _scores(model: LoadedModel, rows: Sequence[list[int]]) -> torch.Tensor:
    logits = model.model(**batch_tensors(model, rows)).logits.float()
    return torch.sigmoid(logits) if model.multi_label else torch.softmax(logits, dim=-1)


def _ranked(labels: list[str], scores: list[float], top_k: int | None) -> list[LabelScore]:
    ranked = sorted(zip(labels, scores, strict=True), key=lambda pair: pair[1], reverse=True)
    return [LabelScore(label, score) for label, score in ranked[:top_k]]


def classify(model: LoadedModel, request: ClassifyRequest) -> ClassifyResult:
    """Score every text against every label; results come back in input order."""
    _check(model, request)
    max_length = min(request.max_seq_length, model.context_length)
    # One tokenizer call for all texts: the fast tokenizer batches them in Rust.
    encoded = model.tokenizer(list(request.texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[list[LabelScore]] = [[] for _ in encoded]
    with torch.inference_mode():
        for start in range(0, len(order), request.batch_size):
            batch = order[start : start + request.batch_size]
            scores = _scores(model, [encoded[i] for i in batch]).tolist()
            for i, row in zip(batch, scores, strict=True):
                results[i] = _ranked(model.labels, row, request.top_k)
    return ClassifyResult(results=results, input_tokens=sum(len(ids) for ids in encoded))
