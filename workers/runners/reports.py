"""The result files a fine-tune leaves: its per-step metrics, and a classifier's per-row
validation diagnostics. Every text cell is made safe to open in a spreadsheet (`safe_cell`)."""

from __future__ import annotations

import csv
import io
from typing import Any

from apps.core.spreadsheet import safe_cell
from apps.jobs.models import Job

RESULT_COLUMNS = (
    "step",
    "epoch",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "accuracy",
    "f1_macro",
)

# A DPO job's steps report rewards rather than accuracies (docs/api.md, "DPO (preference fine-tuning)").
DPO_RESULT_COLUMNS = (
    "step",
    "epoch",
    "train_loss",
    "train_rewards_margin",
    "train_rewards_accuracy",
    "valid_loss",
    "valid_rewards_margin",
    "valid_rewards_accuracy",
)


def metrics_csv(job: Job) -> bytes:
    """Per-step metrics as OpenAI's results file has them (plus our classifier metrics, or a DPO
    job's rewards), one row a step, from the job's metric events."""
    is_dpo = ((job.request or {}).get("method") or {}).get("type") == "dpo"
    columns = DPO_RESULT_COLUMNS if is_dpo else RESULT_COLUMNS
    rows: dict[int, dict[str, Any]] = {}
    for data in job.events.filter(type="metrics").order_by("id").values_list("data", flat=True):
        if data and "step" in data:
            row = rows.setdefault(int(data["step"]), {"step": int(data["step"])})
            row.update({k: v for k, v in data.items() if k in columns})
            if "train_mean_token_accuracy" in data:
                row["train_accuracy"] = data["train_mean_token_accuracy"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue().encode()


def diagnostics_csv(spec: Any, model_dir: str) -> bytes:
    """Per-row validation loss, likeliest label errors first, text cells made safe for spreadsheets."""
    # torch only when a classifier's diagnostics are written, not when the module is imported
    from workers.runtime.diagnostics import diagnose, validation_examples
    from workers.runtime.models import load_model

    rows = diagnose(load_model(model_dir), validation_examples(spec))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "label", "predicted", "label_probability", "loss", "likely_mislabelled", "text"])
    for row in rows:
        writer.writerow(
            [
                row.line,
                safe_cell(row.label),
                safe_cell(row.predicted),
                row.label_probability,
                row.loss,
                "yes" if row.likely_mislabelled else "",
                safe_cell(row.text),
            ]
        )
    return out.getvalue().encode()
