"""Learned rounding, block by block (AutoRound: Cheng et al., 2024, "Optimize weight rounding via
signed gradient descent").

Every weight keeps its float value; what trains is, per weight, an offset v ∈ [-½, ½] added before
rounding (round(w/s + v) may go up where round-to-nearest goes down) and, per group, a gain on its
scale (a learned clipping of the range). Both follow the sign of their gradient through the
block's output error towards the float outputs, with a step that decays linearly to zero (over the
whole walk, a step of 1/steps moves an offset across at most half a code): signed steps suit an
offset whose useful moves are all of the same size. The grid starts from AWQ's (scales searched and
folded, ranges clipped; `scale_grid=1, clip_search=false` starts from round-to-nearest, as AutoRound
itself does). The lowest-loss offsets and gains of the training batches are kept, and they replace
the starting rounding only where they lower the block's error on all its calibration windows.
The codes then fall on the same grid layout as every PTQ method: the same compressed-tensors
checkpoint, nothing new to load.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from services.quantizer.awq import awq_prepare, relative_output_error
from services.quantizer.configs import AutoRoundConfig
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qat import block_loss, quantizers_on, training_windows
from services.quantizer.qscheme import SCALE_DTYPE, QuantParams, WeightScheme, dequantize
from services.quantizer.sequential import BlockStep, BlockWork

# How far a group's scale may move from the starting grid's: down to half (AutoRound's clipping range)
# and a little up (the AWQ grid it starts from may have clipped a group more than its rounding needs).
SCALE_GAIN_RANGE = (0.5, 1.25)


class LearnedRoundingQuantizer(nn.Module):
    """weight ↦ (clamp(round(w / (s·g) + v) + z) − z) · s·g: the rounding offset v per weight and the
    scale gain g per group train, the rounding passed straight through; the weight itself stays."""

    def __init__(self, params: QuantParams, scheme: WeightScheme, shape: torch.Size) -> None:
        super().__init__()
        self.scheme = scheme
        self.register_buffer("scale", params.scale.detach().float().clone())
        self.zero_point = params.zero_point
        self.offset = nn.Parameter(torch.zeros(shape))
        self.gain = nn.Parameter(torch.ones_like(self.scale))

    def codes(self, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        groups = weight.reshape(weight.shape[0], scale.shape[1], -1) / scale[..., None]
        shifted = groups + self.offset.reshape(groups.shape)
        if self.zero_point is not None:
            shifted = shifted + self.zero_point[..., None]
        rounded = shifted + (torch.round(shifted) - shifted).detach()
        return rounded.clamp(self.scheme.qmin, self.scheme.qmax)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = self.scale * self.gain
        codes = self.codes(weight, scale)
        if self.zero_point is not None:
            codes = codes - self.zero_point[..., None]
        return (codes * scale[..., None]).reshape(weight.shape)

    @torch.no_grad()
    def constrain(self) -> None:
        self.offset.clamp_(-0.5, 0.5)
        self.gain.clamp_(*SCALE_GAIN_RANGE)

    @torch.no_grad()
    def rounded(self, weight: torch.Tensor) -> tuple[torch.Tensor, QuantParams]:
        """The integer codes and the grid the checkpoint keeps (scales in float16, so the codes are
        computed on the scales a reloaded model multiplies by)."""
        scale = (self.scale * self.gain).to(SCALE_DTYPE).float()
        codes = torch.round(self.codes(weight.float(), scale)).reshape(weight.shape)
        return codes.to(self.scheme.code_dtype), QuantParams(scale, self.zero_point)

    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.offset.detach().clone(), self.gain.detach().clone()

    @torch.no_grad()
    def load(self, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.offset.copy_(state[0])
        self.gain.copy_(state[1])


def all_windows_loss(work: BlockWork) -> float:
    with torch.no_grad():
        return float(block_loss(work.block, work, list(range(len(work.inputs.hidden)))))


def learn_rounding(work: BlockWork, grids: dict[str, tuple[QuantParams, WeightScheme]], config: AutoRoundConfig,
                   seed: int = 0) -> tuple[dict, dict[str, tuple[torch.Tensor, QuantParams]]]:
    """Signed-gradient descent of the block's rounding offsets and scale gains; the figures (block
    error on every window before and after, steps kept) and each layer's codes and grid."""
    if len(work.float_outputs) != len(work.inputs.hidden):
        raise ValueError("learned rounding trains towards float outputs: walk with float_targets='block' or 'model'")
    generator = torch.Generator().manual_seed(seed + work.index)
    weights = {name: module.weight.detach().float() for name, module in work.layers.items()}
    with quantizers_on(work, lambda n: LearnedRoundingQuantizer(*grids[n], weights[n].shape)) as quantizers:
        parameters = [p for q in quantizers.values() for p in (q.offset, q.gain)]
        for p in parameters:
            p.requires_grad_(True)
        before = all_windows_loss(work)
        start = {name: q.state() for name, q in quantizers.items()}
        best, best_loss, best_step = start, float("inf"), -1
        for step in range(config.steps_per_block):
            if step % 10 == 0:
                work.check_cancelled()
            loss = block_loss(work.block, work, training_windows(work, generator, config.batch_windows))
            if loss.item() < best_loss:  # the loss of the state before this step's update
                best_loss, best_step = loss.item(), step
                best = {name: q.state() for name, q in quantizers.items()}
            for p in parameters:
                p.grad = None
            loss.backward()
            rate = config.step_size * (1 - step / config.steps_per_block)
            with torch.no_grad():
                for p in parameters:
                    p.add_(p.grad.sign(), alpha=-rate)
            for q in quantizers.values():
                q.constrain()
        for name, q in quantizers.items():
            q.load(best[name])
        after = all_windows_loss(work)
        kept = after < before
        if not kept:
            for name, q in quantizers.items():
                q.load(start[name])
        results = {name: q.rounded(weights[name]) for name, q in quantizers.items()}
    figures = {"block_loss_before": before, "block_loss_after": after if kept else before,
               "best_step": best_step, "learned_rounding_kept": kept}
    return figures, results


def autoround_block_step(config: AutoRoundConfig) -> BlockStep:
    def step(work: BlockWork) -> Iterator[tuple[str, QuantizedWeight, dict]]:
        prepared = awq_prepare(work, config)
        grids = {name: (layer.params, work.targets[name].scheme) for name, layer in prepared.items()}
        figures, results = learn_rounding(work, grids, config)
        for name, module in work.layers.items():
            codes, params = results[name]
            weight = module.weight.detach().float()
            module.weight.data = dequantize(codes, params).to(module.weight.dtype)
            layer = prepared[name]
            yield name, QuantizedWeight(work.targets[name].scheme, params, codes), {
                "method": "autoround", "loss": relative_output_error(weight, module.weight.float(), layer.hessian),
                **layer.figures, **figures}

    return step
