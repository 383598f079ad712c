"""Text generation with our own sampling loop, so text can stream as it is made.

Every choice of every request is one row of a left-padded batch sharing a KV cache
(`past_key_values`). Each step runs the model once for all live rows, then picks one token
per row with that row's own sampling settings and its own `torch.Generator`; finished rows
are dropped from the cache so they cost nothing afterwards.

Same seed, same text: a row's random draws come only from its generator, seeded from
(request seed, choice index), so `generate` and `generate_batch` draw the same numbers for
the same request. What batching can change is the logits themselves: padded batches do
their matmuls in other shapes, which moves logits in the last float bits (more so in bf16
on GPUs). That flips a token only where two candidates are tied to that precision, so
texts match in practice but are not guaranteed bit-identical across batch compositions.

`Decoder` is the running batch itself: requests may join it between two steps (their prompts are
prefilled on their own, then their KV cache is left-padded to the batch's width and appended as new
rows, with attention-mask zeros over the padding and their own position ids), and leave it as soon
as they finish. `generate_batch` is a Decoder that nobody joins.
"""

from __future__ import annotations

import inspect
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

from workers.runtime.constrain import Constraint, GrammarError, apply_constraints
from workers.runtime.models import GENERATION, LoadedModel
from workers.runtime.specs import Choice, GenerateRequest, GenerateResult, TokenLogprob
from workers.runtime.tools import render

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128
_REPLACEMENT = "\ufffd"  # what decode() shows for an incomplete UTF-8 sequence
_SEED_STEP = 0x9E3779B97F4A7C15  # golden-ratio increment: spreads choice seeds far apart
_SEED_MOD = 2**63


