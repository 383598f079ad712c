from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from workers.runtime.generate import (  # noqa: E402
    GenerateRequestError,
    StreamingText,
    apply_penalties,
    find_stop,
    generate,
    generate_batch,
    nucleus_filter,
    printable_end,
)
from workers.runtime.models import LoadedModel, load_model  # noqa: E402
from workers.runtime.specs import GenerateRequest  # noqa: E402

CHAT = ({"role": "user", "content": "hello how are you today"},)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    # float32 everywhere: these tests check the loop's logic, exactly; "auto" may pick bf16.
    return load_model(str(tiny_gpt2_dir), device="cpu", dtype="float32")


def greedy(prompt: str, max_tokens: int = 24, **options: object) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, max_tokens=max_tokens, temperature=0, **options)  # type: ignore[arg-type]


def test_the_same_seed_gives_the_same_text(gpt2: LoadedModel) -> None:
    request = GenerateRequest(messages=CHAT, max_tokens=16, seed=7)

    first = generate(gpt2, request).choices[0].text
    again = generate(gpt2, request).choices[0].text
    other = generate(gpt2, GenerateRequest(messages=CHAT, max_tokens=16, seed=8)).choices[0].text

    assert first == again
    assert other != first


def test_a_stop_string_cuts_the_text_right_before_it(gpt2: LoadedModel) -> None:
    # given: a stop string taken from the middle of the greedy output
    full = generate(gpt2, greedy("hello")).choices[0].text
    stop = full[4:7]
    assert stop and "\ufffd" not in stop

    # when
    choice = generate(gpt2, greedy("hello", stop=(stop,))).choices[0]

    # then
    assert choice.text == full[: full.find(stop)]
    assert choice.finish_reason == "stop"


def test_the_earliest_of_several_stop_strings_wins(gpt2: LoadedModel) -> None:
    full = generate(gpt2, greedy("hello")).choices[0].text
    late, early = full[8:10], full[3:5]

    choice = generate(gpt2, greedy("hello", stop=(late, early))).choices[0]

    assert choice.text == full[: min(full.find(late), full.find(early))]


def test_n_gives_that_many_choices(gpt2: LoadedModel) -> None:
    request = GenerateRequest(messages=CHAT, max_tokens=8, n=3, seed=1)

    result = generate(gpt2, request)

    assert [c.index for c in result.choices] == [0, 1, 2]
    assert len({c.text for c in result.choices}) == 3  # each choice samples on its own
    assert result.completion_tokens == 3 * 8 or any(c.finish_reason == "stop" for c in result.choices)
    # Choice 0 samples with the request's seed itself, so it matches an n=1 request.
    single = generate(gpt2, GenerateRequest(messages=CHAT, max_tokens=8, seed=1))
    assert result.choices[0].text == single.choices[0].text
    assert result.prompt_tokens == single.prompt_tokens


def test_max_tokens_ends_with_length(gpt2: LoadedModel) -> None:
    result = generate(gpt2, greedy("the movie was", max_tokens=5))

    assert result.choices[0].finish_reason == "length"
    assert result.completion_tokens == 5


def test_eos_ends_with_stop(gpt2: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # given: the token greedy decoding picks first is made an end-of-sequence token
    prompt = gpt2.tokenizer("the movie was")["input_ids"]
    with torch.inference_mode():
        first = int(gpt2.model(torch.tensor([prompt])).logits[0, -1].argmax())
    monkeypatch.setattr(gpt2.model.generation_config, "eos_token_id", [gpt2.tokenizer.eos_token_id, first])

    # when
    result = generate(gpt2, greedy("the movie was", max_tokens=10))

    # then: nothing is shown, and the EOS token is still counted
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].text == ""
    assert result.completion_tokens == 1


def test_streamed_deltas_join_to_the_returned_text(gpt2: LoadedModel) -> None:
    streamed: dict[int, list[str]] = defaultdict(list)
    request = GenerateRequest(messages=CHAT, max_tokens=20, n=2, seed=3, stop=("e",))

    result = generate(gpt2, request, on_token=lambda index, delta: streamed[index].append(delta))

    for choice in result.choices:
        assert "".join(streamed[choice.index]) == choice.text
        assert all(streamed[choice.index])  # no empty deltas


