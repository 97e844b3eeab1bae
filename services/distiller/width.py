"""A student with a narrower hidden (residual) width, initialised on the principal directions of its
input's hidden states.

The residual stream of every block is read by some Linears (attention q/k/v, the MLP's input) and
written by others (attention output, MLP output); embeddings write it, norms rescale it. With an
orthonormal basis U (width × new width) of the directions the hidden states on calibration text
use most (their uncentered second moment, as SliceGPT does), readers become W·U, writers Uᵀ·W,
embeddings E·U and norm weights diag(Uᵀ·diag(γ)·U): at full width with unit norm weights this is a
rotation that leaves an RMSNorm model's function unchanged; narrower, it keeps the subspace that
carries most of the signal, which the distillation then trains from. BERT derives its head size
from the hidden width, so its attention's inner width shrinks too: each head keeps the query/key
dimensions with the largest ‖q row‖·‖k row‖ and the value dimensions with the largest
‖v row‖·‖output column‖, the same number in every head.
"""

from __future__ import annotations

import torch
from torch import nn

from services.common.models.families import is_causal_lm
from services.common.models.architecture import Architecture, replace_module
from services.distiller.data import model_inputs

@torch.no_grad()
def hidden_basis(model: nn.Module, batches: list[dict], width: int) -> torch.Tensor:
    """[hidden, width]: the top eigenvectors of Σ hᵀh over every hidden state (embeddings and each
    block's output) of the real tokens in `batches`."""
    hidden = model.config.hidden_size
    moment = torch.zeros(hidden, hidden, dtype=torch.float64)
    extra = {"use_cache": False} if is_causal_lm(model) else {}
    for batch in batches:
        states = model(**model_inputs(batch), output_hidden_states=True, **extra).hidden_states
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
        for state in states:
            tokens = state[mask].double()
            moment += tokens.T @ tokens
    values, vectors = torch.linalg.eigh(moment)
    order = values.argsort(descending=True)[:width]
    return vectors[:, order].float()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    layer.weight.data = weight.contiguous().clone()
    if bias is not None:
        layer.bias.data = bias.contiguous().clone()
    return layer


def _read(linear: nn.Linear, basis: torch.Tensor, rows: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach().float()
    bias = linear.bias.detach().float() if linear.bias is not None else None
    if rows is not None:
        weight, bias = weight[rows], (bias[rows] if bias is not None else None)
    return _linear(weight @ basis, bias)


def _write(linear: nn.Linear, basis: torch.Tensor, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach().float()
    if cols is not None:
        weight = weight[:, cols]
    bias = linear.bias.detach().float() @ basis if linear.bias is not None else None
    return _linear(basis.T @ weight, bias)


def _norm(norm: nn.Module, basis: torch.Tensor) -> nn.Module:
    """The norm's gain (and bias) carried into the basis; LayerNorms are rebuilt at the new width."""
    gain = (basis ** 2).T @ norm.weight.detach().float()
    bias = norm.bias.detach().float() @ basis if getattr(norm, "bias", None) is not None else None
    if isinstance(norm, nn.LayerNorm):
        new = nn.LayerNorm(basis.shape[1], eps=norm.eps, elementwise_affine=True, bias=bias is not None)
        new.weight.data = gain
        if bias is not None:
            new.bias.data = bias
        return new
    norm.weight = nn.Parameter(gain)  # RMSNorm-style: normalises over whatever width it is given
    return norm


def _per_head_dims(score: torch.Tensor, heads: int, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest-scoring dimensions of every head, in order."""
    size = score.numel() // heads
    best = score.view(heads, size).topk(keep, dim=1).indices.sort(dim=1).values
    return (best + torch.arange(heads).unsqueeze(1) * size).flatten()


def _norms(model: nn.Module) -> list[str]:
    hidden = model.config.hidden_size
    return [name for name, m in model.named_modules()
            if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None
            and tuple(m.weight.shape) == (hidden,)]


@torch.no_grad()
def narrow_hidden(model: nn.Module, blocks: nn.ModuleList, basis: torch.Tensor) -> None:
    """Rewrites `model` in place to the width of `basis` ([hidden, new width], orthonormal columns)."""
    arch = Architecture(model, "a narrower student (distillation)")
    hidden, width = basis.shape
    names = {id(m): n for n, m in model.named_modules()}
    handled: set[str] = set()
    for block in blocks:
        prefix = names[id(block)] + "."
        readers, writers = {n: None for n in arch.residual_readers}, {n: None for n in arch.residual_writers}
        if arch.bert_like:
            # BERT's head size is hidden / heads: the attention's inner width narrows with the stream.
            heads = model.config.num_attention_heads
            if width % heads:
                raise ValueError(f"student_hidden_size: {width} is not a multiple of the {heads} attention heads "
                                 "(BERT-style models derive the head size from the hidden width)")
            q, k, v = (block.get_submodule(n) for n in arch.qkv)
            out = block.get_submodule(arch.attention_output)
            qk = _per_head_dims(q.weight.float().norm(dim=1) * k.weight.float().norm(dim=1), heads, width // heads)
            vo = _per_head_dims(v.weight.float().norm(dim=1) * out.weight.float().norm(dim=0), heads, width // heads)
            readers.update(zip(arch.qkv, (qk, qk, vo)))
            writers[arch.attention_output] = vo
            attention = block.get_submodule(arch.qkv[0].rsplit(".", 1)[0])
            attention.attention_head_size = width // heads
            attention.all_head_size = width
            attention.scaling = attention.attention_head_size ** -0.5
        for name, rows in readers.items():
            replace_module(block, name, _read(block.get_submodule(name), basis, rows))
        for name, cols in writers.items():
            replace_module(block, name, _write(block.get_submodule(name), basis, cols))
        handled.update(prefix + n for n in (*readers, *writers))
    for name in _norms(model):
        replace_module(model, name, _norm(model.get_submodule(name), basis))
        handled.add(name)
    embeddings = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    for name, embedding in embeddings:
        embedding.weight.data = embedding.weight.data.float() @ basis
        embedding.embedding_dim = width
        handled.add(name)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head_name = names[id(head)]
        if not any(head.weight is m.weight for _, m in embeddings):
            replace_module(model, head_name, _read(head, basis))
        else:
            head.in_features = width
        handled.add(head_name)
    pooler = getattr(model, "pooler", None)
    if pooler is not None and isinstance(getattr(pooler, "dense", None), nn.Linear):
        dense = pooler.dense
        pooler.dense = _linear(basis.T @ dense.weight.detach().float() @ basis,
                               dense.bias.detach().float() @ basis if dense.bias is not None else None)
        handled.add(names[id(pooler)] + ".dense")
    left = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in handled
            and hidden in (m.in_features, m.out_features)]
    if left:
        raise ValueError(f"student_hidden_size: the input has Linears of its hidden width this rewrite does not "
                         f"know ({', '.join(left[:4])}); narrow the MLP or the depth instead")
    if not arch.bert_like:
        model.config.head_dim = arch.head_dim  # fixed: Llama derives it from the hidden width otherwise
    model.config.hidden_size = width
