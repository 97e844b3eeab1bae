"""W8A8: INT8 weights per output channel and INT8 activations, optionally after SmoothQuant
(Xiao et al., 2023).

SmoothQuant divides each input channel of a Linear by s_j = max|X_j|^α / max|W_j|^(1-α)
and multiplies the weight's column by it (folded into the producing norm or Linear, see
smoothing.py), so activation outliers move into the weights, which quantize per channel.
α is searched per layer group on a sample of that group's real inputs: the α (or no
smoothing at all) whose W8A8 output is closest to the float output wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from services.common.calibration.streaming import ExpertLinear
from services.quantizer import activations as acts
from services.quantizer.configs import W8A8Config
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.gptq import gptq_block_step
from services.quantizer.qscheme import WeightScheme, dequantize, fake_quantize
from services.quantizer.rtn import quantize_rtn
from services.quantizer.sequential import BlockStep, BlockWork
from services.quantizer.smoothing import fold, smoothing_groups

ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))
INT8_CHANNEL = WeightScheme(8, 0, True)


def smoothquant_scales(x_abs_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    w_abs_max = weight.abs().amax(dim=0).clamp(min=1e-5)
    scales = x_abs_max.clamp(min=1e-5).pow(alpha) / w_abs_max.pow(1 - alpha)
    # A channel no calibration token used carries no information: leave it alone.
    return torch.where(x_abs_max > 0, scales.clamp(min=1e-5), torch.ones_like(scales))


def w8a8_error(sample: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, scheme: acts.ActivationScheme
               ) -> float:
    """Relative output error of W8A8 on `sample` rows after smoothing by `scales`."""
    reference = sample @ weight.T
    smoothed_x = sample / scales
    input_scale = None if scheme.dynamic else acts.static_scale(smoothed_x.abs().amax(dim=0))
    x = acts.fake_quantize_activations(smoothed_x, scheme, input_scale)
    w, _ = fake_quantize(weight * scales, INT8_CHANNEL)
    return float((x @ w.T - reference).pow(2).sum() / reference.pow(2).sum().clamp(min=1e-12))


def choose_scales(sample: torch.Tensor, x_abs_max: torch.Tensor, weight: torch.Tensor, config: W8A8Config,
                  scheme: acts.ActivationScheme) -> tuple[torch.Tensor, float | None, float]:
    """(scales, α or None for no smoothing, the sample's relative error)."""
    if not config.alpha_search:
        scales = smoothquant_scales(x_abs_max, weight, config.alpha)
        return scales, config.alpha, w8a8_error(sample, weight, scales, scheme)
    best = (torch.ones_like(x_abs_max), None, w8a8_error(sample, weight, torch.ones_like(x_abs_max), scheme))
    for alpha in ALPHA_GRID:
        scales = smoothquant_scales(x_abs_max, weight, alpha)
        error = w8a8_error(sample, weight, scales, scheme)
        if error < best[2]:
            best = (scales, alpha, error)
    return best


def smooth_block(work: BlockWork, config, scheme: acts.ActivationScheme
                 ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Chooses and folds SmoothQuant scales for every smoothing group of the block; returns each
    smoothed layer's scales and its figures (alpha, sample error). `config` carries alpha/alpha_search."""
    smoothed: dict[str, torch.Tensor] = {}
    chosen: dict[str, dict] = {}
    for group in smoothing_groups(work.block, work.norm_readers):
        names = [f"{work.name}.{c}" for c in group.consumers]
        if not all(n in work.layers for n in names):
            continue
        stats = work.stats[names[0]]
        weight = torch.cat([work.layers[n].weight for n in names], dim=0)
        scales, alpha, error = choose_scales(stats.sample_rows(), stats.abs_max, weight, config, scheme)
        if alpha is None:
            continue
        fold(work.block.get_submodule(group.producer), [work.layers[n] for n in names], scales)
        for n in names:
            smoothed[n] = scales
            chosen[n] = {"alpha": alpha, "sample_error": error}
    return smoothed, chosen


def w8a8_block_step(config: W8A8Config) -> BlockStep:
    scheme = acts.ActivationScheme(dynamic=config.activations == "dynamic")

    def step(work: BlockWork) -> Iterator[tuple[str, QuantizedWeight, dict]]:
        smoothed, chosen = smooth_block(work, config, scheme) if config.smoothing else ({}, {})

        def hessian_of(w: BlockWork, name: str) -> torch.Tensor:
            h = w.stats[name].hessian
            s = smoothed.get(name)
            return h if s is None else h / torch.outer(s, s)

        # A routed expert's weights reload only as packed weight-only codes (transformers dequantizes
        # them into its fused expert tensors; it has no INT8-activation path for them): INT8 weights,
        # float inputs (families.Experts.reload).
        routed = {n for n, m in work.layers.items() if isinstance(m, ExpertLinear)}
        input_scales: dict[str, torch.Tensor] = {}
        if not scheme.dynamic:
            for name in set(work.layers) - routed:
                x_max = work.stats[name].abs_max
                input_scales[name] = acts.static_scale(x_max / smoothed[name] if name in smoothed else x_max)
        if config.weight_algorithm == "gptq":
            weights = gptq_block_step(config.damping, config.lazy_batch_columns, config.act_order, hessian_of)(work)
        else:
            weights = _rtn_in_place(work)
        for name, qw, figures in weights:
            if name in routed:
                yield name, qw, {**figures, "activations": "float (routed expert)", **chosen.get(name, {})}
                continue
            yield name, dataclasses.replace(qw, activations=scheme, input_scale=input_scales.get(name)), \
                {**figures, "activations": config.activations, **chosen.get(name, {})}
        work.propagation_hooks.extend(acts.install({n: m for n, m in work.layers.items() if n not in routed},
                                                   scheme, input_scales))

    return step


def _rtn_in_place(work: BlockWork) -> Iterator[tuple[str, QuantizedWeight, dict]]:
    targets = list(work.targets.values())
    for name, qw in quantize_rtn(lambda t: t.module.weight.data, targets).items():
        work.layers[name].weight.data = dequantize(qw.codes, qw.params)
        yield name, qw, {"method": "rtn"}
