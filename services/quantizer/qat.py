"""Quantization-aware training, block by block.

Each block starts from AWQ's grid (scales searched and folded, ranges clipped); its Linear
weights are then fine-tuned through fake quantization with a straight-through estimator
(the forward pass sees the rounded weights, the gradient passes the rounding unchanged)
so the quantized block reproduces the float block's outputs on the calibration text.
The grid stays fixed, so conversion afterwards is plain rounding onto it: the same
compressed-tensors format as every PTQ method. Only one block trains at a time, which
keeps memory to a block's weights, their Adam state and its calibration activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from services.quantizer.awq import awq_prepare, round_in_place
from services.quantizer.configs import QatConfig
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import SCALE_DTYPE, QuantParams, WeightScheme, dequantize, quantize
from services.quantizer.sequential import BlockStep, BlockWork


class StraightThroughQuantizer(nn.Module):
    """weight ↦ its value on a fixed grid, with an identity gradient."""

    def __init__(self, params: QuantParams, scheme: WeightScheme) -> None:
        super().__init__()
        self.params, self.scheme = params, scheme

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rounded = dequantize(quantize(weight.detach(), self.params, self.scheme), self.params)
        return weight + (rounded - weight).detach()

    def learned_params(self) -> QuantParams:
        return self.params


class LearnedScaleQuantizer(nn.Module):
    """weight ↦ clamp(round(w / s)) · s on a symmetric grid whose group scales train too, in the log
    domain (a learning rate is then a relative step, whatever a layer's scale), the rounding passed
    straight through: the gradient reaches both the weight and its group's scale (LSQ)."""

    def __init__(self, params: QuantParams, scheme: WeightScheme) -> None:
        super().__init__()
        if params.zero_point is not None:
            raise ValueError("learned scales are for symmetric grids")
        self.scheme = scheme
        self.log_scale = nn.Parameter(params.scale.detach().float().log())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out, inp = weight.shape
        scale = self.log_scale.exp()[..., None]
        groups = weight.reshape(out, self.log_scale.shape[1], -1) / scale
        codes = groups + (torch.round(groups) - groups).detach()
        return (codes.clamp(self.scheme.qmin, self.scheme.qmax) * scale).reshape(out, inp)

    def learned_params(self) -> QuantParams:
        # Stored in float16: rounded now, so the codes are computed on the grid the checkpoint keeps.
        return QuantParams(self.log_scale.detach().exp().to(SCALE_DTYPE).float(), None)


def block_loss(block: nn.Module, work: BlockWork, windows: list[int]) -> torch.Tensor:
    loss = torch.zeros(())
    for i in windows:
        out = block(work.inputs.hidden[i], **work.inputs.kwargs)
        out = out[0] if isinstance(out, tuple) else out
        loss = loss + nn.functional.mse_loss(out, work.float_outputs[i])
    return loss / len(windows)


@contextmanager
def quantizers_on(work: BlockWork, make: Callable[[str], nn.Module]) -> Iterator[dict[str, nn.Module]]:
    """Each of the block's Linears computes with `make(name)` applied to its weight (a parametrization)
    while the block trains; the block's own parameters are frozen. On leaving, the parametrizations are
    removed and each weight is its own float tensor again (trained, where the caller trained it)."""
    work.block.requires_grad_(False)
    quantizers = {}
    for name, module in work.layers.items():
        parametrize.register_parametrization(module, "weight", make(name))
        quantizers[name] = module.parametrizations.weight[0]
    try:
        with torch.enable_grad():
            yield quantizers
    finally:
        for module in work.layers.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        work.block.requires_grad_(False)


def training_windows(work: BlockWork, generator: torch.Generator, batch: int) -> list[int]:
    return torch.randperm(len(work.inputs.hidden), generator=generator)[:batch].tolist()


def finetune_block(work: BlockWork, grids: dict[str, tuple[QuantParams, WeightScheme]], config: QatConfig,
                   seed: int = 0) -> tuple[float, float, dict[str, QuantParams]]:
    """Trains the block's Linear weights (and with `scale_learning_rate`, their grids' scales) through
    their grids; (first, last) loss and each layer's grid as training left it."""
    if len(work.float_outputs) != len(work.inputs.hidden):
        raise ValueError("QAT trains towards float outputs: walk with float_targets='block' or 'model'")
    generator = torch.Generator().manual_seed(seed + work.index)
    quantizer = LearnedScaleQuantizer if config.scale_learning_rate else StraightThroughQuantizer
    first = last = 0.0
    with quantizers_on(work, lambda name: quantizer(*grids[name])) as quantizers:
        trainable = [m.parametrizations.weight.original for m in work.layers.values()]
        scales = [q.log_scale for q in quantizers.values()] if config.scale_learning_rate else []
        for p in trainable + scales:
            p.requires_grad_(True)
        groups = [{"params": trainable, "lr": config.learning_rate}]
        if scales:
            groups.append({"params": scales, "lr": config.scale_learning_rate})
        optimizer = torch.optim.Adam(groups)
        try:
            for step in range(config.steps_per_block):
                if step % 10 == 0:
                    work.check_cancelled()
                loss = block_loss(work.block, work, training_windows(work, generator, config.batch_windows))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                last = loss.item()
                if step == 0:
                    first = last
        finally:
            learned = {name: q.learned_params() for name, q in quantizers.items()}
    return first, last, learned


def qat_block_step(config: QatConfig, on_progress: Callable[[str], None] = lambda _m: None) -> BlockStep:
    def step(work: BlockWork) -> Iterator[tuple[str, QuantizedWeight, dict]]:
        prepared = awq_prepare(work, config)
        figures = {}
        if config.steps_per_block:
            grids = {name: (layer.params, work.targets[name].scheme) for name, layer in prepared.items()}
            first, last, learned = finetune_block(work, grids, config)
            for name, params in learned.items():
                prepared[name].params = params
            figures = {"block_loss_before": first, "block_loss_after": last}
            on_progress(f"{work.name}: block output MSE {first:.3g} -> {last:.3g} "
                        f"after {config.steps_per_block} steps")
        for name, qw, layer_figures in round_in_place(work, prepared, "qat"):
            yield name, qw, {**layer_figures, **figures}

    return step
