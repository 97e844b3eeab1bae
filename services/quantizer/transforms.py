"""Activation-aware transforms that leave the model in float for an engine's own quantizer.

AWQ's scales and SmoothQuant's migration are exact rewrites of the float function (see
smoothing.py); their value is in what a later rounding loses. Here the searches score
candidates on the grid of the engine that will round (ONNX Runtime's MatMulNBits, GGUF's
Q4_1, NNCF's INT4 or ONNX Runtime's dynamic INT8 activations), fold the scales, and the
block's weights are written back in float: AWQ's clipping becomes a clamp of each group to
the searched range, which the engine's min/max quantizer then spans.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from services.common.calibration.sequential import BlockStep, BlockWork
from services.quantizer import activations as acts
from services.quantizer.awq import awq_prepare
from services.quantizer.configs import AwqTransformConfig, SmoothQuantTransformConfig
from services.quantizer.qscheme import QuantParams, WeightScheme, dequantize, quantize
from services.quantizer.smoothquant import smooth_block

ACTIVATION_SCHEMES = {
    "dynamic-per-tensor": acts.ActivationScheme(dynamic=True, per_tensor=True),
    "dynamic-per-token": acts.ActivationScheme(dynamic=True),
    "static": acts.ActivationScheme(dynamic=False),
}


def grid_range(params: QuantParams, scheme: WeightScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, group) the float interval the grid spans: [lo, hi], shaped [out, groups]."""
    if params.zero_point is None:
        hi = params.scale * scheme.qmax
        return -hi, hi
    return (scheme.qmin - params.zero_point) * params.scale, (scheme.qmax - params.zero_point) * params.scale


def clamp_to_grid(weight: torch.Tensor, params: QuantParams, scheme: WeightScheme) -> tuple[torch.Tensor, float]:
    """The weight with each group clamped to its grid's range, and the share of weights clamped."""
    lo, hi = grid_range(params, scheme)
    out, inp = weight.shape
    groups = weight.reshape(out, lo.shape[1], -1)
    clamped = torch.maximum(torch.minimum(groups, hi[..., None]), lo[..., None])
    share = float((clamped != groups).float().mean())
    return clamped.reshape(out, inp), share


def awq_transform_step(config: AwqTransformConfig) -> BlockStep:
    def step(work: BlockWork) -> Iterator[tuple[str, torch.Tensor, dict]]:
        prepared = awq_prepare(work, config)  # scales folded into the block, clipping searched
        for name, module in work.layers.items():
            layer = prepared[name]
            weight = module.weight.detach().float()
            scheme = work.targets[name].scheme
            if config.clip_search:
                weight, share = clamp_to_grid(weight, layer.params, scheme)
            else:
                share = 0.0
            # The next block sees this one as the engine will compute it (rounded on the grid), as
            # the quantizer's AWQ does; the float weight is what is written.
            module.weight.data = dequantize(quantize(weight, layer.params, scheme), layer.params) \
                if config.propagate_rounded else weight
            yield name, weight, {"method": "awq-transform", "clamped_share": share, **layer.figures}

    return step


def smoothquant_transform_step(config: SmoothQuantTransformConfig) -> BlockStep:
    scheme = ACTIVATION_SCHEMES[config.activations]

    def step(work: BlockWork) -> Iterator[tuple[str, torch.Tensor, dict]]:
        _, chosen = smooth_block(work, config, scheme)
        for name, module in work.layers.items():
            yield name, module.weight.detach().clone(), {"method": "smoothquant-transform",
                                                         **chosen.get(name, {"alpha": None})}

    return step
