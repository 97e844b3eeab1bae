"""Tiny random-weight models of every declared family, built from transformers' own configs
(`AutoConfig.for_model`) at test time: no downloads. Decoders get a byte-level BPE tokenizer trained
here on the calibration text (the tokenizer family GGUF carries); encoders get MiniLM's WordPiece one."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.contract import model_kinds

# Small enough that every recipe runs in seconds, large enough for INT4 groups of 64 and 2 KV groups.
DIMS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256}
# What a family's config names differently, or needs beyond DIMS to stay tiny.
EXTRA: dict[str, dict] = {
    "gpt2": {"n_positions": 256},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
    "falcon": {"num_kv_heads": 2},
    "gpt_neox": {"rotary_pct": 1.0},
    "distilbert": {"dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4},
    "electra": {"embedding_size": 64},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    # Experts 128 wide: a quarter cut stays a multiple of the pruner's width_multiple (32).
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                  "shared_expert_intermediate_size": 64},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128},
    "modernbert": {"global_attn_every_n_layers": 2, "local_attention": 32, "pad_token_id": 0,
                   "bos_token_id": 101, "cls_token_id": 101, "eos_token_id": 102, "sep_token_id": 102},
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3_text": {"query_pre_attn_scalar": 16},
}
# DIMS a family's config derives and refuses to be given.
DERIVED: dict[str, tuple[str, ...]] = {"falcon": ("head_dim",)}
BPE_VOCAB = 512


def bpe_tokenizer(folder: Path) -> Path:
    """A byte-level BPE tokenizer trained on the calibration text, written once into `folder`."""
    if (folder / "tokenizer.json").exists():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from services.common.datasets import corpus

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([corpus.calibration_text()[:200_000]], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>"}))
    return folder


def wordpiece_tokenizer() -> Path:
    """MiniLM's tokenizer folder (a built-in model shipped with the repository)."""
    from tests.conftest import minilm_folder

    return minilm_folder()


def tiny_config(model_type: str, vocab_size: int):
    from transformers import AutoConfig

    # Only the dimensions the family's config has: an unknown key would be stored as a stray attribute
    # (GPT-2 with a num_key_value_heads its attention ignores, read by the exporters' cache geometry).
    known = AutoConfig.for_model(model_type)
    dims = {k: v for k, v in DIMS.items() if hasattr(known, k) and k not in DERIVED.get(model_type, ())}
    values = {**dims, **EXTRA.get(model_type, {}), "vocab_size": vocab_size}
    if model_kinds.kind_of_type(model_type) == model_kinds.CAUSAL_LM:
        values |= {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    return AutoConfig.for_model(model_type, **values)


def build(model_type: str, folder: Path, tokenizers: Path) -> Path:
    """A random-weight model of `model_type` saved as safetensors with its tokenizer in `folder`:
    the causal-LM class AutoModelForCausalLM maps for decoders, the bare AutoModel for encoders."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from services.common.models.tokenizer_files import copy_tokenizer

    causal = model_kinds.kind_of_type(model_type) == model_kinds.CAUSAL_LM
    tokenizer = bpe_tokenizer(tokenizers / "bpe") if causal else wordpiece_tokenizer()
    vocab = BPE_VOCAB if causal else json.loads((tokenizer / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    config = tiny_config(model_type, vocab)
    auto = AutoModelForCausalLM if causal else AutoModel
    model = auto.from_config(config, dtype=torch.float32).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer(tokenizer, folder)
    return folder
