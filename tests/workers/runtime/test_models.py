from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.tiny_models import build_tiny_bert  # noqa: E402
from workers.runtime import models  # noqa: E402
from workers.runtime.models import (  # noqa: E402
    ModelCache,
    default_cache,
    estimate_nbytes,
    load_model,
    resolve_dtype,
)


class _WritesCanary:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.canary), "w"))


def test_it_loads_a_generator_for_inference(tiny_gpt2_dir: Path) -> None:
    loaded = load_model(str(tiny_gpt2_dir), device="cpu")

    assert loaded.task == "generation"
    assert loaded.labels == []
    assert loaded.context_length == 256
    assert loaded.nbytes > 0
    assert loaded.device == torch.device("cpu")
    assert not loaded.model.training


def test_it_loads_a_classifier_with_its_labels(tiny_bert_dir: Path) -> None:
    loaded = load_model(str(tiny_bert_dir))

    assert loaded.task == "classification"
    assert loaded.labels == ["negative", "positive"]
    assert loaded.multi_label is False
    assert loaded.context_length == 128


def test_it_reads_multi_label_from_the_config(tiny_bert_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bert_dir, tmp_path / "multi"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "problem_type": "multi_label_classification"}))

    assert load_model(str(copy)).multi_label is True


def test_it_refuses_pickle_weights_without_unpickling_them(tiny_bert_dir: Path, tmp_path: Path) -> None:
    # given: a model dir whose only weights are a pickle that would write a canary file
    model_dir = tmp_path / "evil"
    model_dir.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", model_dir / "config.json")
    canary = tmp_path / "canary"
    torch.save({"weights": _WritesCanary(canary)}, model_dir / "pytorch_model.bin")

    # when / then
    with pytest.raises(ValueError, match="format not allowed; use safetensors"):
        load_model(str(model_dir))
    assert not canary.exists()


def test_it_refuses_a_hub_id_while_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline is the default

    with pytest.raises(FileNotFoundError, match="offline"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_it_refuses_a_head_it_does_not_serve(tiny_bert_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bert_dir, tmp_path / "masked-lm"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))

    with pytest.raises(ValueError, match="unsupported model architecture"):
        load_model(str(copy))


def test_a_bare_encoder_loads_as_an_embedding_model(tiny_bert_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bert_dir, tmp_path / "encoder"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))

    loaded = load_model(str(copy), "cpu")

    assert loaded.task == "embedding" and loaded.labels == []
    assert type(loaded.model).__name__ == "BertModel"
    assert loaded.context_length == 128  # no sentence_bert_config.json: the tokenizer's limit


def test_auto_dtype_is_bfloat16_only_where_the_hardware_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")

    monkeypatch.setattr(models, "_cpu_has_amx", lambda: True)
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(models, "_cpu_has_amx", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int4", cpu)


def test_a_bfloat16_model_takes_half_the_bytes_as_estimated(tiny_gpt2_dir: Path) -> None:
    full = load_model(str(tiny_gpt2_dir), device="cpu", dtype="float32")
    half = load_model(str(tiny_gpt2_dir), device="cpu", dtype="bfloat16")

    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert half.nbytes == full.nbytes // 2
    assert estimate_nbytes(str(tiny_gpt2_dir), "cpu", "bfloat16") == half.nbytes
    assert estimate_nbytes(str(tiny_gpt2_dir), "cpu", "float32") == full.nbytes


def test_the_cache_hits_on_the_second_get(tiny_gpt2_dir: Path) -> None:
    cache = ModelCache(max_bytes=10**9)

    first = cache.get(str(tiny_gpt2_dir))
    second = cache.get(str(tiny_gpt2_dir))

    assert second is first
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_cache_evicts_the_least_recently_used_by_bytes(
    tiny_gpt2_dir: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # given: room for two of the three models
    other_bert = build_tiny_bert(tmp_path / "other-bert", labels=["a", "b", "c"])
    refs = [str(tiny_gpt2_dir), str(tiny_bert_dir), str(other_bert)]
    sizes = [load_model(ref).nbytes for ref in refs]
    cache = ModelCache(max_bytes=sizes[0] + max(sizes[1], sizes[2]))

    # when: the first is used again before the third arrives
    cache.get(refs[0])
    cache.get(refs[1])
    cache.get(refs[0])
    cache.get(refs[2])

    # then: the second, least recently used, made room
    assert cache.refs() == [refs[0], refs[2]]
    assert cache.nbytes <= cache.max_bytes
    assert (cache.hits, cache.misses) == (1, 3)


def test_the_cache_keeps_a_model_bigger_than_its_budget_alone(
    tiny_gpt2_dir: Path, tiny_bert_dir: Path
) -> None:
    cache = ModelCache(max_bytes=1)

    cache.get(str(tiny_bert_dir))
    loaded = cache.get(str(tiny_gpt2_dir))

    assert loaded.task == "generation"
    assert cache.refs() == [str(tiny_gpt2_dir)]


def test_clear_empties_the_cache(tiny_gpt2_dir: Path) -> None:
    cache = ModelCache(max_bytes=10**9)
    cache.get(str(tiny_gpt2_dir))

    cache.clear()

    assert cache.refs() == []


def test_the_default_cache_is_sized_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_default_cache", None)
    monkeypatch.setenv("MODEL_CACHE_BYTES", "12345")
    monkeypatch.setenv("MODEL_DTYPE", "float32")

    assert default_cache().max_bytes == 12345
    assert default_cache().dtype == "float32"
    assert default_cache() is default_cache()


def _linears(model: torch.nn.Module) -> dict[str, type]:
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    return {
        name: type(module)
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, QuantizedLinear))
    }


