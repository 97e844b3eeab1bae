"""Drives data-aware weight quantization block by block over calibration data.

Only the non-block modules (embeddings, final norm) and one block's weights are in
memory at a time (see streaming.StreamingModel). The embedding is rounded first, so
calibration sees it as the quantized model will; each block's Linear layers then get
their Hessians from the block's current inputs and are quantized; the quantized block's
outputs feed the next block. Linears outside the blocks (an untied LM head, a pooler)
are rounded to nearest at the end.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch

from services.quantizer.calibration import (BlockInputs, HessianCollector, capture_first_block_inputs,
                                           linear_layers, named_blocks, run_block)
from services.quantizer.configs import GptqConfig
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.gptq import gptq_quantize
from services.common.packed import Int8Embedding
from services.quantizer.qscheme import SCALE_DTYPE, quantize
from services.quantizer.rtn import quantize_rtn
from services.quantizer.streaming import StreamingModel
from services.quantizer.targets import Target

# (done, total, module name, figures) after each module.
OnLayer = Callable[[int, int, str, dict], None]


@torch.no_grad()
def quantize_gptq(source: StreamingModel, targets: list[Target], batches: torch.Tensor, config: GptqConfig,
                  on_layer: OnLayer) -> dict[str, QuantizedWeight]:
    model = source.model
    blocks = named_blocks(model)
    source.load(exclude=[name for name, _ in blocks])
    by_name = {t.name: t for t in targets}
    total = len(targets)
    done = 0
    quantized: dict[str, QuantizedWeight] = {}
    by_parameter: dict[int, QuantizedWeight] = {}

    def rounded(chosen: list[Target]) -> None:
        nonlocal done
        for name, qw in quantize_rtn(lambda t: t.module.weight.data, chosen, by_parameter=by_parameter).items():
            quantized[name] = qw
            done += 1
            on_layer(done, total, name, {"method": "rtn"})

    # The embedding is quantized first; the first block's inputs are computed from its int8
    # codes (an Int8Embedding computes exactly the dequantized rows), never a float copy.
    embedding_targets = [t for t in targets if t.role == "embedding"]
    rounded(embedding_targets)
    for target in embedding_targets:
        source.model.set_submodule(target.name, int8_embedding(target.module, quantized[target.name]))
    release_free_memory()
    inputs = capture_first_block_inputs(model, batches)
    # A tied head needs no weights later: it reuses the embedding's codes (same parameter).
    for target in embedding_targets:
        source.model.set_submodule(target.name, target.module.to_empty(device="meta"))
    release_free_memory()
    for index, (block_name, block) in enumerate(blocks):
        source.load([block_name])
        layers = {f"{block_name}.{sub}": m for sub, m in linear_layers(block).items()
                  if f"{block_name}.{sub}" in by_name}
        collector = HessianCollector(layers)
        try:
            float_outputs = run_block(block, inputs)
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
            codes = quantize(outcome.weight, outcome.params, scheme)
            row = 0
            for name, module in zip(names, modules):
                rows = slice(row, row + module.weight.shape[0])
                # Own copies: row slices would keep the whole stacked tensor alive (and share storage).
                quantized[name] = QuantizedWeight(scheme, outcome.params.rows(rows.start, rows.stop).clone(),
                                                  codes[rows].clone())
                module.weight.data = outcome.weight[rows].clone()
                row = rows.stop
                done += 1
                on_layer(done, total, name, {"method": "gptq", "block": index, "loss": outcome.loss,
                                             "damping": outcome.damping,
                                             "fell_back_to_rtn": outcome.fell_back_to_rtn})
        del collector
        next_hidden = run_block(block, inputs) if config.propagate_quantized else float_outputs
        inputs = BlockInputs(hidden=next_hidden, kwargs=inputs.kwargs)
        source.release(block_name)
        release_free_memory()
    rounded([t for t in targets if t.name not in quantized])
    return quantized


def int8_embedding(original: torch.nn.Embedding, qw: QuantizedWeight) -> Int8Embedding:
    module = Int8Embedding(original.num_embeddings, original.embedding_dim, original.padding_idx)
    module.weight = qw.codes.to(torch.int8)
    module.weight_scale = qw.params.scale.to(SCALE_DTYPE).float().reshape(-1)
    return module


def release_free_memory() -> None:
    """Hands freed heap pages back to the OS; glibc keeps them otherwise, and block-sized
    allocations of the walk would pile up in RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


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
