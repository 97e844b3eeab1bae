"""GPTQ (Frantar et al., 2022): quantize a Linear's columns one by one, pushing each
column's rounding error onto the columns not yet quantized, weighted by the inverse
Hessian of the layer's inputs (H = 2XᵀX from calibration data).

Lazy batch updates apply the error to the rest of the matrix once per block of columns.
With activation ordering, columns are visited by decreasing Hessian diagonal, while the
group scales stay those of the stored (original) column order ("static groups"), so the
result is a plain grouped grid any compressed-tensors reader understands.
A Hessian that is not positive definite gets more damping, and failing that the layer
is rounded to nearest and reported, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from services.common.calibration.blocks import shared_input_groups, split_rows
from services.common.calibration.hessian import inverse_cholesky, relative_output_error
from services.quantizer.clipping import NO_CLIP, search_clipping
from services.quantizer.configs import GptqClipping
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import (
    QuantParams,
    WeightScheme,
    compute_qparams,
    dequantize,
    fake_quantize,
    quantize,
)
from services.quantizer.sequential import BlockStep, BlockWork


@dataclass
class GptqOutcome:
    weight: torch.Tensor  # fake-quantized, original column order
    params: QuantParams
    loss: float  # tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): relative output error on the calibration inputs
    damping: float
    fell_back_to_rtn: bool = False


def _quantize_column(column: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                     scheme: WeightScheme) -> torch.Tensor:
    codes = column / scale
    if zero_point is not None:
        codes = codes + zero_point
    codes = torch.round(codes).clamp_(scheme.qmin, scheme.qmax)
    if zero_point is not None:
        codes = codes - zero_point
    return codes * scale


# Share of exact zeros from which a weight is taken as pruned (dense float weights have none).
SPARSE_INPUT_SHARE = 0.1


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, scheme: WeightScheme, *, damping: float = 0.01,
                  block_size: int = 128, act_order: bool = True, clip: GptqClipping | None = None,
                  clipped_rows: torch.Tensor | None = None) -> GptqOutcome:
    """`clip` (with clip_search) shrinks each group's range first, by the output error of rounding it
    (clipping.search_clipping), for the rows `clipped_rows` marks (all when None)."""
    W = weight.detach().float().clone()
    rows, cols = W.shape
    width = scheme.group_width(cols)
    diagonal = torch.diagonal(hessian).float().clone()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    W[:, dead] = 0.0

    # Static scales: from the original weights, fixed before any column moves. Needed with
    # act_order (groups are visited out of order); per-channel grids are always static.
    static = act_order or width == cols

    def clipped_params(columns: torch.Tensor, first: int, grid: WeightScheme) -> QuantParams:
        if clip is None or not clip.clip_search:
            return compute_qparams(columns, grid)
        block = hessian.detach().float()[first:first + columns.shape[1], first:first + columns.shape[1]]
        ratio = search_clipping(columns, block, grid, clip.clip_grid, clip.max_shrink)
        if clipped_rows is not None:
            ratio = torch.where(clipped_rows[:, None], ratio, torch.ones_like(ratio))
        return compute_qparams(columns, grid, ratio)

    if static:
        params = clipped_params(W, 0, scheme)
    else:
        params = QuantParams(scale=torch.zeros(rows, cols // width),
                             zero_point=None if scheme.symmetric else torch.zeros(rows, cols // width))
    perm = torch.argsort(diagonal, descending=True) if act_order else torch.arange(cols)

    def permuted_hessian(into: torch.Tensor | None = None) -> torch.Tensor:
        # One permuted copy of the Hessian: the caller's stays as it was; inverse_cholesky factors this one.
        H = hessian.detach().float()[perm[:, None], perm]
        H.diagonal()[dead[perm]] = 1.0
        return H if into is None else into.copy_(H)

    W, H = W[:, perm], permuted_hessian()
    group_of = perm // width  # stored group of each visited column

    # A pruned input keeps its zeros (symmetric grids hold 0 exactly): GPTQ's updates would
    # otherwise spread rounding error into them and undo the sparsity.
    zeros = W == 0
    keep = ~zeros if scheme.symmetric and float(zeros.float().mean()) >= SPARSE_INPUT_SHARE else None

    factored = inverse_cholesky(H, damping, permuted_hessian)
    del H
    if factored is None:
        rtn_weight, rtn_params = fake_quantize(weight.detach().float(), scheme)
        return GptqOutcome(rtn_weight, rtn_params, relative_output_error(weight, rtn_weight, hessian), damping, True)
    Hinv, used_damping = factored

    # Dynamic groups must lie inside one lazy batch; static ones need no alignment (a
    # per-channel "group" is the whole row, and a block that wide would make the
    # in-block updates quadratic in the row length).
    block_size = block_size if static else max(width, (block_size // width) * width)
    Q = torch.zeros_like(W)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1 = W[:, start:end].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[start:end, start:end]
        for i in range(end - start):
            col = start + i
            group = int(group_of[col])
            if not static and col % width == 0:
                # Dynamic groups: scales from the weights as GPTQ has updated them so far.
                fresh = clipped_params(W1[:, i:i + width], col, WeightScheme(scheme.bits, 0, scheme.symmetric))
                params.scale[:, group] = fresh.scale[:, 0]
                if params.zero_point is not None:
                    params.zero_point[:, group] = fresh.zero_point[:, 0]
            zp = params.zero_point[:, group] if params.zero_point is not None else None
            q = _quantize_column(W1[:, i], params.scale[:, group], zp, scheme)
            if keep is not None:
                q = q * keep[:, col]
            Q1[:, i] = q
            err = (W1[:, i] - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        Q[:, start:end] = Q1
        W[:, end:] -= Err1 @ Hinv[start:end, end:]

    Q = Q[:, torch.argsort(perm)]
    # Snap to exactly what a reader reconstructs from the stored codes and scales.
    Q = dequantize(quantize(Q, params, scheme), params).to(weight.dtype)
    return GptqOutcome(Q, params, relative_output_error(weight, Q, hessian), used_damping)


# Rows of an LM head rounded at a time: GPTQ treats rows independently given H (and its static group
# scales are per row), so slices are exact and a 150k-token head's float copies stay a slice's.
HEAD_ROWS_PER_SLICE = 8192


# GPTQ's damping for an LM head: more than a block Linear's, because a tied table is also read row by
# row by the lookup, where each row's own error counts (damping weighs it in). SmolLM2's 4-bit tied
# table alone (bench/results/tied_table.json): +4.9 % ppl at 0.01, +3.2 % at 0.1, +3.5 % at 0.3, +4.6 % at 1;
# whole models at 4.26 bits (+compact4, AMD EPYC, 2026-12-07; quantization.json keeps the 0.1 rows): GPTQ
# +20.1 % -> +19.2 %, block QAT +11.2 % -> +11.5 %.
HEAD_DAMPING = 0.1


def gptq_head_rounding(damping: float = HEAD_DAMPING, block_size: int = 128, act_order: bool = True):
    """An LM head (or the embedding tied to it) rounded by GPTQ on its own inputs
    (sequential.HeadRounding): rounded to nearest, SmolLM2's tied 4-bit head costs most of the
    model's INT4 loss (bench/results/tied_table.json)."""
    def rounding(weight: torch.Tensor, hessian: torch.Tensor, scheme: WeightScheme, kind: str
                 ) -> tuple[QuantizedWeight, dict]:
        codes, scales, zero_points, losses, dampings, fell_back = [], [], [], [], [], False
        for start in range(0, weight.shape[0], HEAD_ROWS_PER_SLICE):
            rows = weight[start:start + HEAD_ROWS_PER_SLICE]
            outcome = gptq_quantize(rows, hessian, scheme, damping=damping, block_size=block_size,
                                    act_order=act_order)
            codes.append(quantize(outcome.weight, outcome.params, scheme))
            scales.append(outcome.params.scale)
            zero_points.append(outcome.params.zero_point)
            losses.append(outcome.loss * rows.shape[0])
            dampings.append(outcome.damping)
            fell_back |= outcome.fell_back_to_rtn
        params = QuantParams(torch.cat(scales), None if zero_points[0] is None else torch.cat(zero_points))
        return QuantizedWeight(scheme, params, torch.cat(codes), kind), \
            {"method": "gptq", "loss": sum(losses) / weight.shape[0], "damping": max(dampings),
             "fell_back_to_rtn": fell_back}
    return rounding


