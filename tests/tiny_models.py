"""Tiny transformers models built from configs, for fast tests (no hub, no download).

Every builder writes a standard `save_pretrained` directory: a 2-layer model with
safetensors weights and a fast tokenizer trained on a few sentences by `tokenizers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SENTENCES = [
    "the movie was great and i loved it",
    "the film was terrible and i hated it",
    "what a wonderful happy day",
    "what an awful sad day",
    "good great excellent wonderful amazing",
    "bad terrible awful horrible sad",
    "hello how are you today",
    "i am fine thank you very much",
    "the quick brown fox jumps over the lazy dog",
    "please tell me a story about a cat",
    "system user assistant",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_bert(
    path: Path, labels: list[str] | None = None, seed: int = 0, vocab_size: int | None = None
) -> Path:
    """A 2-layer BERT sequence classifier with a WordPiece tokenizer. A `vocab_size` above the
    tokenizer's adds embedding rows no token uses: a model that is big but as fast as the tiny one."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(SENTENCES * 4, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    labels = labels or ["negative", "positive"]
    config = BertConfig(
        vocab_size=max(vocab_size or 0, tok.get_vocab_size()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=tok.token_to_id("[PAD]"),
    )
    BertForSequenceClassification(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def _chat_tokenizer() -> tuple[Any, int]:
    """A byte-level BPE tokenizer with ChatML specials and template, and its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        SENTENCES * 4,
        trainers.BpeTrainer(
            vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast, tok.get_vocab_size()


def build_tiny_gpt2(path: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 causal LM with a byte-level BPE tokenizer and a ChatML template."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    fast, vocab_size = _chat_tokenizer()
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama causal LM shaped like SmolLM2 (nn.Linear layers, grouped-query attention, an LM
    head tied to the embedding), with the GPT-2 builder's tokenizer. GPT-2 uses Conv1D, not
    nn.Linear, so only this one exercises serving's quantized Linear layers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    fast, vocab_size = _chat_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path
