"""Which weights to zero: per-weight scores (magnitude, Wanda) turned into masks with an exact
count per row (unstructured) or per group of M inputs (N:M), and OWL's per-block sparsities.

A mask is a bool tensor shaped like the weight, True where the weight is kept.
"""

from __future__ import annotations

import torch


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs()


def wanda_scores(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """|W_ij|·‖X_j‖ (Sun et al., 2023): H = 2/n·ΣxᵀX, so ‖X_j‖ ∝ sqrt(H_jj)."""
    return weight.detach().float().abs() * torch.diag(hessian).clamp(min=0).sqrt().unsqueeze(0)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keeps the highest scores of every row; exactly floor(columns · sparsity) pruned per row."""
    pruned = int(scores.shape[1] * sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if pruned:
        lowest = scores.topk(pruned, dim=1, largest=False).indices
        mask.scatter_(1, lowest, False)
    return mask


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keeps the highest scores of the whole matrix; exactly floor(numel · sparsity) pruned."""
    pruned = int(scores.numel() * sparsity)
    mask = torch.ones(scores.numel(), dtype=torch.bool)
    if pruned:
        mask[scores.flatten().topk(pruned, largest=False).indices] = False
    return mask.view_as(scores)


def nm_mask(scores: torch.Tensor, kept: int, group: int) -> torch.Tensor:
    """N:M: in every `group` consecutive inputs of a row, the `kept` highest scores stay."""
    rows, cols = scores.shape
    if cols % group:
        raise ValueError(f"{cols} inputs are not a multiple of {group}")
    grouped = scores.reshape(rows, cols // group, group)
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(2, grouped.topk(kept, dim=2).indices, True)
    return mask.view(rows, cols)


def global_threshold(magnitudes: list[torch.Tensor], sparsity: float) -> float:
    """The |w| below which `sparsity` of all the given weights lie (one threshold for every layer)."""
    flat = torch.cat([m.flatten() for m in magnitudes])
    pruned = int(flat.numel() * sparsity)
    return float(flat.kthvalue(pruned).values) if pruned else float("-inf")


def outlier_ratio(scores: torch.Tensor, threshold: float) -> float:
    """OWL's layerwise outlier distribution: the share of scores above `threshold` × their mean."""
    return float((scores > threshold * scores.mean()).float().mean())


def owl_sparsities(ratios: list[float], sparsity: float, spread: float) -> list[float]:
    """Per-block sparsities (Yin et al., 2024): outlier ratios mapped onto [-spread, +spread] around
    the target, blocks with more outliers pruned less; the mean stays `sparsity`."""
    low, high = min(ratios), max(ratios)
    if high - low < 1e-12:
        return [sparsity] * len(ratios)
    density = [(r - low) / (high - low) * 2 * spread for r in ratios]
    mean = sum(density) / len(density)
    return [min(max(sparsity - (d - mean), 0.0), 0.99) for d in density]