class GenerateRequestError(ValueError):
    """A request the model cannot serve; `param` names the offending request field."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# ---------------------------------------------------------------------------------------------
# Validation and prompts
# ---------------------------------------------------------------------------------------------


def _prompt_param(request: GenerateRequest) -> str:
    return "messages" if request.messages is not None else "prompt"


def validate_request(request: GenerateRequest) -> None:
    checks: list[tuple[bool, str, str]] = [
        (
            (request.messages is None) != (request.prompt is None),
            "messages",
            "give exactly one of messages or prompt",
        ),
        (request.max_tokens >= 1, "max_tokens", "max_tokens must be at least 1"),
        (0 <= request.temperature <= 2, "temperature", "temperature must be between 0 and 2"),
        (0 <= request.top_p <= 1, "top_p", "top_p must be between 0 and 1"),
        (1 <= request.n <= MAX_CHOICES, "n", f"n must be between 1 and {MAX_CHOICES}"),
        (len(request.stop) <= MAX_STOP_STRINGS, "stop", f"stop takes at most {MAX_STOP_STRINGS} strings"),
        (all(request.stop), "stop", "stop strings must not be empty"),
        (
            -2 <= request.presence_penalty <= 2,
            "presence_penalty",
            "presence_penalty must be between -2 and 2",
        ),
        (
            -2 <= request.frequency_penalty <= 2,
            "frequency_penalty",
            "frequency_penalty must be between -2 and 2",
        ),
        (
            0 <= request.top_logprobs <= MAX_TOP_LOGPROBS,
            "top_logprobs",
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}",
        ),
        (request.logprobs or request.top_logprobs == 0, "top_logprobs", "top_logprobs requires logprobs"),
    ]
    for ok, param, message in checks:
        if not ok:
            raise GenerateRequestError(message, param)


def prompt_ids(model: LoadedModel, request: GenerateRequest) -> list[int]:
    tokenizer = model.tokenizer
    if request.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise GenerateRequestError("this model has no chat template; send a prompt instead", "messages")
        try:
            text = render(tokenizer, request.messages, request.tools, add_generation_prompt=True)
        except ValueError as exc:
            raise GenerateRequestError(
                "this model cannot call tools: its chat template has no tool calling", "tools"
            ) from exc
        # The template already wrote its special tokens; adding BOS again would double it.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(request.prompt)["input_ids"]
    if not ids:  # an empty prompt: the model still needs one position to predict from
        ids = [_pad_id(model)]
    return list(ids)


def check_context(model: LoadedModel, request: GenerateRequest, n_prompt: int) -> None:
    if n_prompt + request.max_tokens <= model.context_length:
        return
    where = "messages" if request.messages is not None else "prompt"
    param = _prompt_param(request) if n_prompt >= model.context_length else "max_tokens"
    raise GenerateRequestError(
        f"This model's maximum context length is {model.context_length} tokens. However, you requested "
        f"{n_prompt + request.max_tokens} tokens ({n_prompt} in the {where}, {request.max_tokens} in the "
        f"completion). Please reduce the length of the {where} or the completion.",
        param,
        code="context_length_exceeded",
    )


def _pad_id(model: LoadedModel) -> int:
    tokenizer = model.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def eos_token_ids(model: LoadedModel) -> frozenset[int]:
    found: set[int] = set()
    for source in (getattr(model.model, "generation_config", None), model.model.config, model.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(v) for v in value)
    return frozenset(found)


def choice_seed(seed: int, index: int) -> int:
    # Choice 0 uses the seed itself, so n=1 and the first of n=3 agree.
    return (seed + index * _SEED_STEP) % _SEED_MOD


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def apply_penalties(
    logits: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor
) -> torch.Tensor:
    """OpenAI's definition: logit[j] -= count[j] * frequency + (count[j] > 0) * presence.

    `counts` holds how often each token already appears in the row's completion (not the prompt).
    """
    return logits - counts * frequency[:, None] - (counts > 0).to(logits.dtype) * presence[:, None]


def nucleus_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero every token outside the smallest set whose probability reaches top_p (per row)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above
    # A token stays while the mass above it is still short of top_p; the top token always stays.
    keep_sorted = before < top_p[:, None]
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return probs * keep


@dataclass
class _Picked:
    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


def _draw(adjusted: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
    picked = adjusted.argmax(dim=-1).tolist()  # greedy rows are done here
    sampled = [i for i, row in enumerate(rows) if row.request.temperature > 0]
    if not sampled:
        return picked
    index = torch.tensor(sampled, device=adjusted.device)
    temperature = torch.tensor([rows[i].request.temperature for i in sampled], device=adjusted.device)
    probs = torch.softmax(adjusted[index] / temperature[:, None], dim=-1)
    if any(rows[i].request.top_p < 1 for i in sampled):
        probs = nucleus_filter(
            probs, torch.tensor([rows[i].request.top_p for i in sampled], device=probs.device)
        )
    for k, i in enumerate(sampled):
        # One draw per row from the row's own generator: what makes a seed reproducible
        # whatever else shares the batch.
        picked[i] = int(torch.multinomial(probs[k], 1, generator=rows[i].generator).item())
    return picked


def pick_tokens(logits: torch.Tensor, rows: Sequence[_Row], counts: torch.Tensor | None) -> list[_Picked]:
    logits = logits.float()
    adjusted = logits
    if counts is not None:
        presence = torch.tensor([r.request.presence_penalty for r in rows], device=logits.device)
        frequency = torch.tensor([r.request.frequency_penalty for r in rows], device=logits.device)
        adjusted = apply_penalties(logits, counts, presence, frequency)
    if any(r.constraint is not None for r in rows):
        adjusted = apply_constraints(adjusted, [r.constraint for r in rows])
    picked = [_Picked(token_id) for token_id in _draw(adjusted, rows)]
    if any(r.request.logprobs for r in rows):
        # Reported logprobs are the model's own distribution (raw logits), as OpenAI reports
        # them: neither temperature nor penalties change them.
        logprobs = torch.log_softmax(logits, dim=-1)
        for i, row in enumerate(rows):
            if row.request.logprobs:
                picked[i].logprob = float(logprobs[i, picked[i].token_id])
                if row.request.top_logprobs:
                    values, ids = logprobs[i].topk(row.request.top_logprobs)
                    picked[i].top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return picked


# ---------------------------------------------------------------------------------------------
# Text: incremental decoding, stop strings, token bytes
# ---------------------------------------------------------------------------------------------


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop string in text[start:] (as an index into text), or -1."""
    found = [i for i in (text.find(s, max(0, start - len(s))) for s in stops) if i >= 0]
    return min(found) if found else -1