def gptq_block_step(damping: float, block_size: int, act_order: bool,
                    hessian_of: Callable[[BlockWork, str], torch.Tensor] | None = None,
                    clip: GptqClipping | None = None) -> BlockStep:
    """GPTQ over one block. Layers reading the same input (q/k/v, gate/up) share H; GPTQ
    treats rows independently given H, so stacking their rows is exact and runs the column
    loop once. `hessian_of` lets a caller supply H in a transformed basis (SmoothQuant); `clip`
    searches each group's clipping first (never a query's or key's, as AWQ)."""
    def step(work: BlockWork) -> Iterator[tuple[str, QuantizedWeight, dict]]:
        hessians = {n: (hessian_of(work, n) if hessian_of else work.stats[n].hessian) for n in work.layers}
        for names in shared_input_groups(hessians, {n: work.targets[n].scheme for n in work.layers}):
            modules = [(n, work.layers[n]) for n in names]
            scheme = work.targets[names[0]].scheme
            stacked = torch.cat([m.weight for _, m in modules], dim=0)
            clipped_rows = torch.cat([torch.full((m.weight.shape[0],), not n.endswith(NO_CLIP)) for n, m in modules])
            outcome = gptq_quantize(stacked, hessians[names[0]], scheme, damping=damping, block_size=block_size,
                                    act_order=act_order, clip=clip, clipped_rows=clipped_rows)
            codes = quantize(outcome.weight, outcome.params, scheme)
            # Done with this input's Hessian: the widest (down_proj's) is factored without the others beside it.
            for name in names:
                hessians.pop(name)
                work.stats.pop(name, None)
            for name, rows in split_rows(modules):
                # Own copies: row slices would keep the whole stacked tensor alive (and share storage).
                work.layers[name].weight.data = outcome.weight[rows].clone()
                yield name, QuantizedWeight(scheme, outcome.params.rows(rows.start, rows.stop).clone(),
                                            codes[rows].clone()), \
                    {"method": "gptq", "loss": outcome.loss, "damping": outcome.damping,
                     "fell_back_to_rtn": outcome.fell_back_to_rtn}
    return step
