"""Loading models for inference, and the worker's LRU cache of loaded models.

Only safetensors weights are ever loaded: a `.bin`/`.pt`/`.pkl` file is a pickle, and
unpickling a file a user could have supplied runs their code (docs/architecture.md, "Models and weights").
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.runtime.specs import QUANTIZATIONS

logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"
GENERATION = "generation"
EMBEDDING = "embedding"
DEFAULT_CACHE_BYTES = 4 * 1024**3
# Weight files that are pickles (or may be): never loaded, and named in the refusal.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The safetensors library's own cap on a file's JSON header (MAX_HEADER_SIZE).
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
# Tokenizers without a real limit report a huge sentinel as model_max_length.
_NO_LIMIT = 1_000_000


@dataclass
class LoadedModel:
    ref: str
    task: str  # CLASSIFICATION | GENERATION | EMBEDDING
    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer
    labels: list[str]  # classifiers: label names in id order; generators: []
    # Most tokens the model attends to (prompt + completion for generators; for a sentence encoder,
    # the max_seq_length it was trained for).
    context_length: int
    multi_label: bool  # classifiers trained with problem_type "multi_label_classification"
    nbytes: int  # parameters + buffers (+ packed quantized weights), what the cache budgets by
    device: torch.device
    quantization: str = "none"  # what its Linear layers were converted to at load: "fp16", "int8" or "none"
    base_ref: str = ""  # a LoRA fine-tune served as a view of this cached base (its nbytes: the adapter's)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def task_for_architectures(architectures: list[str] | None) -> str:
    for name in architectures or []:
        if name.endswith("ForSequenceClassification"):
            return CLASSIFICATION
        if name.endswith(("ForCausalLM", "LMHeadModel")):
            return GENERATION
        if name.endswith("Model") and "For" not in name:  # a bare encoder (BertModel): it embeds
            return EMBEDDING
    raise ValueError(
        f"unsupported model architecture {architectures}: expected a sequence classifier, a causal LM or "
        "a bare encoder"
    )


def check_weights_format(directory: Path) -> None:
    """Refuse a model directory unless it holds safetensors weights. Reads names only, never contents."""
    names = [p.name for p in directory.iterdir() if p.is_file()]
    if any(name.endswith(".safetensors") for name in names):
        return
    if any(name.endswith(PICKLE_SUFFIXES) for name in names):
        raise ValueError("format not allowed; use safetensors")
    raise ValueError(f"no safetensors weights in {directory}")


def _hub_offline() -> bool:
    # Build and test machines reach no model hub; going online is an explicit opt-in.
    return os.environ.get("HF_HUB_OFFLINE", "1") == "1"


def _check_ref(ref: str) -> None:
    path = Path(ref)
    if path.is_dir():
        check_weights_format(path)
    elif path.exists() or ref.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory not found: {ref}")
    elif _hub_offline():
        raise FileNotFoundError(
            f"model {ref!r} is not a local directory and the hub is offline (HF_HUB_OFFLINE=1)"
        )


def _context_length(config: Any, tokenizer: Any) -> int:
    limits = [
        value
        for value in (
            getattr(config, "max_position_embeddings", None),
            getattr(config, "n_positions", None),
            getattr(tokenizer, "model_max_length", None),
        )
        if isinstance(value, int) and 0 < value < _NO_LIMIT
    ]
    return min(limits) if limits else 2048


def _sentence_length(ref: str) -> int | None:
    """A sentence-transformers directory names the length its encoder was trained on (MiniLM-L6:
    256 of its 512 positions); embeddings past it are what the recipe never makes."""
    path = Path(ref) / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("max_seq_length")
    return value if isinstance(value, int) and value > 0 else None


def _labels(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def _cpu_has_amx() -> bool:
    # torch's own probe (private, hence the fallback): AMX tiles do bf16 matmuls natively.
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), by torch's private probes:
    a torch without them answers False, and training stays in float32 rather than emulating bf16.
    Training's test (`training.resolve_precision`); serving's "auto" asks for AMX alone."""
    if not torch.backends.mkldnn.is_available():  # oneDNN runs the bf16 matmuls
        return False
    probes = (
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return any(bool(probe and probe()) for probe in probes)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto": bf16 where the hardware computes it natively, else float32.

    bf16 halves memory and, on GPUs and AMX CPUs (Sapphire Rapids and later), runs matmuls
    several times faster: MiniLM classifies ~3x faster on an AMX CPU, with scores within
    ~1e-3 of float32. Elsewhere bf16 is emulated and slower than float32.
    """
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of: {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_amx():
        return torch.bfloat16
    return torch.float32


def resolve_quantization(quantization: str, dtype: torch.dtype, device: torch.device) -> str:
    """What a generator served on `device` in `dtype` gets: "fp16", "int8" or "none".

    Only CPUs: a GPU keeps its bf16/fp16 weights as they are. "auto" picks fp16 weights where
    the model would otherwise be served in float32 (CPUs without AMX): batch-1 decoding there is
    bound by reading the weights, and half the bytes ran SmolLM2-135M ~1.9x faster with the
    same greedy tokens (bench/generate.py, docs/architecture.md "Models and weights"). int8
    (activations quantized too) is faster still but wrecks SmolLM2's perplexity, so it is only
    ever an explicit choice. An AMX CPU already serves bf16 natively: "auto" leaves it alone.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"unknown quantization {quantization!r}; expected one of: {', '.join(QUANTIZATIONS)}"
        )
    if device.type != "cpu" or quantization == "none":
        return "none"
    if quantization == "auto":
        return "fp16" if dtype == torch.float32 and _has_fbgemm() else "none"
    return quantization


def _has_fbgemm() -> bool:
    # fbgemm (x86) runs the quantized Linear kernels; an ARM build has qnnpack only, without fp16.
    return "fbgemm" in torch.backends.quantized.supported_engines


def quantize_linears(model: torch.nn.Module, quantization: str) -> None:
    """Convert every nn.Linear of a float32 model in place: fp16 weights (fbgemm's fp16 GEMM, float32
    activations and accumulation) or int8 per-channel weights with dynamically quantized activations.

    Serving only: training never sees these modules, and the stored weights are untouched. A tied
    LM head gets its own converted copy; the input embedding stays float32.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    qconfig: Any = (
        {torch.nn.Linear: per_channel_dynamic_qconfig} if quantization == "int8" else {torch.nn.Linear}
    )
    with warnings.catch_warnings():
        # Eager-mode quantization is deprecated in favour of torchao, which we do not install; the
        # fbgemm kernels it calls are what runs fastest here (docs/architecture.md).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        quantize_dynamic(
            model, qconfig, dtype=torch.qint8 if quantization == "int8" else torch.float16, inplace=True
        )


def _packed_nbytes(module: torch.nn.Module) -> int:
    # A quantized Linear keeps its weight packed in an opaque object, not as a parameter or buffer.
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    if not isinstance(module, QuantizedLinear):
        return 0
    cells = module.in_features * module.out_features
    # int8: a byte a cell plus a float64 scale and an int64 zero point per row; fp16: two bytes a cell.
    int8 = module._packed_params.dtype == torch.qint8
    weight = cells + module.out_features * 16 if int8 else cells * 2
    bias = module.out_features * 4 if module.bias() is not None else 0
    return weight + bias


def model_nbytes(model: torch.nn.Module) -> int:
    # Tied weights (GPT-2's embedding and LM head) share storage: count each tensor once.
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total + sum(_packed_nbytes(module) for module in model.modules())


def load_model(
    ref: str, device: str = "auto", dtype: str = "auto", quantization: str = "none"
) -> LoadedModel:
    """Load a local transformers directory (or a hub id when HF_HUB_OFFLINE is not "1") for inference.

    `dtype` is "auto" (see `resolve_dtype`), "float32", "bfloat16" or "float16". `quantization`
    ("auto", "fp16", "int8" or "none", see `resolve_quantization`) converts a generator's Linear
    layers for serving on a CPU; other tasks and GPUs ignore it.
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    _check_ref(ref)
    target = resolve_device(device)
    # Never run code shipped with a model; never reach for the hub unless told to.
    options: dict[str, Any] = {"trust_remote_code": False, "local_files_only": _hub_offline()}
    config = AutoConfig.from_pretrained(ref, **options)
    task = task_for_architectures(getattr(config, "architectures", None))
    auto_class = {
        CLASSIFICATION: AutoModelForSequenceClassification,
        GENERATION: AutoModelForCausalLM,
        EMBEDDING: AutoModel,
    }[task]
    load_dtype = resolve_dtype(dtype, target)
    quantized = resolve_quantization(quantization, load_dtype, target) if task == GENERATION else "none"
    if quantized != "none":
        load_dtype = torch.float32  # the quantized kernels take float32 activations
    model = auto_class.from_pretrained(ref, dtype=load_dtype, use_safetensors=True, **options)
    # Module.to rather than model.to: transformers' decorated to() is typed to reject a device.
    torch.nn.Module.to(model, target)
    model.eval()
    if quantized != "none":
        quantize_linears(model, quantized)
    tokenizer = AutoTokenizer.from_pretrained(ref, **options)
    context_length = _context_length(config, tokenizer)
    if task == EMBEDDING:
        context_length = min(context_length, _sentence_length(ref) or context_length)
    return LoadedModel(
        ref=ref,
        task=task,
        model=model,
        tokenizer=tokenizer,
        labels=_labels(config) if task == CLASSIFICATION else [],
        context_length=context_length,
        multi_label=getattr(config, "problem_type", None) == "multi_label_classification",
        nbytes=model_nbytes(model),
        device=target,
        quantization=quantized,
    )


