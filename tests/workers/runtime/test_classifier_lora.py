"""LoRA classifiers (workers/runtime/lora.py, workers/runtime/adapters.py): a LoRA on the encoder,
the head and whatever else the base lacked trained whole; merged weights to export, the adapter
beside them; exact resumes; and a view on the base's encoder that answers as the merged weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from tests.workers.runtime.conftest import sentiment_rows, write_csv  # noqa: E402
from tests.workers.runtime.test_training import make_spec, run, stop_after  # noqa: E402
from workers.runtime.adapters import ADAPTER_CONFIG, ADAPTER_DIR, UnsupportedAdapter, read_adapter  # noqa: E402
from workers.runtime.models import ModelCache, load_model, view_key  # noqa: E402
from workers.runtime.specs import TrainingDataError  # noqa: E402
from workers.runtime.training import read_trainer_state  # noqa: E402

LORA = {"r": 4, "alpha": 8}
# LoRA moves far fewer weights than a full fine-tune: the rate a LoRA job gets by default.
LORA_HP = {"learning_rate": 1e-2}
TEXTS = ["a great and lovely film", "an awful boring mess", "i loved it", "dull, bad and far too long"]


def encode(loaded: object, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(loaded.tokenizer(texts, padding=True, return_tensors="pt"))  # type: ignore[attr-defined]


def logits(loaded: object, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(**encode(loaded, texts)).logits.float()  # type: ignore[attr-defined]


def bare_encoder(tiny_bert_dir: Path, out: Path) -> Path:
    """`tiny_bert_dir`'s encoder alone, without pooler or head (as an embedding model ships)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.architectures = ["BertModel"]
    encoder = BertModel(config, add_pooling_layer=False)
    weights = load_file(tiny_bert_dir / "model.safetensors")
    encoder.load_state_dict(
        {
            k.removeprefix("bert."): v
            for k, v in weights.items()
            if k.startswith("bert.") and "pooler" not in k
        }
    )
    encoder.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


def test_a_lora_classifier_trains_its_adapters_and_head_and_saves_both_forms(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    result, events = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, lora=LORA, hp=LORA_HP))

    # it trained a small part of the model (whether LoRA learns is for a real encoder: the MiniLM test)
    banner = next(event for event in events if event.kind == "log" and "Running training" in event.message)
    assert "LoRA r=4 alpha=8 on ['query', 'value']" in banner.message
    trainable, total = banner.metrics["trainable_parameters"], banner.metrics["total_parameters"]
    assert 0 < trainable < total / 10
    # the saved model is a standard classifier (merged), with the adapter and its head beside it
    model_dir = Path(result.model_dir)
    merged = load_file(model_dir / "model.safetensors")
    assert not [name for name in merged if "lora_" in name or "modules_to_save" in name]
    config = json.loads((model_dir / ADAPTER_DIR / ADAPTER_CONFIG).read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]
    adapter = read_adapter(model_dir / ADAPTER_DIR)
    assert set(adapter.saved) == {"classifier.weight", "classifier.bias"}  # the base had its pooler
    assert torch.equal(adapter.saved["classifier.weight"], merged["classifier.weight"])
    # the encoder's frozen weights are the base's, exactly; the adapted ones moved
    base = load_file(tiny_bert_dir / "model.safetensors")
    assert torch.equal(merged["bert.encoder.layer.0.attention.output.dense.weight"],
                       base["bert.encoder.layer.0.attention.output.dense.weight"])  # fmt: skip
    assert not torch.equal(merged["bert.encoder.layer.0.attention.self.query.weight"],
                           base["bert.encoder.layer.0.attention.self.query.weight"])  # fmt: skip
    # every kept checkpoint has both forms too, and what a resume checks
    checkpoint = Path(result.checkpoints[-1].path)
    assert (checkpoint / "model.safetensors").is_file() and (
        checkpoint / ADAPTER_DIR / ADAPTER_CONFIG
    ).is_file()
    assert read_trainer_state(str(checkpoint))["lora"] == {
        **LORA,
        "dropout": 0.05,
        "target_modules": ["query", "value"],
    }


