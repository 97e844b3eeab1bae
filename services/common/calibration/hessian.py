"""The inverse-Hessian factor GPTQ and SparseGPT both walk columns with."""

from __future__ import annotations

import torch


def inverse_cholesky(hessian: torch.Tensor, damping: float, attempts: int = 6) -> tuple[torch.Tensor, float] | None:
    """Upper Cholesky factor of (H + damping·mean(diag H)·I)⁻¹ and the damping that made it
    positive definite (raised tenfold per failed attempt); None when none did."""
    mean_diag = float(torch.diag(hessian).mean())
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype)
    for _ in range(attempts):
        try:
            lower = torch.linalg.cholesky(hessian + damping * mean_diag * eye)
            inverse = torch.cholesky_inverse(lower)
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
