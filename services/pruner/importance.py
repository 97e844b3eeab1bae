"""How much each structural unit matters: MLP neurons and attention-head units per block, and whole
blocks, from one calibration pass over the full model.

- magnitude: the norms of the unit's weights (input rows × output columns), no data;
- activation: the RMS of the unit's activation entering the output projection × that projection's
  column norms (Wanda's |W|·‖X‖ summed over a unit);
- taylor / fisher: per calibration window s = Σ g·w over the unit's weights (the first-order change
  of the loss if the unit were removed); taylor = |Σ s|, fisher = Σ s² (the empirical Fisher of a
  mask on the unit). They need a loss: the causal LM's next-token loss on calibration text.
- blocks: cosine = 1 − mean cos(block input, block output) per token (ShortGPT's block influence), or
  the Taylor / Fisher score of all the block's weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from services.common.calibration.blocks import decoder_blocks
from services.common.models.architecture import Architecture

GRADIENT_KINDS = ("taylor", "fisher")


@dataclass
class UnitScores:
    mlp: list[torch.Tensor] = field(default_factory=list)  # per block: [intermediate]
    heads: list[torch.Tensor] = field(default_factory=list)  # per block: [head units]
    blocks: torch.Tensor | None = None  # [blocks]


def _unit_sums(arch: Architecture, block: nn.Module, head_unit: str, values: Callable[[nn.Linear], torch.Tensor],
               columns: Callable[[nn.Linear], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-neuron and per-head-unit sums of a per-element quantity: `values` of the unit's input-side
    rows, `columns` of its output projection's columns."""
    mlp = sum(values(block.get_submodule(n)).sum(1) for n in arch.mlp.inputs) + \
        columns(block.get_submodule(arch.mlp.output)).sum(0)
    if arch.attention is None:
        return mlp, None
    a, d = arch.attention, arch.head_dim
    q = values(block.get_submodule(a.q)).sum(1).view(arch.heads, d).sum(1)
    kv = (values(block.get_submodule(a.k)).sum(1) + values(block.get_submodule(a.v)).sum(1)).view(arch.kv_heads, d).sum(1)
    q = q + columns(block.get_submodule(a.o)).sum(0).view(arch.heads, d).sum(1)
    return mlp, _group_heads(arch, q, kv, head_unit)


def _group_heads(arch: Architecture, q: torch.Tensor, kv: torch.Tensor, head_unit: str) -> torch.Tensor:
    per_group = arch.heads // arch.kv_heads
    grouped = q.view(arch.kv_heads, per_group)
    if head_unit == "kv-group":
        return grouped.sum(1) + kv
    return grouped.sum(0)  # query position p within every group is removed together


