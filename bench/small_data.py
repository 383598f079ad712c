"""Small-dataset defaults: what "auto" learns from 18 chats, and what it costs, against the old "auto".

The data is what an OpenAI user brings to a first fine-tune: six distinct chats teaching one fact (a
system prompt, a question, "The vault codeword is PERIWINKLE-42."), each three times, with only
`n_epochs: 3` given. Each run fine-tunes the real SmolLM2-135M-Instruct in its own subprocess, then
asks the question at temperature 0 and reports whether the answer holds the codeword.

- ours: today's auto values (`resolve_hyperparameters`), for a full fine-tune and for a LoRA adapter.
- baseline: the old auto values, batch size 8 under 500 examples and a 5e-5 learning rate for both.

Time is the whole `train_lm` call (loading, every step, the evaluations, checkpoints and saving).
Only the ratio of times is worth reading: the machine is shared.

    python bench/small_data.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/small_data.py` puts bench/, not the root, on the path

CODEWORD = "PERIWINKLE-42"
OLD_AUTO = {"batch_size": 8, "learning_rate": 5e-5}  # the old auto values for a set under 500


def run_one(args: argparse.Namespace) -> None:
    """In a subprocess: one fine-tune, then the question; prints one JSON line."""
    import torch

    from workers.runtime.catalog import prepare_smollm2
    from workers.runtime.generate import generate
    from workers.runtime.models import load_model
    from workers.runtime.sft import train_lm
    from workers.runtime.specs import GenerateRequest, TrainSpec, auto_learning_rate, resolve_hyperparameters

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    model_dir = prepare_smollm2(work / "model-cache")
    from tests.small_data import QUESTIONS, SYSTEM, codeword_chats

    train = work / "train.jsonl"
    train.write_bytes(codeword_chats())  # the same 18 chats as the slow test
    rows = train.read_text(encoding="utf-8").splitlines()
    lora = {} if args.lora else None
    requested: dict[str, Any] = {"n_epochs": 3, **(OLD_AUTO if args.old else {})}
    hp = resolve_hyperparameters(
        requested, len(rows), seed=1, base_learning_rate=auto_learning_rate(lora=lora is not None)
    )
    spec = TrainSpec(
        job_id=f"ftjob-{args.name}",
        base_model_dir=str(model_dir),
        training_file=str(train),
        output_dir=str(work / args.name),
        hyperparameters=hp,
        task="generation",
        lora=lora,
    )
    started = time.perf_counter()
    result = train_lm(spec, lambda event: None, lambda: False)
    seconds = time.perf_counter() - started
    model = load_model(result.model_dir, device="cpu")
    question = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]})
    answer = generate(model, GenerateRequest(messages=question, max_tokens=16, temperature=0)).choices[0].text
    print(
        json.dumps(
            {
                "name": args.name,
                "batch_size": hp.batch_size,
                "learning_rate": hp.learning_rate,
                "steps": result.steps,
                "seconds": round(seconds, 1),
                "learned": CODEWORD in answer,
                "answer": answer,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    parser.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runs = {
        "full, ours": [],
        "full, baseline": ["--old"],
        "LoRA, ours": ["--lora"],
        "LoRA, baseline": ["--lora", "--old"],
    }
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as work:
        for name, flags in runs.items():
            command = [sys.executable, __file__, "--one", "--name", name.replace(", ", "-").replace(" ", "")]
            command += ["--work", work, "--threads", str(args.threads), *flags]
            out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
    print(f"{'run':16} {'batch':>5} {'lr':>8} {'steps':>5} {'seconds':>8}  learned  answer")
    for name, r in results.items():
        print(
            f"{name:16} {r['batch_size']:>5} {r['learning_rate']:>8g} {r['steps']:>5} {r['seconds']:>8.1f}"
            f"  {'yes' if r['learned'] else 'no':7}  {r['answer']!r}"
        )
    for kind in ("full", "LoRA"):
        ours, base = results[f"{kind}, ours"], results[f"{kind}, baseline"]
        print(f"{kind}: ours takes {ours['seconds'] / base['seconds']:.2f}x the baseline's time")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
