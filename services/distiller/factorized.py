"""A BERT-style encoder with its token table factorized (ALBERT's layout): every token the teacher knows is
kept, in a rank-r table followed by a shared r → hidden projection, so a student keeps the teacher's tokenizer
unchanged and still sheds most of the table's parameters (MiniLM: 30,522 × 384 → 30,522 × 128 + 128 × 384).

Trimming the vocabulary to the training text instead (vocabulary.py) changed how 57 % of sentences from
other text tokenize; a factorized table changes nothing in the tokenization.

The result is a stock `AlbertModel` with one layer group per block (no sharing), which transformers and
sentence-transformers load. Its blocks are the input's, weight for weight. The table starts from the
principal directions of the input's centred embedding sums (tokens and positions), with the input's embedding
LayerNorm folded into the projection, so the first output is close to the input's before training (MiniLM at
rank 128: pooled cosine 0.78 on text it was never shown; training does the rest).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from services.common.models.modelio import UnsupportedModelError

# BERT-style names (BertModel and its clones: RoBERTa and ELECTRA keep the same module tree) → ALBERT's.
_BLOCK = {"attention.self.query": "attention.query", "attention.self.key": "attention.key",
          "attention.self.value": "attention.value", "attention.output.dense": "attention.dense",
          "attention.output.LayerNorm": "attention.LayerNorm", "intermediate.dense": "ffn",
          "output.dense": "ffn_output", "output.LayerNorm": "full_layer_layer_norm"}


def _bert_parts(model: nn.Module):
    embeddings = getattr(model, "embeddings", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if embeddings is None or layers is None or not hasattr(embeddings, "word_embeddings") \
            or getattr(embeddings, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(
            f"vocabulary: 'factorized' rebuilds BERT-style encoders (embeddings, encoder.layer, absolute positions) "
            f"as ALBERT; {type(model).__name__} is not one")
    return embeddings, layers


def input_basis(embeddings: nn.Module, rank: int, positions: int) -> torch.Tensor:
    """[hidden, rank] orthonormal columns spanning most of what the embedding sum feeds the first LayerNorm:
    the top eigenvectors of its covariance with tokens drawn uniformly, positions uniformly among the first
    `positions`, segment 0 — each vector centred, as that LayerNorm centres it. Positions need their own
    share: MiniLM's position table keeps only 8 % of its energy in the word table's top 128 directions, and
    a start from those lost the order of the tokens (pooled cosine to the input 0.15 where this gives 0.78)."""
    def centred(table: torch.Tensor) -> torch.Tensor:
        table = table.detach().float()
        return table - table.mean(dim=1, keepdim=True)

    words = centred(embeddings.word_embeddings.weight)
    places = centred(embeddings.position_embeddings.weight[:positions])
    segment = centred(embeddings.token_type_embeddings.weight[:1])
    covariance = words.T @ words / len(words) + places.T @ places / len(places) + segment.T @ segment
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    return vectors[:, -rank:].flip(1).contiguous()


@torch.no_grad()
def factorize(model: nn.Module, rank: int, positions: int = 128) -> nn.Module:
    """The ALBERT-layout copy of a BERT-style encoder with a rank-`rank` token table (the input is unchanged);
    `positions`: the sequence length the student will mostly see (input_basis)."""
    from transformers import AlbertConfig, AlbertModel

    embeddings, layers = _bert_parts(model)
    config = model.config
    hidden = config.hidden_size
    if not 0 < rank < hidden:
        raise ValueError(f"embedding_rank: {rank} must be between 1 and the hidden size {hidden} - 1")
    albert_config = AlbertConfig(
        vocab_size=config.vocab_size, embedding_size=rank, hidden_size=hidden, num_hidden_layers=len(layers),
        num_hidden_groups=len(layers), inner_group_num=1, num_attention_heads=config.num_attention_heads,
        intermediate_size=layers[0].intermediate.dense.out_features, hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob, attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps, pad_token_id=config.pad_token_id,
        classifier_dropout_prob=getattr(config, "classifier_dropout", None) or 0.1,
        architectures=["AlbertModel"], torch_dtype="float32")
    student = AlbertModel(albert_config, add_pooling_layer=getattr(model, "pooler", None) is not None)
    student.config._attn_implementation = getattr(config, "_attn_implementation", "sdpa")

    basis = input_basis(embeddings, rank, min(positions, config.max_position_embeddings))  # [hidden, rank]
    target = student.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        table = getattr(embeddings, name).weight.float()
        getattr(target, name).weight.copy_((table - table.mean(dim=1, keepdim=True)) @ basis)
    target.LayerNorm.weight.fill_(1.0)
    target.LayerNorm.bias.zero_()
    # LN_H(x) ≈ γ ⊙ (x_c · √H / ‖x_c‖) + β and LN_r(z) ≈ z · √r / ‖z‖ with z = basisᵀ x_c, so the projection
    # γ ⊙ basis · √(H / r) (bias β) maps the rank-r LayerNorm's output back onto the input's.
    norm = embeddings.LayerNorm
    mapping = student.encoder.embedding_hidden_mapping_in
    mapping.weight.copy_(norm.weight.float()[:, None] * basis * math.sqrt(hidden / rank))
    mapping.bias.copy_(norm.bias.float())

    for index, layer in enumerate(layers):
        albert_layer = student.encoder.albert_layer_groups[index].albert_layers[0]
        for source, dest in _BLOCK.items():
            src, dst = layer.get_submodule(source), albert_layer.get_submodule(dest)
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    if student.pooler is not None:
        student.pooler.weight.copy_(model.pooler.dense.weight)
        student.pooler.bias.copy_(model.pooler.dense.bias)
    return student.eval()