def printable_end(text: str, stops: Sequence[str]) -> int:
    """How much of text can be sent now: not a trailing partial character, nor a possible stop start."""
    end = len(text)
    while end and text[end - 1] == _REPLACEMENT:
        end -= 1
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), held, -1):
            if text.endswith(stop[:k], 0, end):
                held = k
                break
    return end - held


@cache
def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level alphabet: every byte maps to one printable character.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(tokenizer: Any, token_id: int) -> list[int]:
    """The raw bytes of one token, even when it holds only part of a UTF-8 character."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if token_id in tokenizer.all_special_ids:
        return list(piece.encode())
    fallback = _BYTE_FALLBACK.fullmatch(piece)
    if fallback:  # SentencePiece byte-fallback tokens
        return [int(fallback.group(1), 16)]
    decoder = _byte_decoder()
    if all(char in decoder for char in piece):  # byte-level BPE (GPT-2, Llama 3, SmolLM2)
        return [decoder[char] for char in piece]
    return list(tokenizer.decode([token_id]).encode())


def _token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id], clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------------------------------
# Rows: one choice of one request
# ---------------------------------------------------------------------------------------------


class StreamingText:
    """A completion's text as its tokens arrive: what may be sent now, and where a stop string cuts it."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of text already handed out
        self.ends: list[int] = []  # len(text) after each token, to map tokens to text
        self.stopped = False  # a stop string was found; text is cut right before it

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became safe to send (maybe "")."""
        self.token_ids.append(token_id)
        # Decoding the whole completion (not the token alone) is what makes multi-byte
        # characters split across tokens come out right.
        self.text = self.tokenizer.decode(
            self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        self.ends.append(len(self.text))
        cut = find_stop(self.text, self.stops, self.emitted)
        if cut >= 0:
            self.text = self.text[:cut]
            self.stopped = True
            return self.finish()
        return self._flush(max(self.emitted, printable_end(self.text, self.stops)))

    def finish(self) -> str:
        """The text still held back, now that no token follows."""
        return self._flush(len(self.text))

    def _flush(self, end: int) -> str:
        delta = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return delta


@dataclass
class _Row:
    request_index: int
    choice_index: int
    request: GenerateRequest
    generator: torch.Generator | None
    stream: StreamingText
    constraint: Constraint | None = None
    picks: list[_Picked] = field(default_factory=list)
    finish_reason: str | None = None
    eos_tokens: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def accept(self, pick: _Picked, eos_ids: frozenset[int]) -> str:
        """Take one token; return the text that became safe to send."""
        if pick.token_id in eos_ids:
            self.eos_tokens = 1
            self.finish_reason = "stop"
            return self.stream.finish()
        self.picks.append(pick)
        delta = self.stream.push(pick.token_id)
        if self.constraint is not None:
            self.constraint.accept(pick.token_id)
        if self.stream.stopped or (self.constraint is not None and self.constraint.complete):
            # A complete grammar allows nothing but the end: the row is done without spending a step.
            self.finish_reason = "stop"
            delta += self.stream.finish()
        elif len(self.stream.token_ids) >= self.request.max_tokens:
            self.finish_reason = "length"
            delta += self.stream.finish()
        return delta

    def choice(self, tokenizer: Any) -> Choice:
        text = self.stream.text
        logprobs = None
        if self.request.logprobs:
            # After a stop string, only the tokens that still show text before the cut count.
            starts = [0, *self.stream.ends]
            logprobs = [
                self._token_logprob(tokenizer, pick)
                for pick, start in zip(self.picks, starts, strict=False)
                if not self.stream.stopped or start < len(text)
            ]
        return Choice(self.choice_index, text, self.finish_reason or "length", logprobs)

    @staticmethod
    def _token_logprob(tokenizer: Any, pick: _Picked) -> TokenLogprob:
        return TokenLogprob(
            token=_token_text(tokenizer, pick.token_id),
            logprob=pick.logprob if pick.logprob is not None else 0.0,
            bytes=token_bytes(tokenizer, pick.token_id),
            top_logprobs=[(_token_text(tokenizer, t), lp) for t, lp in pick.top],
        )

    @property
    def completion_tokens(self) -> int:
        return len(self.stream.token_ids) + self.eos_tokens


def _vocab_size(model: LoadedModel) -> int:
    """Width of the logits (the output layer can be wider than the tokenizer's vocabulary)."""
    network: Any = model.model
    head = network.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(network.config.vocab_size)


def _constraint(model: LoadedModel, request: GenerateRequest) -> Constraint | None:
    if request.grammar is None:
        return None
    try:
        return Constraint(model.tokenizer, _vocab_size(model), eos_token_ids(model), request.grammar)
    except GrammarError as exc:
        raise GenerateRequestError(
            f"the response format cannot be followed: {exc}", "response_format"
        ) from exc


def check_constraint(model: LoadedModel, request: GenerateRequest) -> None:
    """Raise GenerateRequestError if the request's grammar cannot run on this model's tokenizer."""
    _constraint(model, request)


def _make_rows(model: LoadedModel, requests: Sequence[GenerateRequest], first_index: int = 0) -> list[_Row]:
    rows = []
    for request_index, request in enumerate(requests, start=first_index):
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        for choice_index in range(request.n):
            generator = None
            if request.temperature > 0:
                generator = torch.Generator(device=model.device)
                generator.manual_seed(choice_seed(seed, choice_index))
            stream = StreamingText(model.tokenizer, request.stop)
            rows.append(
                _Row(request_index, choice_index, request, generator, stream, _constraint(model, request))
            )
    return rows


# ---------------------------------------------------------------------------------------------
# The decoding loop
# ---------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """The live rows and their model state; row i of every tensor belongs to rows[i]."""

    rows: list[_Row]
    cache: Any  # a transformers Cache
    attention_mask: torch.Tensor  # (rows, positions seen)
    next_position: torch.Tensor  # (rows,) position id of the next token
    logits: torch.Tensor  # (rows, vocab) for the next token
    counts: torch.Tensor | None  # (rows, vocab) completion token counts, only when penalties are used

    def keep(self, live: list[int]) -> None:
        if len(live) == len(self.rows):
            return
        if not live:
            self.rows = []
            return
        index = torch.tensor(live, device=self.attention_mask.device)
        self.rows = [self.rows[i] for i in live]
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.next_position = self.next_position[index]
        self.logits = self.logits[index]
        if self.counts is not None:
            self.counts = self.counts[index]


_LOGITS_TO_KEEP: dict[type, bool] = {}


def _forward(model: LoadedModel, **inputs: Any) -> Any:
    model_class = type(model.model)
    if model_class not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[model_class] = "logits_to_keep" in inspect.signature(model.model.forward).parameters
    if _LOGITS_TO_KEEP[model_class]:
        inputs["logits_to_keep"] = 1  # only the last position's logits: saves a (prompt × vocab) matmul
    return model.model(**inputs, use_cache=True)


def _prefill(model: LoadedModel, prompts: list[list[int]], rows: list[_Row], owners: list[int]) -> _Batch:
    """Run each distinct prompt once (left-padded), then copy its cache to each of its choices;
    `owners[i]` is the index in `prompts` of rows[i]'s prompt."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), _pad_id(model), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        mask[i, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(model.device), mask.to(model.device)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # left padding must not shift positions
    out = _forward(model, input_ids=input_ids, attention_mask=mask, position_ids=positions)
    expand = torch.tensor(owners, device=model.device)
    out.past_key_values.batch_select_indices(expand)
    penalised = any(r.request.presence_penalty or r.request.frequency_penalty for r in rows)
    vocab = out.logits.shape[-1]
    return _Batch(
        rows=rows,
        cache=out.past_key_values,
        attention_mask=mask[expand],
        next_position=positions[:, -1][expand] + 1,
        logits=out.logits[:, -1, :][expand],
        counts=torch.zeros((len(rows), vocab), device=model.device) if penalised else None,
    )


def _step(model: LoadedModel, batch: _Batch, token_ids: list[int]) -> None:
    tokens = torch.tensor(token_ids, device=model.device)[:, None]
    ones = torch.ones((len(token_ids), 1), dtype=batch.attention_mask.dtype, device=model.device)
    batch.attention_mask = torch.cat([batch.attention_mask, ones], dim=-1)
    out = _forward(
        model,
        input_ids=tokens,
        attention_mask=batch.attention_mask,
        position_ids=batch.next_position[:, None],
        past_key_values=batch.cache,
    )
    batch.cache = out.past_key_values
    batch.logits = out.logits[:, -1, :]
    batch.next_position = batch.next_position + 1


OnRowToken = Callable[[int, int, str], None]


def _dynamic_layers(cache: Any) -> list[Any] | None:
    """The cache's layers when every one is a plain growing cache (its tensors can be padded and
    concatenated row-wise); None for any other kind (sliding windows, quantized or static caches)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    return list(layers)


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _merge(batch: _Batch, joining: _Batch) -> None:
    """Append `joining`'s rows to `batch`. The narrower of the two is left-padded to the other's
    width: zero keys and values that the attention mask hides, so each row attends to exactly the
    positions it had alone, and its position ids (kept per row) are unchanged."""
    ours, theirs = _dynamic_layers(batch.cache), _dynamic_layers(joining.cache)
    if ours is None or theirs is None or len(ours) != len(theirs):
        raise ValueError("this model's cache cannot take rows that join mid-flight")
    width = max(batch.attention_mask.shape[1], joining.attention_mask.shape[1])
    for mine, new in zip(ours, theirs, strict=True):
        mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(new.keys, width, -2)])
        mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(new.values, width, -2)])
    batch.attention_mask = torch.cat(
        [_left_pad(batch.attention_mask, width, 1), _left_pad(joining.attention_mask, width, 1)]
    )
    if batch.counts is not None or joining.counts is not None:  # before the logits grow: _counts reads them
        batch.counts = torch.cat([_counts(batch), _counts(joining)])
    batch.next_position = torch.cat([batch.next_position, joining.next_position])
    batch.logits = torch.cat([batch.logits, joining.logits])
    batch.rows = [*batch.rows, *joining.rows]


