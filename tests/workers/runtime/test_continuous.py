"""Continuous batching: requests that join a running batch between two steps, and leave it when done.

A request's text, finish reason and logprobs must not depend on when it joined or on who else
was decoding: the same greedy text alone or merged mid-flight (logprobs to float tolerance), the
same sampled text for the same seed.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from workers.runtime.constrain import json_schema_grammar  # noqa: E402
from workers.runtime.generate import Decoder, GenerateRequestError, generate  # noqa: E402
from workers.runtime.models import LoadedModel, load_model  # noqa: E402
from workers.runtime.specs import GenerateRequest, GenerateResult  # noqa: E402

CHAT = ({"role": "user", "content": "hello how are you today"},)
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), device="cpu", dtype="float32")


def greedy(prompt: str, max_tokens: int = 24, **options: object) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, max_tokens=max_tokens, temperature=0, **options)  # type: ignore[arg-type]


def assert_same(joined: GenerateResult, alone: GenerateResult) -> None:
    assert joined.prompt_tokens == alone.prompt_tokens
    assert joined.completion_tokens == alone.completion_tokens
    for mine, theirs in zip(joined.choices, alone.choices, strict=True):
        assert (mine.text, mine.finish_reason) == (theirs.text, theirs.finish_reason)
        if theirs.logprobs is None:
            assert mine.logprobs is None
            continue
        assert mine.logprobs is not None
        assert [t.token for t in mine.logprobs] == [t.token for t in theirs.logprobs]
        got = torch.tensor([t.logprob for t in mine.logprobs])
        want = torch.tensor([t.logprob for t in theirs.logprobs])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        for a, b in zip(mine.logprobs, theirs.logprobs, strict=True):
            assert [tok for tok, _ in a.top_logprobs] == [tok for tok, _ in b.top_logprobs]


def run(decoder: Decoder, schedule: dict[int, list[GenerateRequest]]) -> dict[int, GenerateResult]:
    """Steps the decoder, adding schedule[step]'s requests before that step; results by key."""
    keys: list[int] = []
    results: dict[int, GenerateResult] = {}
    step = 0
    while decoder.live or any(at >= step for at in schedule):
        keys += decoder.add(schedule.get(step, []))
        results.update(decoder.step())
        step += 1
    return {i: results[key] for i, key in enumerate(keys)}


def test_a_request_joined_mid_flight_gives_what_it_gives_alone(gpt2: LoadedModel) -> None:
    first = greedy("the quick brown fox", max_tokens=40, logprobs=True, top_logprobs=3)
    # Longer than the running batch's width when it joins (the batch is padded), then shorter
    # (the newcomer is padded).
    longer = greedy("what a wonderful happy day and the film was " * 3, max_tokens=20, logprobs=True)
    shorter = GenerateRequest(messages=CHAT, max_tokens=16, temperature=0, logprobs=True, top_logprobs=2)
    streamed: dict[tuple[int, int], str] = defaultdict(str)

    def collect(key: int, choice: int, delta: str) -> None:
        streamed[(key, choice)] += delta

    joined = run(Decoder(gpt2, collect), {0: [first], 3: [longer], 30: [shorter]})

    for i, request in enumerate([first, longer, shorter]):
        assert_same(joined[i], generate(gpt2, request))
        assert streamed[(i, 0)] == joined[i].choices[0].text


def test_seeds_n_penalties_and_stop_strings_hold_for_a_joined_request(gpt2: LoadedModel) -> None:
    running = [greedy("the", max_tokens=30), GenerateRequest(prompt="hello", max_tokens=25, seed=1)]
    sampled = GenerateRequest(
        prompt="the film", max_tokens=15, n=3, seed=7, top_p=0.9, presence_penalty=1.0, frequency_penalty=0.5
    )
    stopped = greedy("what a day", max_tokens=20, stop=("a",))

    joined = run(Decoder(gpt2), {0: running, 4: [sampled], 6: [stopped]})

    for i, request in enumerate([*running, sampled, stopped]):
        assert_same(joined[i], generate(gpt2, request))


def test_a_structured_request_joins_and_still_follows_its_grammar(gpt2: LoadedModel) -> None:
    grammar = json_schema_grammar(PERSON, strict=True)
    constrained = GenerateRequest(messages=CHAT, max_tokens=120, temperature=0, grammar=grammar)

    joined = run(Decoder(gpt2), {0: [greedy("the", max_tokens=40)], 5: [constrained]})

    assert_same(joined[1], generate(gpt2, constrained))
    assert joined[1].choices[0].text.startswith("{")  # the grammar held from its first token


def test_a_finished_request_leaves_and_the_cache_narrows_to_the_live_rows(gpt2: LoadedModel) -> None:
    decoder = Decoder(gpt2)
    long_prompt = greedy("what a wonderful happy day and the film was " * 4, max_tokens=3)
    short = greedy("the", max_tokens=20)
    decoder.add([long_prompt, short])
    finished: list[int] = []
    while decoder.live:
        finished += [key for key, _ in decoder.step()]
        if finished == [0]:
            assert decoder.batch is not None
            # Only the short prompt's columns are left: it sees exactly what it saw alone.
            assert decoder.batch.attention_mask.all()
    assert finished == [0, 1]


def test_a_dropped_request_leaves_with_what_it_made_and_the_others_go_on(gpt2: LoadedModel) -> None:
    decoder = Decoder(gpt2)
    keep, cancel = greedy("the", max_tokens=20), greedy("hello", max_tokens=20)
    keys = decoder.add([keep, cancel])
    for _ in range(5):
        decoder.step()

    partial = decoder.drop([keys[1]])[keys[1]]

    assert partial.completion_tokens == 5 and decoder.pending == [keys[0]]
    results = dict(decoder.step())
    while decoder.live:
        results.update(decoder.step())
    assert_same(results[keys[0]], generate(gpt2, keep))


def test_a_request_the_model_cannot_serve_is_refused_and_adds_nothing(gpt2: LoadedModel) -> None:
    decoder = Decoder(gpt2)
    decoder.add([greedy("the", max_tokens=5)])
    with pytest.raises(GenerateRequestError):
        decoder.add([greedy("hello", max_tokens=10_000)])
    assert decoder.live == 1 and len(decoder.pending) == 1
