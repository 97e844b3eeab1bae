"""Round-to-nearest: each weight moved to its nearest grid point, no data needed.

The baseline every data-aware method (GPTQ, AWQ) must beat at the same grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import QuantParams, WeightScheme, compute_qparams, dequantize, quantize
from services.quantizer.targets import Target


def relative_error(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.float() - before.float()).norm() / before.float().norm().clamp(min=1e-12))


def round_weight(weight: torch.Tensor, scheme: WeightScheme, kind: str, rows_per_chunk: int = 4096
                 ) -> tuple[QuantizedWeight, float]:
    """Rows are independent (groups never cross a row), so a large matrix such as a 49k-row
    embedding is rounded a slice at a time and its float temporaries stay small."""
    scales, zero_points, codes = [], [], []
    error_sq = norm_sq = 0.0
    for start in range(0, weight.shape[0], rows_per_chunk):
        rows = weight[start:start + rows_per_chunk].float()
        params = compute_qparams(rows, scheme)
        chunk_codes = quantize(rows, params, scheme)
        error_sq += float((dequantize(chunk_codes, params) - rows).pow(2).sum())
        norm_sq += float(rows.pow(2).sum())
        scales.append(params.scale)
        zero_points.append(params.zero_point)
        codes.append(chunk_codes)
    params = QuantParams(torch.cat(scales), None if zero_points[0] is None else torch.cat(zero_points))
    error = (error_sq / max(norm_sq, 1e-24)) ** 0.5
    return QuantizedWeight(scheme, params, torch.cat(codes), kind), error


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
            qw, error = round_weight(weight_of(target), target.scheme, target.kind)
        done[target.name] = by_parameter[id(target.module.weight)] = qw
        on_layer(i + 1, len(targets), target.name, error)
    return done
