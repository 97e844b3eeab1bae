"""Mixed precision: the layers whose 4-bit rounding hurts most stay at 8 bits, within a
budget of average stored bits per Linear weight.

Sensitivity is measured, not guessed: one calibration pass (float model, block by
block) gives each Linear's input Hessian, and a layer's sensitivity is the output
error its round-to-nearest low-bit weights cause, tr(ΔW H ΔWᵀ), relative to the energy
of the residual stream entering its block (so layers at different depths compare).
Layers are promoted greedily by sensitivity per extra stored bit until the budget is
spent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from services.quantizer.clipping import output_error
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import WeightScheme, fake_quantize
from services.quantizer.sequential import BlockStep, BlockWork
from services.quantizer.targets import Target

HIGH = WeightScheme(8, 0, True)


def stored_bits(target: Target, scheme: WeightScheme) -> float:
    weight = target.module.weight
    per_group = 16 + (0 if scheme.symmetric else scheme.bits)
    return weight.numel() * (scheme.bits + per_group / scheme.group_width(weight.shape[1]))


def sensitivity_step(into: dict[str, float]) -> BlockStep:
    """Records each Linear's sensitivity; quantizes nothing."""
    def step(work: BlockWork) -> Iterator[tuple[str, QuantizedWeight, dict]]:
        stream = torch.cat([h.reshape(-1, h.shape[-1]) for h in work.inputs.hidden])
        energy = float(stream.pow(2).sum(dim=-1).mean()) or 1.0
        for name, module in work.layers.items():
            weight = module.weight.detach().float()
            rounded, _ = fake_quantize(weight, work.targets[name].scheme)
            # H = 2XᵀX/n: tr(ΔW H ΔWᵀ)/2 is the mean squared output error per calibration row.
            into[name] = float(output_error(rounded - weight, work.stats[name].hessian)) / 2 / energy
        return iter(())

    return step


def allocate(targets: list[Target], sensitivity: dict[str, float], average_bits: float
             ) -> tuple[list[Target], list[str]]:
    """Targets with the promoted Linears at 8 bits, and the promoted names (most sensitive first)."""
    linear = [t for t in targets if t.role == "linear"]
    weights = sum(t.module.weight.numel() for t in linear)
    budget = average_bits * weights - sum(stored_bits(t, t.scheme) for t in linear)
    promoted: list[str] = []
    ranked = sorted(linear, key=lambda t: sensitivity.get(t.name, 0.0) /
                    max(stored_bits(t, HIGH) - stored_bits(t, t.scheme), 1.0), reverse=True)
    for target in ranked:
        extra = stored_bits(target, HIGH) - stored_bits(target, target.scheme)
        if extra <= budget and target.scheme.bits < HIGH.bits:
            promoted.append(target.name)
            budget -= extra
    chosen = set(promoted)
    return [dataclasses.replace(t, scheme=HIGH, fallback_from=0) if t.name in chosen else t for t in targets], promoted