def view_key(base_ref: str, ref: str) -> str:
    """The cache's key for the LoRA fine-tune in `ref` served on `base_ref`."""
    return f"{ref} (LoRA on {base_ref})"


def load_adapted(base: LoadedModel, ref: str) -> LoadedModel:
    """The LoRA fine-tune in directory `ref` as a view of the loaded `base` (workers/runtime/adapters.py):
    its own tokenizer (training may have given it a chat template), config and context length, the
    base's weights. A generation fine-tune is served on a generation base; a classifier on the
    encoder of a classifier or embedding base. Raises UnsupportedAdapter for what the view cannot
    serve exactly."""
    from transformers import AutoConfig, AutoTokenizer

    from workers.runtime.adapters import (
        ADAPTER_DIR,
        UnsupportedAdapter,
        adapted_view,
        classifier_view,
        read_adapter,
    )

    options: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    config = AutoConfig.from_pretrained(ref, **options)
    task = task_for_architectures(getattr(config, "architectures", None))
    bases = {GENERATION: (GENERATION,), CLASSIFICATION: (CLASSIFICATION, EMBEDDING)}.get(task, ())
    if base.task not in bases:
        raise UnsupportedAdapter(f"a {task} fine-tune is not served on a {base.task} model")
    adapter = read_adapter(Path(ref) / ADAPTER_DIR)
    # What the base's layers take in: float32 around quantized Linears, else the weights' dtype.
    dtype = next(base.model.parameters()).dtype
    if task == CLASSIFICATION:
        view = classifier_view(base.model, adapter, config, base.device, dtype)
    elif adapter.saved:
        raise UnsupportedAdapter("the adapter trains whole modules, which a generation view does not take")
    else:
        view = adapted_view(base.model, adapter, base.device, dtype)
    view.eval()
    tokenizer = AutoTokenizer.from_pretrained(ref, **options)
    logger.info("serving %s as a LoRA view of %s (%d adapter bytes)", ref, base.ref, adapter.nbytes)
    return LoadedModel(
        ref=ref,
        task=task,
        model=view,
        tokenizer=tokenizer,
        labels=_labels(config) if task == CLASSIFICATION else [],
        context_length=_context_length(config, tokenizer),
        multi_label=getattr(config, "problem_type", None) == "multi_label_classification",
        nbytes=adapter.nbytes,
        device=base.device,
        quantization=base.quantization,
        base_ref=base.ref,
    )


def _safetensors_header(path: Path) -> dict[str, Any]:
    # The format: an 8-byte little-endian length, then a JSON header naming each tensor.
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        # read(length) allocates `length` bytes up front: a forged length must not reach it.
        if length > MAX_SAFETENSORS_HEADER_BYTES:
            raise ValueError(f"{path.name}: safetensors header of {length:,} bytes is over the 100 MB limit")
        return json.loads(handle.read(length))


def estimate_nbytes(ref: str, device: str = "auto", dtype: str = "auto") -> int:
    """What loading `ref` will take, from its safetensors headers alone (0 when not a local dir)."""
    path = Path(ref)
    if not path.is_dir():
        return 0
    float_size = torch.tensor([], dtype=resolve_dtype(dtype, resolve_device(device))).element_size()
    total = 0
    for weights in path.glob("*.safetensors"):
        for name, tensor in _safetensors_header(weights).items():
            if name == "__metadata__":
                continue
            start, end = tensor["data_offsets"]
            if tensor["dtype"] in _FLOAT_DTYPES:  # floats are converted to the load dtype
                total += math.prod(tensor["shape"]) * float_size
            else:
                total += end - start
    return total


class ModelCache:
    """Loaded models, least recently used evicted first once their bytes pass max_bytes.

    One lock covers lookups and loads: two threads asking for the same cold model load it
    once, at the price of a hit waiting behind another model's load (a GPU worker runs one
    task at a time, so that wait does not happen in production).
    """

    def __init__(
        self, max_bytes: int, device: str = "auto", dtype: str = "auto", quantization: str = "none"
    ) -> None:
        self.max_bytes = max_bytes
        self.device = device
        self.dtype = dtype
        self.quantization = quantization
        self.hits = 0
        self.misses = 0
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: str) -> LoadedModel:
        with self._lock:
            return self._get(ref)

    def get_adapted(self, base_ref: str, ref: str) -> LoadedModel:
        """The LoRA fine-tune in directory `ref` (its `adapter/` and tokenizer) served on the base
        at `base_ref`, which is loaded (or kept) in this cache once for all its fine-tunes.
        Raises UnsupportedAdapter when the view cannot serve it exactly."""
        key = view_key(base_ref, ref)  # never a plain model's key, should `ref` hold merged weights too
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self.hits += 1
                self._models.move_to_end(base_ref)  # a base is as recently used as its fine-tunes
                self._models.move_to_end(key)
                return loaded
            base = self._get(base_ref)
            self.misses += 1
            loaded = load_adapted(base, ref)
            self._evict_for(loaded.nbytes, keep=base_ref)
            self._models[key] = loaded
            return loaded

    def _get(self, ref: str) -> LoadedModel:
        loaded = self._models.get(ref)
        if loaded is not None:
            self.hits += 1
            self._models.move_to_end(ref)
            return loaded
        self.misses += 1
        # Make room before loading too (estimated from the weight files), so old and new
        # weights are not both resident at the peak; then settle with the real size (a
        # quantized generator's, smaller than the float weights it is converted from).
        self._evict_for(estimate_nbytes(ref, self.device, self.dtype))
        loaded = load_model(ref, self.device, self.dtype, self.quantization)
        self._evict_for(loaded.nbytes)
        self._models[ref] = loaded
        return loaded

    def _evict_for(self, nbytes: int, keep: str = "") -> None:
        # A model bigger than the whole budget still loads: it is then the only one held.
        while self.nbytes + nbytes > self.max_bytes:
            victim = next((ref for ref in self._models if ref != keep), None)
            if victim is None:
                break
            evicted = self._models.pop(victim)
            # The views of an evicted base would keep its weights alive unaccounted: they go too.
            for key in [key for key, held in self._models.items() if held.base_ref == evicted.ref]:
                del self._models[key]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand freed weights back, so the next load has the room

    @property
    def nbytes(self) -> int:
        return sum(loaded.nbytes for loaded in self._models.values())

    def refs(self) -> list[str]:
        """Cached refs (a view's as `view_key` names it), least recently used first."""
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


_default_cache: ModelCache | None = None
_default_cache_lock = threading.Lock()


def default_cache(quantization: str = "none") -> ModelCache:
    """The process-wide cache, sized by MODEL_CACHE_BYTES (default 4 GiB); MODEL_DTYPE picks the dtype.

    `quantization` is the worker's SERVE_QUANTIZATION; the first call makes the cache with it (a
    process's settings do not change, so later calls pass the same value).
    """
    global _default_cache
    with _default_cache_lock:
        if _default_cache is None:
            _default_cache = ModelCache(
                int(os.environ.get("MODEL_CACHE_BYTES", DEFAULT_CACHE_BYTES)),
                dtype=os.environ.get("MODEL_DTYPE", "auto"),
                quantization=quantization,
            )
        return _default_cache