def test_penalties_follow_openai_definition() -> None:
    logits = torch.zeros((1, 3))
    counts = torch.tensor([[2.0, 0.0, 1.0]])

    adjusted = apply_penalties(logits, counts, presence=torch.tensor([0.5]), frequency=torch.tensor([1.0]))

    assert adjusted.tolist() == [[-2.5, 0.0, -1.5]]


def test_penalties_change_what_is_generated(gpt2: LoadedModel) -> None:
    plain = generate(gpt2, greedy("hello", max_tokens=16)).choices[0].text
    penalised = generate(gpt2, greedy("hello", max_tokens=16, frequency_penalty=2.0)).choices[0].text
    present = generate(gpt2, greedy("hello", max_tokens=16, presence_penalty=2.0)).choices[0].text

    assert penalised != plain
    assert present != plain


def test_nucleus_keeps_the_smallest_set_reaching_top_p() -> None:
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]])

    kept = nucleus_filter(probs, torch.tensor([0.6, 0.1]))

    assert kept.flatten().tolist() == pytest.approx([0.0, 0.5, 0.3, 0.0, 0.5, 0.0])


def test_logprobs_have_one_entry_per_token_with_alternatives(gpt2: LoadedModel) -> None:
    result = generate(gpt2, greedy("the movie was", max_tokens=6, logprobs=True, top_logprobs=3))

    logprobs = result.choices[0].logprobs
    assert logprobs is not None and len(logprobs) == 6
    for entry in logprobs:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy picks the most likely token, so it heads its own alternatives.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0][1])
    raw = b"".join(bytes(entry.bytes or []) for entry in logprobs)
    assert raw.decode("utf-8", errors="replace") == result.choices[0].text


def test_logprobs_are_off_unless_asked(gpt2: LoadedModel) -> None:
    assert generate(gpt2, greedy("hello", max_tokens=3)).choices[0].logprobs is None


def test_a_batch_gives_the_same_text_as_single_requests(gpt2: LoadedModel) -> None:
    # Prompts of different lengths: the batch left-pads them.
    requests = [
        greedy("the", max_tokens=12),
        GenerateRequest(messages=CHAT, max_tokens=20, temperature=0),
        greedy("what a wonderful happy day and the quick brown fox", max_tokens=6, stop=("a",)),
    ]
    streamed: dict[tuple[int, int], str] = defaultdict(str)

    def collect(request_index: int, choice_index: int, delta: str) -> None:
        streamed[(request_index, choice_index)] += delta

    batched = generate_batch(gpt2, requests, on_token=collect)
    singles = [generate(gpt2, request) for request in requests]

    assert batched == singles
    assert [streamed[(i, 0)] for i in range(3)] == [r.choices[0].text for r in batched]


def test_sampled_batches_follow_each_requests_seed(gpt2: LoadedModel) -> None:
    requests = [GenerateRequest(prompt=p, max_tokens=10, seed=5, top_p=0.9) for p in ("hello", "the film")]

    assert generate_batch(gpt2, requests) == [generate(gpt2, r) for r in requests]


def test_prompt_plus_max_tokens_must_fit_the_context(gpt2: LoadedModel) -> None:
    with pytest.raises(GenerateRequestError) as too_long:
        generate(gpt2, greedy("hello", max_tokens=300))
    with pytest.raises(ValueError) as prompt_too_long:
        generate(gpt2, greedy("hello " * 300, max_tokens=1))

    assert too_long.value.param == "max_tokens"
    assert too_long.value.code == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in str(too_long.value)
    assert getattr(prompt_too_long.value, "param", None) == "prompt"


def test_it_refuses_a_request_with_both_messages_and_prompt(gpt2: LoadedModel) -> None:
    with pytest.raises(GenerateRequestError) as both:
        generate(gpt2, GenerateRequest(messages=CHAT, prompt="hello"))

    assert both.value.param == "messages"