def test_a_lora_classifier_resumes_exactly(tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path) -> None:
    whole, _ = run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "whole", lora=LORA, hp=LORA_HP))
    stopped, _ = run(
        make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part", lora=LORA, hp=LORA_HP),
        should_stop=stop_after(15),
    )
    assert stopped.steps == 15

    resumed, events = run(
        make_spec(
            tmp_path,
            tiny_bert_dir,
            sentiment_csv,
            "part",
            lora=LORA,
            hp=LORA_HP,
            resume_from=stopped.checkpoints[-1].path,
        )
    )

    assert [event.step for event in events if event.kind == "step"] == list(range(16, 34))
    assert resumed.metrics["valid_loss"] == pytest.approx(whole.metrics["valid_loss"], rel=1e-5)
    assert resumed.metrics["confusion_matrix"] == whole.metrics["confusion_matrix"]
    got, want = (load_file(Path(r.model_dir) / "model.safetensors") for r in (resumed, whole))
    assert max((got[name] - want[name]).abs().max().item() for name in want) < 1e-5


def test_a_checkpoint_is_resumed_only_by_a_run_with_the_same_lora(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    stopped, _ = run(
        make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "part", lora=LORA, hp=LORA_HP),
        should_stop=stop_after(3),
    )
    full = make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "full", hp=LORA_HP)

    with pytest.raises(ValueError, match=r"different run .*LoRA \{.*this run has .*LoRA None"):
        run(dataclasses.replace(full, resume_from=stopped.checkpoints[-1].path))


@pytest.mark.parametrize("base_form", ["classifier", "bare encoder"])
def test_a_lora_classifier_served_on_its_base_answers_as_its_merged_weights(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path, base_form: str
) -> None:
    # given: a base as a classifier with a pooler, or as a bare encoder (its pooler then trained whole)
    base_dir = (
        tiny_bert_dir if base_form == "classifier" else bare_encoder(tiny_bert_dir, tmp_path / "encoder")
    )
    spec = make_spec(tmp_path, base_dir, sentiment_csv, lora=LORA, hp={**LORA_HP, "n_epochs": 1})
    tuned = Path(run(spec)[0].model_dir)
    saved = set(read_adapter(tuned / ADAPTER_DIR).saved)
    pooler = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert saved == {"classifier.weight", "classifier.bias"} | (
        pooler if base_form == "bare encoder" else set()
    )
    cache = ModelCache(1 << 30, device="cpu", dtype="float32")
    merged = load_model(str(tuned), "cpu", "float32")
    base = cache.get(str(base_dir))
    before = {name: tensor.clone() for name, tensor in base.model.state_dict().items()}

    # when
    view = cache.get_adapted(str(base_dir), str(tuned))

    # then: the fine-tune's answers, labels and tokenizer, from the base's own tensors
    assert view.task == "classification" and view.labels == merged.labels == ["negative", "positive"]
    assert torch.allclose(logits(view, TEXTS), logits(merged, TEXTS), atol=1e-4)
    assert logits(view, TEXTS).argmax(-1).tolist() == logits(merged, TEXTS).argmax(-1).tolist()
    encoder = dict(base.model.base_model.named_parameters())
    shared = dict(view.model.bert.named_parameters())
    assert (
        shared["embeddings.word_embeddings.weight"].data_ptr()
        == encoder["embeddings.word_embeddings.weight"].data_ptr()
    )
    # the base is untouched, and the view costs the cache its adapter's bytes only
    assert all(torch.equal(tensor, before[name]) for name, tensor in base.model.state_dict().items())
    assert view.nbytes == read_adapter(tuned / ADAPTER_DIR).nbytes < base.nbytes / 5
    assert view_key(str(base_dir), str(tuned)) in cache._models


