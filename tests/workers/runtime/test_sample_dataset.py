"""The sample dataset a new project can start from is learnable: MiniLM, the base model the
getting-started checklist suggests for it, separates its three labels within a few epochs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.workers.runtime.test_training import make_spec, run  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[3] / "apps" / "projects" / "samples" / "support_tickets.csv"


@pytest.mark.slow
def test_minilm_learns_the_sample_dataset(tmp_path: Path, minilm_dir: Path) -> None:
    spec = make_spec(
        tmp_path, minilm_dir, SAMPLE, hp={"n_epochs": 3, "batch_size": 16, "learning_rate": 1e-4}
    )

    result, _ = run(spec)

    # A held-out tenth of the 240 tickets, as a fine-tune without a validation file gets.
    assert result.metrics["accuracy"] >= 0.9, result.metrics
    assert sorted(result.labels) == ["billing", "bug", "feature_request"]
