"""Temperature control: constant, annealed linearly over the run, or adaptive, where each batch
gets the temperature at which the teacher's mean entropy over its cached top-k is a set share of
the largest possible (ln k): peaked teachers are softened more, flat ones less."""

from __future__ import annotations

import math

import torch

LOWEST, HIGHEST = 0.5, 20.0


def annealed(start: float, end: float, progress: float) -> float:
    return start + (end - start) * min(1.0, max(0.0, progress))


def mean_entropy(logits: torch.Tensor, temperature: float) -> float:
    log_p = (logits.float() / temperature).log_softmax(-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())


def adaptive(logits: torch.Tensor, target_share: float, iterations: int = 20) -> float:
    """Bisection on T in [LOWEST, HIGHEST] (the entropy grows with T) over [..., classes] logits."""
    target = target_share * math.log(logits.shape[-1])
    low, high = LOWEST, HIGHEST
    if mean_entropy(logits, high) <= target:
        return high
    if mean_entropy(logits, low) >= target:
        return low
    for _ in range(iterations):
        mid = (low + high) / 2
        if mean_entropy(logits, mid) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2
