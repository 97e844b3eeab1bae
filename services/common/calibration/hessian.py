"""The inverse-Hessian factor GPTQ and SparseGPT both walk columns with."""

from __future__ import annotations

import torch


def inverse_cholesky(hessian: torch.Tensor, damping: float, attempts: int = 6) -> tuple[torch.Tensor, float] | None:
    """Upper Cholesky factor of (H + damping·mean(diag H)·I)⁻¹ and the damping that made it
    positive definite (raised tenfold per failed attempt); None when none did.

    The damping is added to `hessian`'s diagonal in place (callers pass their own copy): an input
    Hessian is as large as the widest Linear's input squared (822 MB in FP32 for an 8 B model's
    down projection), so neither an identity nor a damped copy is made beside it."""
    mean_diag = float(torch.diagonal(hessian).mean())
    diagonal = torch.diagonal(hessian)
    added = 0.0
    for _ in range(attempts):
        diagonal.add_(damping * mean_diag - added)
        added = damping * mean_diag
        try:
            lower = torch.linalg.cholesky(hessian)
            inverse = torch.cholesky_inverse(lower)
            del lower
            return torch.linalg.cholesky(inverse, upper=True), damping
        except torch.linalg.LinAlgError:
            damping *= 10
    return None


def relative_output_error(before: torch.Tensor, after: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): the layer's output error on its calibration inputs, relative."""
    delta = (after - before).float()
    w = before.float()
    hessian = hessian.float()
    denominator = float(torch.einsum("ij,jk,ik->", w, hessian, w))
    return float(torch.einsum("ij,jk,ik->", delta, hessian, delta)) / denominator if denominator > 0 else 0.0
