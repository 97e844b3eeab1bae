"""SparseGPT (Frantar & Alistarh, 2023): choose a layer's mask block by block from the OBS saliency
w²/[H⁻¹]²_jj and push each pruned weight's error onto the columns not yet visited, through the
inverse Hessian of the layer's inputs (the H GPTQ collects).

Unstructured masks are chosen per block of columns over the whole block (so every block is pruned
to exactly floor(rows·block·sparsity)); N:M masks per group of M columns of a row, each chosen
when the walk reaches it.
A Hessian that is not positive definite gets more damping; failing that the layer falls back to
Wanda's mask without an update, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.common.calibration.hessian import inverse_cholesky
from services.pruner.masks import layer_mask, nm_mask, row_mask, wanda_scores


@dataclass
class SparseGptOutcome:
    weight: torch.Tensor  # pruned and updated, zeros where the mask drops
    damping: float
    fell_back: bool = False


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *,
                    nm: tuple[int, int] | None = None, block_size: int = 128,
                    damping: float = 0.01) -> SparseGptOutcome:
    W = weight.detach().float().clone()
    _, cols = W.shape
    dead = torch.diag(hessian) == 0

    def own_hessian(into: torch.Tensor | None = None) -> torch.Tensor:
        # The caller's Hessian stays as it was; inverse_cholesky factors this copy.
        H = hessian.detach().float().clone() if into is None else into.copy_(hessian)
        H[dead, dead] = 1.0
        return H

    H = own_hessian()
    W[:, dead] = 0.0
    factored = inverse_cholesky(H, damping, own_hessian)
    del H
    if factored is None:
        scores = wanda_scores(weight, hessian)
        mask = nm_mask(scores, *nm) if nm else row_mask(scores, sparsity)
        return SparseGptOutcome(weight.detach().float() * mask, damping, fell_back=True)
    Hinv, used = factored
    if nm:
        block_size = max(block_size - block_size % nm[1], nm[1])
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        count = end - start
        W1 = W[:, start:end].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[start:end, start:end]
        diag = torch.diag(Hinv1).reshape(1, -1)
        keep = torch.ones_like(W1, dtype=torch.bool) if nm else layer_mask(W1 ** 2 / diag ** 2, sparsity)
        for i in range(count):
            if nm and i % nm[1] == 0:
                # N:M groups are chosen on the weights as updated so far, group by group.
                group = slice(i, i + nm[1])
                keep[:, group] = nm_mask(W1[:, group] ** 2 / diag[:, group] ** 2, *nm)
            w = W1[:, i]
            d = Hinv1[i, i]
            q = w * keep[:, i]
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, start:end] = Q1
        W[:, end:] -= Err1 @ Hinv[start:end, end:]
    return SparseGptOutcome(W, used)
