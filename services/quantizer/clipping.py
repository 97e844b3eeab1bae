"""How far to clip each group's range before rounding: the search AWQ and GPTQ share.

A group's largest weight sets its scale; shrinking the range rounds that weight worse but every
other weight of the group on a finer grid. Each (row, group) keeps the ratio of its range whose
rounding moves the layer's outputs least on the calibration inputs, from the group's block of the
inputs' Hessian (cross-group terms ignored, as AWQ does).
"""

from __future__ import annotations

import torch

from services.quantizer.qscheme import WeightScheme, compute_qparams, dequantize, quantize

# Query and key errors are reshaped by softmax; clipping them by output error misleads
# (the AWQ authors skip them too).
NO_CLIP = ("q_proj", "k_proj", "query", "key")


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """tr(Δ H Δᵀ): squared output error summed over calibration rows (up to the factor 2/n)."""
    return ((delta @ hessian) * delta).sum()


def fake_clipped(weight: torch.Tensor, scheme: WeightScheme, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    params = compute_qparams(weight, scheme, clip)
    return dequantize(quantize(weight, params, scheme), params)


def search_clipping(weight: torch.Tensor, hessian: torch.Tensor, scheme: WeightScheme, grid: int,
                    max_shrink: float) -> torch.Tensor:
    """Per (row, group) ratio of the range to keep (1 down to 1 − max_shrink on `grid` steps),
    minimising that group's output error."""
    rows, cols = weight.shape
    width = scheme.group_width(cols)
    groups = cols // width
    blocks = torch.stack([hessian[g * width:(g + 1) * width, g * width:(g + 1) * width] for g in range(groups)])
    best_error = torch.full((rows, groups), float("inf"))
    best_ratio = torch.ones(rows, groups)
    for step in range(grid):
        ratio = 1.0 - max_shrink * step / grid
        delta = (fake_clipped(weight, scheme, ratio) - weight).reshape(rows, groups, width)
        error = torch.einsum("rgi,gij,rgj->rg", delta, blocks, delta)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio
