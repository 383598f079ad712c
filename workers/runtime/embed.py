"""Sentence embeddings with a loaded bare encoder, by the sentence-transformers recipe: the last
hidden states averaged over the real tokens (the attention mask), then scaled to unit length, so
that a dot product is a cosine similarity.

Texts are sorted by length and padded per batch, as in `classify`. A text longer than the model's
max_seq_length is refused rather than truncated (OpenAI refuses too): a vector of half a text
would pass for the whole text's.
"""

from __future__ import annotations

import torch

from workers.runtime.classify import batch_tensors
from workers.runtime.models import EMBEDDING, LoadedModel
from workers.runtime.specs import EmbedRequest, EmbedResult


class EmbedInputError(ValueError):
    """An input the model cannot embed whole: `index` is its place in the request."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"input[{index}] is {tokens} tokens; the model reads at most {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's hidden states averaged over its unmasked tokens, then L2-normalised."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


def token_ids(model: LoadedModel, texts: tuple[str, ...]) -> list[list[int]]:
    """Every text's tokens, whole; an over-long one raises EmbedInputError (the first, by index)."""
    # One tokenizer call for all texts: the fast tokenizer batches them in Rust. verbose=False: an
    # over-long text is ours to refuse, not a warning in the worker's log.
    encoded: list[list[int]] = model.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    for index, ids in enumerate(encoded):
        if len(ids) > model.context_length:
            raise EmbedInputError(index, len(ids), model.context_length)
    return encoded


def embed(model: LoadedModel, request: EmbedRequest) -> EmbedResult:
    """One vector per text, in input order."""
    if model.task != EMBEDDING:
        raise ValueError(f"this is a {model.task} model, not an encoder that embeds")
    if request.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    encoded = token_ids(model, request.texts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    vectors: list[list[float]] = [[] for _ in encoded]
    with torch.inference_mode():
        for start in range(0, len(order), request.batch_size):
            batch = order[start : start + request.batch_size]
            inputs = batch_tensors(model, [encoded[i] for i in batch])
            hidden = model.model(**inputs).last_hidden_state.float()
            pooled = mean_pooled(hidden, inputs["attention_mask"]).tolist()
            for i, row in zip(batch, pooled, strict=True):
                vectors[i] = row
    return EmbedResult(vectors=vectors, input_tokens=sum(len(ids) for ids in encoded))