def _norm_scores(arch: Architecture, block: nn.Module, head_unit: str, rms_mlp: torch.Tensor | None,
                 rms_heads: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """magnitude (rms None) or activation-aware scores."""
    down = block.get_submodule(arch.mlp.output).weight.detach().float()
    rows = sum(block.get_submodule(n).weight.detach().float().norm(dim=1) for n in arch.mlp.inputs)
    mlp = down.norm(dim=0) * (rms_mlp if rms_mlp is not None else rows)
    if arch.attention is None:
        return mlp, None
    a, d = arch.attention, arch.head_dim
    o = block.get_submodule(a.o).weight.detach().float()
    if rms_heads is not None:
        per_column = o.norm(dim=0) * rms_heads
    else:
        per_column = o.norm(dim=0) * block.get_submodule(a.q).weight.detach().float().norm(dim=1)
    q = per_column.view(arch.heads, d).sum(1)
    return mlp, _group_heads(arch, q, torch.zeros(arch.kv_heads), head_unit)


def _mean_square_hook(store: dict, key: int):
    def hook(_module, args, _output):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        total, rows = store.get(key, (torch.zeros(x.shape[1]), 0))
        store[key] = (total + (x * x).sum(0), rows + x.shape[0])
    return hook


def _cosine_hook(store: list, key: int):
    def hook(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        cos = nn.functional.cosine_similarity(hidden.detach().float(), out.detach().float(), dim=-1)
        store[key][0] += float(cos.sum())
        store[key][1] += cos.numel()
    return hook


def score_units(model: nn.Module, batches: torch.Tensor, importance: str, layer_importance: str, head_unit: str,
                *, want_heads: bool, check_cancelled: Callable[[], None] = lambda: None,
                on_window: Callable[[int, int], None] = lambda i, n: None) -> UnitScores:
    arch = Architecture(model)
    blocks = decoder_blocks(model)
    gradients = importance in GRADIENT_KINDS or layer_importance in GRADIENT_KINDS
    if gradients and not type(model).__name__.endswith("ForCausalLM"):
        raise ValueError(f"importance: {importance if importance in GRADIENT_KINDS else layer_importance} needs a "
                         "training loss, which an encoder without a task head lacks here; use 'activation' or "
                         "'magnitude' (and layer_importance 'cosine')")
    want_heads = want_heads and arch.attention is not None
    mlp_sq: dict = {}
    head_sq: dict = {}
    cosines = [[0.0, 0] for _ in blocks]
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.get_submodule(arch.mlp.output).register_forward_hook(_mean_square_hook(mlp_sq, i)))
        if want_heads:
            handles.append(block.get_submodule(arch.attention.o).register_forward_hook(_mean_square_hook(head_sq, i)))
        handles.append(block.register_forward_hook(_cosine_hook(cosines, i), with_kwargs=True))
    taylor = [None] * len(blocks)
    fisher = [None] * len(blocks)
    block_taylor = torch.zeros(len(blocks))
    block_fisher = torch.zeros(len(blocks))
    extra = {"use_cache": False} if type(model).__name__.endswith("ForCausalLM") else {}
    try:
        for w, window in enumerate(batches):
            check_cancelled()
            ids = window.unsqueeze(0)
            if not gradients:
                with torch.no_grad():
                    model(input_ids=ids, **extra)
            else:
                model.zero_grad(set_to_none=True)
                model(input_ids=ids, labels=ids, **extra).loss.backward()
                for i, block in enumerate(blocks):
                    gw = lambda m: (m.weight.grad * m.weight).detach().float()  # noqa: E731
                    mlp, heads = _unit_sums(arch, block, head_unit, gw, gw)
                    s_block = sum(float((p.grad * p.detach()).sum()) for p in block.parameters() if p.grad is not None)
                    taylor[i] = (mlp, heads) if taylor[i] is None else (taylor[i][0] + mlp, _add(taylor[i][1], heads))
                    fisher[i] = (mlp ** 2, _sq(heads)) if fisher[i] is None else (
                        fisher[i][0] + mlp ** 2, _add(fisher[i][1], _sq(heads)))
                    block_taylor[i] += s_block
                    block_fisher[i] += s_block ** 2
            on_window(w + 1, len(batches))
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    scores = UnitScores()
    for i, block in enumerate(blocks):
        if importance in GRADIENT_KINDS:
            mlp, heads = taylor[i] if importance == "taylor" else fisher[i]
            mlp, heads = (mlp.abs(), heads.abs() if heads is not None else None)
        else:
            rms_mlp = rms_heads = None
            if importance == "activation":
                total, rows = mlp_sq[i]
                rms_mlp = (total / rows).sqrt()
                if want_heads:
                    total, rows = head_sq[i]
                    rms_heads = (total / rows).sqrt()
            mlp, heads = _norm_scores(arch, block, head_unit, rms_mlp, rms_heads)
        scores.mlp.append(mlp)
        scores.heads.append(heads if want_heads else None)
    if layer_importance == "cosine":
        scores.blocks = torch.tensor([1.0 - total / count for total, count in cosines])
    else:
        scores.blocks = block_taylor.abs() if layer_importance == "taylor" else block_fisher
    return scores


def _add(a, b):
    return None if a is None or b is None else a + b


def _sq(a):
    return None if a is None else a ** 2
