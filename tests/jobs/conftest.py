from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

TINY_DIR = ROOT / "var" / "test-models"


@pytest.fixture(scope="session")
def tiny_bert_dir() -> Path:
    """A 2-layer BERT encoder built from a config, shared by the session (built once)."""
    pytest.importorskip("torch")
    from tests.tiny_models import build_tiny_bert

    path = TINY_DIR / "tiny-bert"
    if not (path / "model.safetensors").exists():
        build_tiny_bert(path)
    return path


@pytest.fixture
def tiny_base(db: None, tiny_bert_dir: Path) -> Any:
    """A catalog base model backed by the tiny BERT, fine-tunable for classification."""
    from apps.registry.models import Model

    return Model.objects.create(
        name="tiny-bert",
        task="classification",
        artifact_key=f"local:{tiny_bert_dir}",
        context_length=128,
        is_fine_tunable=True,
        limits={"max_seq_length": 128, "methods": ["classification"], "servable": False},
    )


POSITIVE = ["great", "wonderful", "amazing", "excellent", "happy", "good", "loved"]
NEGATIVE = ["terrible", "awful", "horrible", "bad", "sad", "hated", "poor"]


def sentiment_csv(rows: int = 120, seed: int = 0) -> bytes:
    """A learnable toy set: the label follows the sentiment word in the sentence."""
    import random

    rng = random.Random(seed)
    lines = ["text,label"]
    for i in range(rows):
        positive = i % 2 == 0
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        filler = " ".join(
            rng.choice(["the", "movie", "was", "really", "quite", "a", "day"])
            for _ in range(rng.randint(1, 6))
        )
        lines.append(f"{filler} {word} {filler},{'positive' if positive else 'negative'}")
    return ("\n".join(lines) + "\n").encode()
