"""What constrained decoding costs per token: JSON-schema answers against free text, same model,
same prompts, same token budget, in one run.

SmolLM2-135M-Instruct answers 8 chat requests asking for a list of people as JSON, up to
`--max-tokens` new tokens each, greedily:
- free text: no grammar (the baseline);
- json_schema: the schema below (an object holding at least 30 people, so no answer ends before
  the budget and every method makes about as many tokens);
- required tool call: the same list as the arguments of a required function call.
Each is run one request at a time and as one batch of 8. The methods take turns over `--rounds`
rounds, so a busy machine slows them alike; the figures are tokens per second and the extra time
per token, and the mask alone (llguidance's bitmask plus applying it) is timed apart.

    python bench/structured.py [--cache-dir var/models] [--max-tokens 64] [--rounds 2] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PEOPLE = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 30,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "city": {"type": "string"},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                },
                "required": ["name", "city", "age"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}
from bench.generate import Method  # noqa: E402  (after the path is set)

CITIES = ["Paris", "Lagos", "Lima", "Osaka", "Oslo", "Cairo", "Quito", "Perth"]


def build(max_tokens: int, grammar: str | None, tools: Any = None) -> list[Any]:
    from workers.runtime.specs import GenerateRequest

    return [
        GenerateRequest(
            messages=(
                {
                    "role": "user",
                    "content": f"List thirty people who live in {city} as JSON: name, city, age.",
                },
            ),
            max_tokens=max_tokens,
            temperature=0,
            grammar=grammar,
            tools=tools,
        )
        for city in CITIES
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from workers.runtime.catalog import prepare_smollm2
    from workers.runtime.constrain import Constraint, apply_constraints, json_schema_grammar, request_grammar
    from workers.runtime.generate import _vocab_size, eos_token_ids, generate, generate_batch
    from workers.runtime.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    model = load_model(str(prepare_smollm2(args.cache_dir)), device="cpu", dtype="auto")
    precision = str(next(model.model.parameters()).dtype).removeprefix("torch.")
    tool = {"type": "function", "function": {"name": "save_people", "parameters": PEOPLE}}
    variants = {
        "free text": build(args.max_tokens, None),
        "json_schema": build(args.max_tokens, json_schema_grammar(PEOPLE, strict=True)),
        "required tool call": build(args.max_tokens, request_grammar(None, [tool], "required"), (tool,)),
    }
    generate(model, variants["json_schema"][0])  # warm-up, and the tokenizer's one-off build

    timed: list[Method] = []
    for label, batch in variants.items():

        def one_at_a_time(batch: list[Any] = batch) -> int:
            return sum(generate(model, request).completion_tokens for request in batch)

        def together(batch: list[Any] = batch) -> int:
            return sum(result.completion_tokens for result in generate_batch(model, batch))

        timed += [Method(f"{label}, one at a time", one_at_a_time), Method(f"{label}, batch of 8", together)]
    for round_index in range(args.rounds):
        shift = round_index % len(timed)
        for method in timed[shift:] + timed[:shift]:
            method.timed()

    # The mask alone: replay one constrained answer's tokens through a fresh matcher.
    answer = generate(model, variants["json_schema"][0])
    ids = model.tokenizer(answer.choices[0].text, add_special_tokens=False)["input_ids"]
    vocab = _vocab_size(model)
    logits = torch.zeros((1, vocab))
    constraint = Constraint(model.tokenizer, vocab, eos_token_ids(model), variants["json_schema"][0].grammar)
    started = time.perf_counter()
    for token in ids:
        apply_constraints(logits, [constraint])
        constraint.accept(token)
    mask_ms = (time.perf_counter() - started) * 1000 / max(len(ids), 1)

    print(
        f"\nSmolLM2-135M-Instruct, 8 chat requests x up to {args.max_tokens} new tokens, greedy, CPU, "
        f"{precision}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds\n"
    )
    print(f"{'':36} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs free text':>13} {'ms/token extra':>15}")
    for method in timed:
        base = timed[0] if "one at a time" in method.name else timed[1]
        ratio = method.tokens_per_second / base.tokens_per_second
        extra = 1000 / method.tokens_per_second - 1000 / base.tokens_per_second
        print(
            f"{method.name:36} {method.tokens:7d} {method.seconds:8.1f} {method.tokens_per_second:9.1f} "
            f"{ratio:12.2f}x {extra:15.2f}"
        )
    print(f"\nmask alone (bitmask + apply, one row, {vocab} tokens): {mask_ms:.2f} ms per token")
    print("first constrained answer:", json.dumps(answer.choices[0].text[:120]))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