def test_two_lora_classifiers_on_one_base_keep_their_own_heads_and_labels(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    renamed = {"positive": "good", "negative": "bad"}
    other = write_csv(
        tmp_path / "other.csv", [{**row, "label": renamed[row["label"]]} for row in sentiment_rows(96)]
    )
    one = Path(
        run(make_spec(tmp_path, tiny_bert_dir, sentiment_csv, "one", lora=LORA, hp=LORA_HP))[0].model_dir
    )
    two = Path(
        run(make_spec(tmp_path, tiny_bert_dir, other, "two", lora=LORA, hp={**LORA_HP, "seed": 7}))[
            0
        ].model_dir
    )
    cache = ModelCache(1 << 30, device="cpu", dtype="float32")

    first, second = (
        cache.get_adapted(str(tiny_bert_dir), str(one)),
        cache.get_adapted(str(tiny_bert_dir), str(two)),
    )

    assert (first.labels, second.labels) == (["negative", "positive"], ["bad", "good"])
    for view, tuned in ((first, one), (second, two)):
        assert torch.allclose(
            logits(view, TEXTS), logits(load_model(str(tuned), "cpu", "float32"), TEXTS), atol=1e-4
        )
    assert not torch.allclose(logits(first, TEXTS), logits(second, TEXTS), atol=1e-3)
    assert cache.get(str(tiny_bert_dir)) is not None and len(cache._models) == 3  # one base, two views


def test_a_lora_classifier_is_not_served_on_a_base_it_does_not_fit(
    tmp_path: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, sentiment_csv: Path
) -> None:
    from tests.tiny_models import build_tiny_bert

    spec = make_spec(tmp_path, tiny_bert_dir, sentiment_csv, lora=LORA, hp={**LORA_HP, "n_epochs": 1})
    tuned = str(run(spec)[0].model_dir)
    wider = build_tiny_bert(tmp_path / "wider", vocab_size=600)  # another embedding table
    cache = ModelCache(1 << 30, device="cpu", dtype="float32")

    with pytest.raises(
        UnsupportedAdapter, match="^a classification fine-tune is not served on a generation model$"
    ):
        cache.get_adapted(str(tiny_llama_dir), tuned)
    with pytest.raises(UnsupportedAdapter, match="^the base does not fit the fine-tune"):
        cache.get_adapted(str(wider), tuned)


@pytest.mark.slow
def test_a_minilm_lora_classifier_learns_a_separable_task(tmp_path: Path, minilm_dir: Path) -> None:
    from workers.runtime.specs import auto_learning_rate

    data = write_csv(tmp_path / "reviews.csv", sentiment_rows(200, seed=1))
    rate = auto_learning_rate(lora=True)  # what a LoRA job gets by default
    spec = make_spec(
        tmp_path, minilm_dir, data, lora={}, hp={"n_epochs": 3, "batch_size": 16, "learning_rate": rate}
    )

    result, events = run(spec)

    assert result.metrics["accuracy"] >= 0.9
    banner = next(event for event in events if event.kind == "log" and "Running training" in event.message)
    assert banner.metrics["trainable_parameters"] < banner.metrics["total_parameters"] / 100


@pytest.mark.parametrize(
    ("targets", "base_form", "name"),
    [
        (["classifier"], "classifier", "'classifier'"),  # the head, trained whole anyway
        (["LayerNorm"], "classifier", "'LayerNorm'"),  # no layer an adapter sits on
        (["pooler.dense"], "bare encoder", "'pooler.dense'"),  # the bare base has no pooler: trained whole
    ],
)
def test_a_target_that_leaves_nothing_to_adapt_is_the_customers_error(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path, targets: list[str], base_form: str, name: str
) -> None:
    base_dir = (
        tiny_bert_dir if base_form == "classifier" else bare_encoder(tiny_bert_dir, tmp_path / "encoder")
    )
    spec = make_spec(tmp_path, base_dir, sentiment_csv, lora={"r": 2, "target_modules": targets})

    with pytest.raises(TrainingDataError) as raised:
        run(spec)

    assert str(raised.value) == (
        f"lora.target_modules: {name} names no layer an adapter can sit on "
        "(a linear layer outside the modules trained whole); "
        "its linear layers are: dense, key, query, value"
    )


def test_a_distilbert_classifier_serves_its_head_and_pre_classifier_from_the_adapter(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_csv: Path
) -> None:
    # given a DistilBERT classifier base: peft trains its pre_classifier whole too ("...classifier")
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    base_dir = tmp_path / "distilbert"
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    spec = make_spec(
        tmp_path,
        base_dir,
        sentiment_csv,
        lora={"r": 2, "target_modules": ["q_lin", "v_lin"]},
        hp={"n_epochs": 1},
    )
    result, events = run(spec)
    tuned = Path(result.model_dir)

    view = ModelCache(1 << 30, device="cpu", dtype="float32").get_adapted(str(base_dir), str(tuned))

    assert {"pre_classifier.weight", "classifier.weight"} <= set(read_adapter(tuned / ADAPTER_DIR).saved)
    assert torch.allclose(
        logits(view, TEXTS), logits(load_model(str(tuned), "cpu", "float32"), TEXTS), atol=1e-4
    )
    # the banner counts the model's weights once, not peft's frozen copies of the modules trained whole
    banner = next(event for event in events if event.kind == "log" and "Running training" in event.message)
    plain = load_model(str(tuned), "cpu", "float32").model
    assert banner.metrics["total_parameters"] - sum(p.numel() for p in plain.parameters()) == sum(
        a.numel() for pair in read_adapter(tuned / ADAPTER_DIR).pairs.values() for a in pair
    )