def test_the_chat_template_frames_the_prompt(gpt2: LoadedModel) -> None:
    rendered = gpt2.tokenizer.apply_chat_template(list(CHAT), add_generation_prompt=True, tokenize=False)

    result = generate(gpt2, GenerateRequest(messages=CHAT, max_tokens=1))

    assert rendered.endswith("<|im_start|>assistant\n")
    assert result.prompt_tokens == len(gpt2.tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_text_is_held_back_while_it_could_be_a_stop_string() -> None:
    assert printable_end("hello wor", ["world"]) == len("hello ")
    assert printable_end("hello", ["world"]) == len("hello")
    assert printable_end("caf\ufffd", []) == len("caf")  # half of a UTF-8 character
    assert find_stop("say hello world", ["world", "hello"]) == 4
    assert find_stop("say hello", ["world"]) == -1


def test_characters_split_across_tokens_stream_whole(gpt2: LoadedModel) -> None:
    # given: the tiny vocabulary spells the emoji and "é" as one token per UTF-8 byte
    text = "café 🎉 ok"
    ids = gpt2.tokenizer(text)["input_ids"]
    assert len(ids) > len(text.split())
    stream = StreamingText(gpt2.tokenizer)

    # when
    deltas = [stream.push(token_id) for token_id in ids] + [stream.finish()]

    # then: no delta carries half a character
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)


def test_a_stop_string_split_across_tokens_is_never_sent(gpt2: LoadedModel) -> None:
    stream = StreamingText(gpt2.tokenizer, stops=("fox jumps",))

    deltas = [stream.push(t) for t in gpt2.tokenizer("the quick brown fox jumps over")["input_ids"]]

    assert "".join(deltas) == "the quick brown "
    assert stream.stopped and stream.text == "the quick brown "


@pytest.mark.slow
def test_smollm2_answers_a_chat(smollm2_dir: Path) -> None:
    model = load_model(str(smollm2_dir))
    request = GenerateRequest(
        messages=({"role": "user", "content": "What is 2+2?"},), max_tokens=8, temperature=0
    )

    result = generate(model, request)

    assert result.choices[0].text.strip()
    assert result.prompt_tokens > 10
    assert 1 <= result.completion_tokens <= 8


# --- Serving quantization (SERVE_QUANTIZATION) on a Llama-shaped tiny model --------------------


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu", dtype="float32", quantization="none")


@pytest.fixture(scope="module", params=["fp16", "int8"])
def quantized(request: pytest.FixtureRequest, tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu", dtype="float32", quantization=request.param)


def _logits(model: LoadedModel, text: str) -> torch.Tensor:
    ids = model.tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model.model(input_ids=ids).logits


def test_fp16_weights_give_the_same_greedy_tokens_as_float32(
    tiny_llama_dir: Path, llama: LoadedModel
) -> None:
    fp16 = load_model(str(tiny_llama_dir), device="cpu", dtype="float32", quantization="fp16")
    request = greedy("please tell me a story about a cat", max_tokens=16, logprobs=True)

    plain = generate(llama, request).choices[0]
    halved = generate(fp16, request).choices[0]

    assert fp16.quantization == "fp16"
    assert halved.text == plain.text
    assert [entry.token for entry in halved.logprobs or []] == [entry.token for entry in plain.logprobs or []]


def test_quantized_logits_stay_close_to_float32(quantized: LoadedModel, llama: LoadedModel) -> None:
    # fp16 weights round each weight only; int8 quantizes the activations of each call too, so it
    # is looser (on SmolLM2 it changes greedy tokens: bench/generate.py). A random tiny model has no
    # meaningful text to compare, so the logits are compared against their spread.
    text = "the quick brown fox jumps over the lazy dog"
    plain, converted = _logits(llama, text), _logits(quantized, text)
    tolerance = {"fp16": 1e-3, "int8": 0.1}[quantized.quantization] * plain.std().item()

    assert (converted - plain).abs().max().item() < tolerance * 10
    assert converted.argmax(-1).tolist() == plain.argmax(-1).tolist()


def test_quantized_models_stream_stop_and_report_logprobs(quantized: LoadedModel) -> None:
    full = generate(quantized, greedy("hello how are you", max_tokens=12)).choices[0].text
    streamed: list[str] = []

    result = generate(
        quantized,
        greedy("hello how are you", max_tokens=12, logprobs=True, top_logprobs=2, stop=(full[3:6],)),
        on_token=lambda _index, delta: streamed.append(delta),
    )

    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == full[: full.find(full[3:6])]
    assert "".join(streamed) == choice.text
    assert choice.logprobs and all(
        entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in choice.logprobs
    )


def test_a_quantized_batch_gives_the_same_text_as_single_requests(quantized: LoadedModel) -> None:
    requests = [greedy("hello", max_tokens=8), greedy("the movie was great", max_tokens=8)]

    batched = [result.choices[0].text for result in generate_batch(quantized, requests)]

    assert batched == [generate(quantized, request).choices[0].text for request in requests]
