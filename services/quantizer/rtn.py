"""Round-to-nearest: each weight moved to its nearest grid point, no data needed.

The baseline every data-aware method (GPTQ, AWQ) must beat at the same grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import fake_quantize
from services.quantizer.targets import Target


def relative_error(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.float() - before.float()).norm() / before.float().norm().clamp(min=1e-12))


@torch.no_grad()
def quantize_rtn(model: nn.Module, targets: list[Target],
                 on_layer: Callable[[int, int, str, float], None] = lambda *_: None) -> dict[str, QuantizedWeight]:
    done: dict[str, QuantizedWeight] = {}
    shared: dict[int, QuantizedWeight] = {}  # a tied head reuses its embedding's grid
    for i, target in enumerate(targets):
        weight = target.module.weight
        prior = shared.get(weight.data_ptr())
        quantized, params = fake_quantize(weight.data, target.scheme, prior.params if prior else None)
        error = relative_error(weight.data, quantized)
        weight.data.copy_(quantized)
        done[target.name] = shared[weight.data_ptr()] = QuantizedWeight(target.scheme, params)
        on_layer(i + 1, len(targets), target.name, error)
    return done
