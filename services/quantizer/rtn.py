"""Round-to-nearest: each weight moved to its nearest grid point, no data needed.

The baseline every data-aware method (GPTQ, AWQ) must beat at the same grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import WeightScheme, compute_qparams, dequantize, quantize
from services.quantizer.targets import Target


def relative_error(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.float() - before.float()).norm() / before.float().norm().clamp(min=1e-12))


def round_weight(weight: torch.Tensor, scheme: WeightScheme, kind: str) -> tuple[QuantizedWeight, float]:
    params = compute_qparams(weight, scheme)
    codes = quantize(weight, params, scheme)
    return QuantizedWeight(scheme, params, codes, kind), relative_error(weight, dequantize(codes, params))


@torch.no_grad()
def quantize_rtn(weight_of: Callable[[Target], torch.Tensor], targets: list[Target],
                 on_layer: Callable[[int, int, str, float], None] = lambda *_: None,
                 by_parameter: dict[int, QuantizedWeight] | None = None) -> dict[str, QuantizedWeight]:
    """`weight_of(target)` supplies the float weight (from disk or from a loaded module).

    A head tied to the embedding reuses the embedding's codes (looked up by parameter in
    `by_parameter`, which callers may share across calls) instead of reading again.
    """
    done: dict[str, QuantizedWeight] = {}
    by_parameter = {} if by_parameter is None else by_parameter
    for i, target in enumerate(targets):
        shared = by_parameter.get(id(target.module.weight))
        if shared is not None:
            qw, error = shared, 0.0
        else:
            qw, error = round_weight(weight_of(target).float(), target.scheme, target.kind)
        done[target.name] = by_parameter[id(target.module.weight)] = qw
        on_layer(i + 1, len(targets), target.name, error)
    return done
