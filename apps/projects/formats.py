"""The formats of uploaded files, the names people read for them, and the endpoints a batch may
call: one definition that the validator, the jobs that read files and the pages all import.
Plain Python (the validator runs without Django too)."""

from __future__ import annotations

CLASSIFICATION_CSV = "classification_csv"
CLASSIFICATION_JSONL = "classification_jsonl"
CHAT_JSONL = "chat_jsonl"
PROMPT_COMPLETION_JSONL = "prompt_completion_jsonl"
BATCH_JSONL = "batch_jsonl"
TEXT_CSV = "text_csv"
TEXT_JSONL = "text_jsonl"
PREFERENCE_JSONL = "preference_jsonl"
EVAL_JSONL = "eval_jsonl"

FORMAT_NAMES = {
    CLASSIFICATION_CSV: "classification CSV",
    CLASSIFICATION_JSONL: "classification JSONL",
    CHAT_JSONL: "chat JSONL",
    PROMPT_COMPLETION_JSONL: "prompt/completion JSONL",
    BATCH_JSONL: "batch JSONL",
    TEXT_CSV: "unlabelled text CSV",
    TEXT_JSONL: "unlabelled text JSONL",
    PREFERENCE_JSONL: "preference JSONL",
    EVAL_JSONL: "eval data JSONL",
}
FORMATS = tuple(FORMAT_NAMES)
CLASSIFICATION_FORMATS = (CLASSIFICATION_CSV, CLASSIFICATION_JSONL)
# What a causal LM learns replies from (supervised fine-tuning).
SUPERVISED_FORMATS = (CHAT_JSONL, PROMPT_COMPLETION_JSONL)
# Pairs of a preferred and a non-preferred reply to one conversation (DPO, OpenAI's format).
PREFERENCE_FORMATS = (PREFERENCE_JSONL,)
# Texts without labels: the unlabeled_file of a distillation, which a teacher model labels.
TEXT_FORMATS = (TEXT_CSV, TEXT_JSONL)
# Datasets a batch can be built from, a request a row (a batch file runs as it is).
DATASET_FORMATS = (*CLASSIFICATION_FORMATS, *SUPERVISED_FORMATS)

# The endpoints a batch line may call, and the name of each in a job's request.
BATCH_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/classifications": "classifications",
    "/v1/embeddings": "embeddings",
}


def format_name(value: str | None) -> str:
    """classification_csv → "classification CSV"."""
    return FORMAT_NAMES.get(value or "", "unknown format")