def test_serve_quantization_none_keeps_plain_float32_linears(tiny_llama_dir: Path) -> None:
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32", quantization="none")

    assert loaded.quantization == "none"
    assert set(_linears(loaded.model).values()) == {torch.nn.Linear}
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("quantization", ["fp16", "int8"])
def test_serve_quantization_converts_every_linear_and_counts_the_smaller_weights(
    tiny_llama_dir: Path, quantization: str
) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    plain = load_model(str(tiny_llama_dir), device="cpu", dtype="float32", quantization="none")
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32", quantization=quantization)

    linears = _linears(loaded.model)
    assert "lm_head" in linears  # the tied head, the largest matrix of a small LM
    assert set(linears.values()) == {QuantizedLinear}
    packed = {
        module._packed_params.dtype
        for module in loaded.model.modules()
        if isinstance(module, QuantizedLinear)
    }
    assert packed == {torch.float16 if quantization == "fp16" else torch.qint8}
    assert loaded.quantization == quantization
    # The Linear weights shrink from 4 bytes a cell to 2 (fp16) or 1 (int8, plus a scale per row); the
    # embedding stays float32, and the LM head tied to it becomes a copy of its own.
    linears = [m for name, m in plain.model.named_modules() if isinstance(m, torch.nn.Linear)]
    untied = sum(
        m.in_features * m.out_features
        for m in linears
        if m.weight is not plain.model.get_input_embeddings().weight
    )
    cells = sum(m.in_features * m.out_features for m in linears)
    rows = sum(m.out_features for m in linears)
    expected = plain.nbytes - 4 * untied + (2 * cells if quantization == "fp16" else cells + 16 * rows)
    assert loaded.nbytes == pytest.approx(expected, rel=0.05)
    assert loaded.nbytes < plain.nbytes


def test_serve_quantization_leaves_classifiers_alone(tiny_bert_dir: Path) -> None:
    loaded = load_model(str(tiny_bert_dir), device="cpu", dtype="float32", quantization="int8")

    assert loaded.quantization == "none"
    assert set(_linears(loaded.model).values()) == {torch.nn.Linear}


def test_auto_quantizes_only_float32_serving_on_a_cpu() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    fbgemm = "fbgemm" in torch.backends.quantized.supported_engines

    assert models.resolve_quantization("auto", torch.float32, cpu) == ("fp16" if fbgemm else "none")
    assert models.resolve_quantization("auto", torch.bfloat16, cpu) == "none"  # AMX CPUs serve bf16
    assert models.resolve_quantization("int8", torch.bfloat16, cpu) == "int8"  # explicit: loads float32
    for quantization in ("auto", "fp16", "int8", "none"):
        assert models.resolve_quantization(quantization, torch.bfloat16, gpu) == "none"
    with pytest.raises(ValueError, match="unknown quantization"):
        models.resolve_quantization("int4", torch.float32, cpu)


def test_the_cache_serves_generators_quantized_and_budgets_their_size(tiny_llama_dir: Path) -> None:
    cache = ModelCache(max_bytes=10**9, device="cpu", dtype="float32", quantization="fp16")

    loaded = cache.get(str(tiny_llama_dir))

    assert loaded.quantization == "fp16"
    assert cache.nbytes == loaded.nbytes < load_model(str(tiny_llama_dir), "cpu", "float32").nbytes


def test_the_default_cache_takes_the_workers_quantization(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_default_cache", None)

    assert default_cache("int8").quantization == "int8"
    assert default_cache("int8") is default_cache("int8")