def _counts(batch: _Batch) -> torch.Tensor:
    if batch.counts is not None:
        return batch.counts
    return torch.zeros(batch.logits.shape, device=batch.logits.device)


def _trim(batch: _Batch) -> None:
    """Drop the leading columns that no live row attends to (left by rows that left), so the
    cache of a long-running batch is as wide as its longest live row, not as its whole history."""
    layers = _dynamic_layers(batch.cache)
    if layers is None or not batch.rows:
        return
    used = batch.attention_mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first == 0:
        return
    batch.attention_mask = batch.attention_mask[:, first:]
    for layer in layers:
        layer.keys = layer.keys[:, :, first:]
        layer.values = layer.values[:, :, first:]


class Decoder:
    """A running batch that requests join between steps and leave when they finish.

    `add()` prefills new requests and merges them into the batch; `step()` picks one token for
    every live row, sends their text to `on_token(request key, choice, delta)` and runs the model
    once for the rows still live; it returns the requests that finished, by the key `add()` gave
    them. Not thread-safe: one caller drives it.
    """

    def __init__(self, model: LoadedModel, on_token: OnRowToken | None = None) -> None:
        if model.task != GENERATION:
            raise ValueError(f"this is a {model.task} model, not a generator")
        self.model = model
        self.on_token = on_token
        self.eos_ids = eos_token_ids(model)
        self.batch: _Batch | None = None
        self._next_key = 0
        self._rows: dict[int, list[_Row]] = {}  # every choice of each unfinished request
        self._prompt_tokens: dict[int, int] = {}

    @property
    def live(self) -> int:
        """How many rows (choices) are still decoding."""
        return len(self.batch.rows) if self.batch is not None else 0

    @property
    def pending(self) -> list[int]:
        """The keys of the requests not finished yet."""
        return list(self._rows)

    def can_join(self) -> bool:
        """Whether requests may join now (the model's cache kind allows merging)."""
        return self.batch is None or not self.batch.rows or _dynamic_layers(self.batch.cache) is not None

    def add(self, requests: Sequence[GenerateRequest]) -> list[int]:
        """Validate and prefill `requests`, then put them in the running batch; returns their keys.
        Raises GenerateRequestError (nothing is added) for a request the model cannot serve."""
        if not requests:
            return []
        prompts = []
        for request in requests:
            validate_request(request)
            prompts.append(prompt_ids(self.model, request))
            check_context(self.model, request, len(prompts[-1]))
        keys = list(range(self._next_key, self._next_key + len(requests)))
        rows = _make_rows(self.model, requests, first_index=self._next_key)
        with torch.inference_mode():
            joining = _prefill(self.model, prompts, rows, [row.request_index - keys[0] for row in rows])
            if self.batch is None or not self.batch.rows:
                self.batch = joining
            else:
                _merge(self.batch, joining)
        self._next_key += len(requests)
        for key, prompt in zip(keys, prompts, strict=True):
            self._rows[key] = [row for row in rows if row.request_index == key]
            self._prompt_tokens[key] = len(prompt)
        return keys

    def step(self) -> list[tuple[int, GenerateResult]]:
        """One token for every live row; the requests whose every choice is now done."""
        batch = self.batch
        if batch is None or not batch.rows:
            return []
        with torch.inference_mode():
            picks = pick_tokens(batch.logits, batch.rows, batch.counts)
            touched = set()
            for i, (row, pick) in enumerate(zip(batch.rows, picks, strict=True)):
                delta = row.accept(pick, self.eos_ids)
                if batch.counts is not None:
                    batch.counts[i, pick.token_id] += 1
                if delta and self.on_token is not None:
                    self.on_token(row.request_index, row.choice_index, delta)
                if row.done:
                    touched.add(row.request_index)
            live = [i for i, row in enumerate(batch.rows) if not row.done]
            live_tokens = [picks[i].token_id for i in live]
            self._keep(live)
            if batch.rows:
                _step(self.model, batch, live_tokens)
        return [(key, self._finish(key)) for key in sorted(touched) if all(r.done for r in self._rows[key])]

    def drop(self, keys: Sequence[int]) -> dict[int, GenerateResult]:
        """Take requests out before they finish (cancelled); returns what each had made so far."""
        gone = set(keys) & set(self._rows)
        if self.batch is not None:
            self._keep([i for i, row in enumerate(self.batch.rows) if row.request_index not in gone])
        return {key: self._finish(key) for key in sorted(gone)}

    def _keep(self, live: list[int]) -> None:
        assert self.batch is not None
        before = len(self.batch.rows)
        self.batch.keep(live)
        if len(live) != before:
            _trim(self.batch)

    def _finish(self, key: int) -> GenerateResult:
        rows = self._rows.pop(key)
        return GenerateResult(
            choices=[r.choice(self.model.tokenizer) for r in rows],
            prompt_tokens=self._prompt_tokens.pop(key),
            completion_tokens=sum(r.completion_tokens for r in rows),
        )


def generate_batch(
    model: LoadedModel, requests: list[GenerateRequest], on_token: OnRowToken | None = None
) -> list[GenerateResult]:
    """Run several requests together in one padded batch; on_token gets (request, choice, text delta)."""
    decoder = Decoder(model, on_token)
    keys = decoder.add(requests)
    results: dict[int, GenerateResult] = {}
    while decoder.live:
        results.update(decoder.step())
    return [results[key] for key in keys]


def generate(
    model: LoadedModel, request: GenerateRequest, on_token: Callable[[int, str], None] | None = None
) -> GenerateResult:
    """Generate request.n choices; on_token(choice_index, text_delta) streams text as it becomes final."""
    relay: OnRowToken | None = None
    if on_token is not None:
        callback = on_token

        def relay(_request_index: int, choice_index: int, delta: str) -> None:
            callback(choice_index, delta)

    return generate_batch(model, [request], relay)[0]
