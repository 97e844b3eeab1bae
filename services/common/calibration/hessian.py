"""Hessians of a Linear's inputs, and the inverse-Hessian factor GPTQ and SparseGPT both walk columns with."""

from __future__ import annotations

from collections.abc import Callable

import torch


def inverse_cholesky(hessian: torch.Tensor, damping: float, refill: Callable[[torch.Tensor], object], *,
                     attempts: int = 6) -> tuple[torch.Tensor, float] | None:
    """Upper Cholesky factor of (H + damping·mean(diag H)·I)⁻¹ and the damping that made it
    positive definite (raised tenfold per failed attempt); None when none did.

    Factored in place: the returned factor is `hessian`'s own storage (callers pass their own
    copy), and a failed attempt has `refill` write H into it again. An input Hessian is as large as
    the widest Linear's input squared (822 MB in FP32 for an 8 B model's down projection): a
    factor, an inverse and a damped copy beside it would hold it four times over."""
    mean_diag = float(torch.diagonal(hessian).mean())
    info = torch.empty((), dtype=torch.int32)
    for attempt in range(attempts):
        if attempt:
            refill(hessian)
        torch.diagonal(hessian).add_(damping * mean_diag)
        torch.linalg.cholesky_ex(hessian, out=(hessian, info))
        if int(info) == 0:
            torch.cholesky_inverse(hessian, out=hessian)
            torch.linalg.cholesky_ex(hessian, upper=True, out=(hessian, info))
            if int(info) == 0:
                return hessian, damping
        damping *= 10
    return None


def relative_output_error(before: torch.Tensor, after: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): the layer's output error on its calibration inputs, relative."""
    delta = (after - before).float()
    w = before.float()
    hessian = hessian.float()
    denominator = float(torch.einsum("ij,jk,ik->", w, hessian, w))
    return float(torch.einsum("ij,jk,ik->", delta, hessian, delta)) / denominator if denominator > 0 else 0.0


def inputs_hessian(inputs) -> torch.Tensor:
    """H = 2/n · Σ xᵀx over the rows of the given activation tensors (each [..., features]): what a
    Linear reading them is rounded against (blocks.InputStatsCollector gathers the same from hooks)."""
    hessian, rows = None, 0
    for tensor in inputs:
        x = tensor.reshape(-1, tensor.shape[-1]).float()
        hessian = 2.0 * x.T @ x if hessian is None else hessian.addmm_(x.T, x, alpha=2.0)
        rows += x.shape[0]
    if hessian is None:
        raise ValueError("no inputs to compute a Hessian from")
    return hessian / rows
