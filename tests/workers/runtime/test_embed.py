"""Sentence embeddings with the real MiniLM-L6, against the sentence-transformers recipe computed
here by hand with transformers' AutoModel."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from workers.runtime.embed import EmbedInputError, embed  # noqa: E402
from workers.runtime.models import EMBEDDING, LoadedModel, load_model  # noqa: E402
from workers.runtime.specs import EmbedRequest  # noqa: E402

pytestmark = pytest.mark.slow

TEXTS = (
    "A man is playing a guitar.",
    "The quarterly report is due on Friday, so please send me your figures before Thursday noon.",
    "Cats sleep.",
    "Someone is strumming a guitar on stage while the crowd sings along.",
    "Le chat dort sur le canapé.",
)


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> LoadedModel:
    return load_model(str(minilm_dir), "cpu", "float32")


def reference(minilm_dir: Path, texts: tuple[str, ...]) -> list[list[float]]:
    """The sentence-transformers recipe: mean of the last hidden states over the attention mask,
    L2-normalised; all texts in one padded batch, in input order."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).tolist()


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_the_encoder_loads_as_an_embedding_model_with_its_sentence_length(minilm: LoadedModel) -> None:
    assert minilm.task == EMBEDDING
    # sentence_bert_config.json's max_seq_length, not the 512 positions of the BERT config
    assert minilm.context_length == 256


def test_vectors_match_the_sentence_transformers_recipe(minilm: LoadedModel, minilm_dir: Path) -> None:
    # batches of two texts sorted by length: padding and reordering must not change a vector
    result = embed(minilm, EmbedRequest(texts=TEXTS, batch_size=2))

    expected = reference(minilm_dir, TEXTS)
    assert len(result.vectors) == len(TEXTS)
    for got, want in zip(result.vectors, expected, strict=True):
        assert len(got) == 384
        assert cosine(got, want) > 0.9999
        assert math.isclose(math.sqrt(sum(x * x for x in got)), 1.0, abs_tol=1e-5)
    tokens = minilm.tokenizer(list(TEXTS))["input_ids"]
    assert result.input_tokens == sum(len(ids) for ids in tokens)


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(minilm: LoadedModel) -> None:
    guitar, report, _, strumming, _ = embed(minilm, EmbedRequest(texts=TEXTS)).vectors

    assert cosine(guitar, strumming) > cosine(guitar, report) + 0.2


def test_an_over_long_text_is_refused_with_its_index_and_the_limit(minilm: LoadedModel) -> None:
    long = "word " * 300

    with pytest.raises(EmbedInputError) as raised:
        embed(minilm, EmbedRequest(texts=("short", long)))

    assert (raised.value.index, raised.value.limit) == (1, 256)
    assert raised.value.tokens == len(minilm.tokenizer(long)["input_ids"])


def test_a_classifier_is_not_an_encoder_that_embeds(tiny_bert_dir: Path) -> None:
    classifier = load_model(str(tiny_bert_dir), "cpu")

    with pytest.raises(ValueError, match="this is a classification model, not an encoder that embeds"):
        embed(classifier, EmbedRequest(texts=("hello",)))
