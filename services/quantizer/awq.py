"""AWQ (Lin et al., 2024): activation-aware weight quantization.

Per smoothing group (a producer and the Linears it feeds, see smoothing.py), input
channels that carry large activations get their weight columns scaled up before
rounding (s = mean|x|^r / mean|ŵ|^(1-r), r searched on a grid), so their relative
rounding error shrinks; the producer is divided by s, leaving the float function
unchanged. Then each group of weights gets its own clipping ratio of the range,
searched per (row, group). Both searches score candidates by the error of the layer's
outputs on the calibration inputs, tr(ΔW H ΔWᵀ) with H = 2XᵀX — exact for the Linear's
output and free of any stored activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from services.quantizer.clipping import NO_CLIP, fake_clipped, output_error, search_clipping
from services.quantizer.configs import AwqConfig
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import QuantParams, WeightScheme, compute_qparams, dequantize, quantize
from services.quantizer.sequential import BlockStep, BlockWork
from services.quantizer.smoothing import fold, normalise, smoothing_groups


def search_scales(weight: torch.Tensor, x_abs_mean: torch.Tensor, scheme: WeightScheme, grid: int,
                  loss: Callable[[torch.Tensor], float]) -> tuple[torch.Tensor, str, float, float]:
    """(scales, form, exponent, loss relative to round-to-nearest without scales).

    Candidates are both forms in use: s = mean|x|^r (the AWQ paper) and
    s = mean|x|^r / mean|ŵ|^(1-r) ("duo" scaling), r on a grid; `loss` scores the weights
    the folded model would compute with, Q(W·s)/s. Exponent 0 is "no scaling".
    """
    width = scheme.group_width(weight.shape[1])
    grouped = weight.abs().reshape(weight.shape[0], -1, width)
    w_mean = (grouped / grouped.amax(dim=-1, keepdim=True).clamp(min=1e-8)).reshape(weight.shape).mean(dim=0)
    unscaled = loss(fake_clipped(weight, scheme))
    best = (torch.ones_like(x_abs_mean), "none", 0.0, unscaled)
    for step in range(1, grid):
        ratio = step / grid
        for form, raw in (("activation", x_abs_mean.pow(ratio)),
                          ("duo", x_abs_mean.pow(ratio) / w_mean.clamp(min=1e-8).pow(1 - ratio))):
            scales = normalise(raw)
            error = loss(fake_clipped(weight * scales, scheme) / scales)
            if error < best[3]:
                best = (scales, form, ratio, error)
    return best[0], best[1], best[2], best[3] / max(unscaled, 1e-30)


def hessian_loss(weight: torch.Tensor, hessian: torch.Tensor) -> Callable[[torch.Tensor], float]:
    """Output error of the Linear(s) themselves, from their inputs' Hessian."""
    return lambda candidate: float(output_error(candidate - weight, hessian))


def module_loss(module: nn.Module, layers: list[nn.Linear], sample: torch.Tensor) -> Callable[[torch.Tensor], float]:
    """Error of `module`'s output on `sample` rows with the stacked candidate weights in
    `layers` — through the module's nonlinearity (AWQ scores the MLP this way)."""
    with torch.no_grad():
        reference = module(sample)
    originals = [layer.weight.data for layer in layers]

    def loss(candidate: torch.Tensor) -> float:
        row = 0
        try:
            for layer in layers:
                layer.weight.data = candidate[row:row + layer.weight.shape[0]]
                row += layer.weight.shape[0]
            with torch.no_grad():
                return float((module(sample) - reference).pow(2).sum())
        finally:
            for layer, original in zip(layers, originals):
                layer.weight.data = original

    return loss


@dataclass
class AwqLayer:
    params: QuantParams  # scales (and zero-points) of the searched, clipped grid
    hessian: torch.Tensor  # of the layer's inputs in the scaled basis
    figures: dict


def awq_prepare(work: BlockWork, config: AwqConfig) -> dict[str, AwqLayer]:
    """Searches and folds the block's scales, then searches each layer's clipping.
    The block's Linear weights are left in float (scaled); QAT starts from here."""
    # Scaling replaces an entry with a new tensor; the collected Hessians are never changed in place.
    hessians = {n: work.stats[n].hessian for n in work.layers}
    figures: dict[str, dict] = {n: {} for n in work.layers}
    # Scales first, for every group, on the float block: folding keeps the float function,
    # so each later search sees the same inputs (in its own scaled basis).
    for group in smoothing_groups(work.block, work.norm_readers):
        names = [f"{work.name}.{c}" for c in group.consumers]
        if not all(n in work.layers for n in names):
            continue
        schemes = {work.targets[n].scheme for n in names}
        if len(schemes) != 1:
            continue
        weight = torch.cat([work.layers[n].weight for n in names], dim=0).detach()
        consumers = [work.layers[n] for n in names]
        sample = work.stats[names[0]].sample_rows()
        if config.loss == "module" and group.module and len(sample):
            loss = module_loss(work.block.get_submodule(group.module), consumers, sample)
        else:
            loss = hessian_loss(weight, hessians[names[0]])
        scales, form, ratio, error = search_scales(weight, work.stats[names[0]].abs_mean, schemes.pop(),
                                                   config.scale_grid, loss)
        if form == "none":
            continue
        fold(work.block.get_submodule(group.producer), consumers, scales)
        for n in names:
            hessians[n] = hessians[n] / torch.outer(scales, scales)
            figures[n] = {"scale_form": form, "scale_exponent": ratio, "loss_vs_unscaled": error}
    layers = {}
    for name, module in work.layers.items():
        scheme = work.targets[name].scheme
        weight = module.weight.detach().float()
        clip = (search_clipping(weight, hessians[name], scheme, config.clip_grid, config.max_shrink)
                if config.clip_search and not name.endswith(NO_CLIP) else 1.0)
        mean_clip = float(clip.mean()) if isinstance(clip, torch.Tensor) else clip
        layers[name] = AwqLayer(compute_qparams(weight, scheme, clip), hessians[name],
                                {**figures[name], "mean_clip": mean_clip})
    return layers


def relative_output_error(before: torch.Tensor, after: torch.Tensor, hessian: torch.Tensor) -> float:
    return float(output_error(after - before, hessian) / output_error(before, hessian).clamp(min=1e-12))


def round_in_place(work: BlockWork, prepared: dict[str, AwqLayer], method: str
                   ) -> Iterator[tuple[str, QuantizedWeight, dict]]:
    """Codes on each layer's prepared grid; the module keeps what they dequantize to."""
    for name, module in work.layers.items():
        scheme, layer = work.targets[name].scheme, prepared[name]
        weight = module.weight.detach().float()
        codes = quantize(weight, layer.params, scheme)
        module.weight.data = dequantize(codes, layer.params)
        yield name, QuantizedWeight(scheme, layer.params, codes), \
            {"method": method, "loss": relative_output_error(weight, module.weight, layer.hessian), **layer.figures}


def awq_block_step(config: AwqConfig) -> BlockStep:
    def step(work: BlockWork) -> Iterator[tuple[str, QuantizedWeight, dict]]:
        yield from round_in_place(work, awq_prepare(work, config), "awq")

    return step
