"""Vocabulary trimming for WordPiece encoders: keep the tokens a corpus uses, the special tokens and
every single-character piece, drop the rest of the embedding table (52 % of MiniLM's parameters).

Why the text still tokenizes: WordPiece takes the longest vocabulary prefix of each word. Every
token of the corpus's own tokenization is kept, so the corpus tokenizes exactly as before (a subset
holds no longer match); any other word falls back to shorter kept pieces, down to single
characters, so only characters the original vocabulary lacked become [UNK], as before.
The rewritten tokenizer.json and vocab.txt load with stock transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from services.common.models.modelio import UnsupportedModelError


def _wordpiece(tokenizer_json: dict) -> dict:
    model = tokenizer_json.get("model", {})
    if model.get("type") != "WordPiece":
        raise UnsupportedModelError(f"vocabulary: 'corpus' trims WordPiece tokenizers (BERT-style encoders), not a "
                                    f"{model.get('type') or 'unknown'} tokenizer; use vocabulary 'full'")
    return model


def kept_token_ids(tokenizer, tokenizer_json: dict, texts: list[str]) -> list[int]:
    """Old ids to keep, ascending: special and added tokens, single-character pieces, the corpus's tokens."""
    vocab = _wordpiece(tokenizer_json)["vocab"]
    prefix = _wordpiece(tokenizer_json).get("continuing_subword_prefix", "##")
    keep = {t["id"] for t in tokenizer_json.get("added_tokens", [])}
    keep |= {i for tok, i in vocab.items() if len(tok) == 1 or (tok.startswith(prefix) and len(tok) == len(prefix) + 1)}
    for start in range(0, len(texts), 256):
        for ids in tokenizer(texts[start:start + 256], add_special_tokens=False).input_ids:
            keep.update(ids)
    return sorted(keep)


def rewrite_tokenizer(src: Path, dst: Path, keep: list[int]) -> dict[int, int]:
    """Writes dst's tokenizer.json (and vocab.txt, tokenizer_config.json) for the kept ids, renumbered
    in their old order; returns old id -> new id."""
    data = json.loads((src / "tokenizer.json").read_text())
    model = _wordpiece(data)
    new_of = {old: new for new, old in enumerate(keep)}
    token_of = {i: t for t, i in model["vocab"].items()}
    model["vocab"] = {token_of[old]: new for old, new in new_of.items()}
    for added in data.get("added_tokens", []):
        added["id"] = new_of[added["id"]]
    for special in (data.get("post_processor") or {}).get("special_tokens", {}).values():
        special["ids"] = [new_of[i] for i in special["ids"]]
    (dst / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (dst / "vocab.txt").write_text("".join(token_of[old] + "\n" for old in keep))
    config_path = src / "tokenizer_config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {str(new_of[int(k)]): v for k, v in config["added_tokens_decoder"].items()}
        (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return new_of


def trim_embeddings(model: nn.Module, keep: list[int], new_of: dict[int, int]) -> None:
    """Slices the input embedding table (and a tied or untied output layer) to the kept rows; the
    config's vocab_size and special token ids follow."""
    rows = torch.tensor(keep)
    old = model.get_input_embeddings()
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=new_of.get(old.padding_idx))
    new.weight.data = old.weight.detach()[rows].clone()
    model.set_input_embeddings(new)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        raise UnsupportedModelError("vocabulary: 'corpus' would drop tokens a language-model head predicts; it is "
                                    "for encoders")
    config = model.config
    config.vocab_size = len(keep)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value in new_of:
            setattr(config, name, new_of[value])
