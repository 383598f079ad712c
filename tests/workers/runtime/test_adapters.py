"""Serving a LoRA fine-tune as a view of its cached base (workers/runtime/adapters.py): the same
answers as its merged weights, the base's weights shared and untouched, and the cache's budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.runtime.adapters import ADAPTER_DIR, UnsupportedAdapter, read_adapter
from workers.runtime.generate import generate
from workers.runtime.lora import attach_lora, resolve_lora
from workers.runtime.models import ModelCache, load_model, view_key
from workers.runtime.specs import GenerateRequest
from workers.runtime.training import save_final_model

PROMPTS = ["Hello there", "Name three colours.", "What is two plus two?", "Tell me a story."]


def fine_tune_of(base_dir: Path, out: Path, seed: int, lora: dict[str, Any] | None = None) -> Path:
    """A LoRA "fine-tune" of `base_dir` with random, non-zero adapters, saved the way training saves
    its final model: merged weights, the tokenizer, and the adapter alone in adapter/."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = attach_lora(model, resolve_lora(lora or {}, model), None)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:  # B starts at zero: give the update a visible size
                parameter.normal_(0, 0.3)
    save_final_model(out, None, peft_model, AutoTokenizer.from_pretrained(base_dir))
    return out


def greedy(loaded: Any, prompt: str) -> str:
    request = GenerateRequest(messages=({"role": "user", "content": prompt},), max_tokens=12, temperature=0)
    return generate(loaded, request).choices[0].text


@pytest.mark.parametrize("quantization", ["none", "fp16"])
def test_an_adapter_served_on_its_base_answers_as_its_merged_weights(
    tiny_llama_dir: Path, tmp_path: Path, quantization: str
) -> None:
    tuned = fine_tune_of(tiny_llama_dir, tmp_path / "tuned", seed=1)
    cache = ModelCache(1 << 30, device="cpu", dtype="float32", quantization=quantization)
    merged = load_model(str(tuned), "cpu", "float32", quantization)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.inference_mode():
        plain_before = cache.get(str(tiny_llama_dir)).model(input_ids=ids).logits

    view = cache.get_adapted(str(tiny_llama_dir), str(tuned))

    with torch.inference_mode():
        got, want = view.model(input_ids=ids).logits, merged.model(input_ids=ids).logits
        plain = cache.get(str(tiny_llama_dir)).model(input_ids=ids).logits
    # fp16 weights round W and W + BA differently; float32 differs by summation order only
    assert torch.allclose(got, want, atol=1e-4 if quantization == "none" else 2e-2)
    assert not torch.allclose(plain, want, atol=1e-2)  # the adapter does change the answer
    assert [greedy(view, p) for p in PROMPTS] == [greedy(merged, p) for p in PROMPTS]
    # the base is shared, not copied, and left exactly as it was
    base = cache.get(str(tiny_llama_dir))
    assert view.base_ref == base.ref and view.nbytes < base.nbytes / 10
    assert torch.equal(plain, plain_before)
    assert view.model.model.embed_tokens.weight is base.model.model.embed_tokens.weight


def test_gpt2_conv1d_layers_take_adapters_too(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    tuned = fine_tune_of(tiny_gpt2_dir, tmp_path / "tuned", seed=2)
    cache = ModelCache(1 << 30, device="cpu", dtype="float32")
    view = cache.get_adapted(str(tiny_gpt2_dir), str(tuned))
    merged = load_model(str(tuned), "cpu", "float32")
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.inference_mode():
        assert torch.allclose(view.model(input_ids=ids).logits, merged.model(input_ids=ids).logits, atol=1e-4)


def test_many_adapters_share_one_base_and_the_cache_counts_their_bytes(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    tuned = [fine_tune_of(tiny_llama_dir, tmp_path / f"t{i}", seed=10 + i) for i in range(3)]
    base_bytes = load_model(str(tiny_llama_dir), "cpu", "float32").nbytes
    views = ModelCache(1 << 30, device="cpu", dtype="float32")
    answers = {}
    for _ in range(2):  # round-robin: the second round is all hits
        for directory in tuned:
            answers[directory] = greedy(views.get_adapted(str(tiny_llama_dir), str(directory)), PROMPTS[0])
    assert len(set(answers.values())) > 1  # each fine-tune answers as itself
    assert views.misses == 4  # the base loaded once, each adapter read once
    adapter_bytes = views.nbytes - base_bytes
    assert 0 < adapter_bytes < base_bytes / 3

    # a budget that holds the base and two adapters: the least recently used adapter goes, never the base
    small = ModelCache(base_bytes + 2 * (adapter_bytes // 3) + 10, device="cpu", dtype="float32")
    for directory in tuned:
        small.get_adapted(str(tiny_llama_dir), str(directory))
    assert set(small.refs()) == {
        str(tiny_llama_dir),
        *(view_key(str(tiny_llama_dir), str(t)) for t in tuned[1:]),
    }
    # evicting the base takes its views with it: they would keep its weights alive unaccounted
    small.max_bytes = base_bytes + 10
    small.get(str(tuned[0]))  # the merged weights, a model of their own
    assert small.refs() == [str(tuned[0])]


def test_a_fine_tune_on_a_base_of_another_task_or_an_odd_adapter_is_refused(
    tiny_llama_dir: Path, tiny_classifier_dir: Path, tmp_path: Path
) -> None:
    tuned = fine_tune_of(tiny_llama_dir, tmp_path / "tuned", seed=3)
    cache = ModelCache(1 << 30, device="cpu", dtype="float32")
    with pytest.raises(
        UnsupportedAdapter, match="^a generation fine-tune is not served on a classification model$"
    ):
        cache.get_adapted(str(tiny_classifier_dir), str(tuned))

    config_path = tuned / ADAPTER_DIR / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(UnsupportedAdapter, match="adapter uses DoRA"):
        read_adapter(tuned / ADAPTER_DIR)


def test_the_final_model_keeps_the_adapter_without_worker_paths(tiny_llama_dir: Path, tmp_path: Path) -> None:
    tuned = fine_tune_of(tiny_llama_dir, tmp_path / "tuned", seed=4)
    # merged weights: what export gives and plain serving loads
    assert (tuned / "model.safetensors").is_file()
    config = json.loads((tuned / ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] is None
    # nothing in the adapter names a path of the worker (it is exported to the customer)
    names = sorted(path.name for path in (tuned / ADAPTER_DIR).iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors"]
    for path in (tuned / ADAPTER_DIR).iterdir():
        assert str(tiny_llama_dir).encode() not in path.read_bytes()
        assert str(tmp_path).encode() not in path.read_bytes()


def test_a_view_and_the_same_directorys_merged_weights_are_two_entries(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    tuned = fine_tune_of(tiny_llama_dir, tmp_path / "tuned", seed=5)
    cache = ModelCache(1 << 30, device="cpu", dtype="float32")
    view = cache.get_adapted(str(tiny_llama_dir), str(tuned))
    merged = cache.get(str(tuned))
    assert merged is not view and merged.base_ref == "" and view.base_ref == str(tiny_llama_dir)
    assert cache.get_adapted(str(tiny_llama_dir), str(tuned)) is view and cache.get(str(tuned)) is merged
    assert len(cache.refs()) == 3
