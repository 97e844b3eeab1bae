"""Drives data-aware weight quantization block by block over calibration data.

Embeddings are rounded first (so calibration sees them as the quantized model will), then
each block's Linear layers get their Hessians from the block's current inputs and are
quantized by the chosen algorithm; the quantized block's outputs feed the next block.
Linears outside the blocks (an LM head, a pooler) are rounded to nearest at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from services.quantizer.calibration import HessianCollector, linear_layers, run_block, walk_blocks
from services.quantizer.configs import GptqConfig
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.gptq import gptq_quantize
from services.quantizer.rtn import quantize_rtn
from services.quantizer.targets import Target

# (done, total, module name, figures) after each module.
OnLayer = Callable[[int, int, str, dict], None]


@torch.no_grad()
def quantize_gptq(model: nn.Module, targets: list[Target], batches: torch.Tensor, config: GptqConfig,
                  on_layer: OnLayer) -> dict[str, QuantizedWeight]:
    by_name = {t.name: t for t in targets}
    total = len(targets)
    done = 0
    quantized: dict[str, QuantizedWeight] = {}

    def rounded(chosen: list[Target]) -> None:
        nonlocal done
        for name, qw in quantize_rtn(model, chosen).items():
            quantized[name] = qw
            done += 1
            on_layer(done, total, name, {"method": "rtn"})

    rounded([t for t in targets if t.role == "embedding"])
    for index, block_name, block, inputs in walk_blocks(model, batches):
        layers = {f"{block_name}.{sub}": m for sub, m in linear_layers(block).items()
                  if f"{block_name}.{sub}" in by_name}
        collector = HessianCollector(layers)
        try:
            run_block(block, inputs)
        finally:
            collector.close()
        for names in shared_input_groups(collector.hessians):
            modules = [layers[n] for n in names]
            scheme = by_name[names[0]].scheme
            # Layers reading the same input (q/k/v, gate/up) share H; GPTQ treats rows
            # independently given H, so stacking their rows is exact and runs the column loop once.
            stacked = torch.cat([m.weight for m in modules], dim=0)
            outcome = gptq_quantize(stacked, collector.hessians[names[0]], scheme,
                                    damping=config.damping, block_size=config.block_size, act_order=config.act_order)
            row = 0
            for name, module in zip(names, modules):
                rows = module.weight.shape[0]
                module.weight.data.copy_(outcome.weight[row:row + rows])
                quantized[name] = QuantizedWeight(scheme, outcome.params.rows(row, row + rows))
                row += rows
                done += 1
                on_layer(done, total, name, {"method": "gptq", "block": index, "loss": outcome.loss,
                                             "damping": outcome.damping,
                                             "fell_back_to_rtn": outcome.fell_back_to_rtn})
        del collector
    rounded([t for t in targets if t.name not in quantized])
    return quantized


def shared_input_groups(hessians: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names grouped by identical Hessian (layers fed the same input), in block order."""
    groups: list[list[str]] = []
    for name, h in hessians.items():
        for group in groups:
            first = hessians[group[0]]
            if first.shape == h.shape and torch.equal(first, h):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups
