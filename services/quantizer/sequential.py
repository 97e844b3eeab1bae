"""Drives data-aware quantization block by block over calibration data.

Only the non-block modules (embeddings, final norm) and one block's weights are in
memory at a time (see streaming.StreamingModel). The embedding is rounded first, so
calibration sees it as the quantized model will. For each block, a calibration pass
collects the inputs' statistics of its Linear layers; an algorithm's `BlockStep` turns
them into codes (and may rewrite float tensors, e.g. folding smoothing scales into a
norm); the quantized block's outputs then feed the next block. Linears outside the
blocks (an untied LM head, a pooler) are rounded to nearest at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from services.common.memory import release_free_memory
from services.common.packed import Int8Embedding
from services.quantizer.calibration import (BlockInputs, InputStats, InputStatsCollector,
                                           capture_first_block_inputs, linear_layers, named_blocks, run_block)
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import SCALE_DTYPE
from services.quantizer.rtn import quantize_rtn
from services.quantizer.streaming import StreamingModel
from services.quantizer.targets import Target

# (done, total, module name, figures) after each module.
OnLayer = Callable[[int, int, str, dict], None]


@dataclass
class BlockWork:
    """One block as an algorithm sees it."""

    index: int
    name: str
    block: nn.Module
    layers: dict[str, nn.Linear]  # this block's targets, by full module name
    targets: dict[str, Target]
    stats: dict[str, InputStats]
    inputs: BlockInputs
    float_outputs: list[torch.Tensor]
    # Hooks an algorithm installs for the propagation pass (e.g. simulated activation
    # quantization); removed once the block's outputs are computed.
    propagation_hooks: list = field(default_factory=list)
    # Long steps (QAT's training loop) call this now and then: it raises when the stage
    # was cancelled, so cancel need not wait for the block to finish.
    check_cancelled: Callable[[], None] = lambda: None


# Yields (module name, its codes, figures for the progress event) for every layer it quantizes.
BlockStep = Callable[[BlockWork], Iterator[tuple[str, QuantizedWeight, dict]]]


@dataclass
class SequentialResult:
    quantized: dict[str, QuantizedWeight]
    # Float tensors the algorithm changed (checkpoint names without prefix → new values).
    rewritten: dict[str, torch.Tensor]


@torch.no_grad()
def quantize_sequential(source: StreamingModel, targets: list[Target], batches: torch.Tensor, step: BlockStep,
                        on_layer: OnLayer, *, propagate_quantized: bool = True, sample_every: int = 0,
                        finish_rest: bool = True, keep_float_outputs: bool = False,
                        check_cancelled: Callable[[], None] = lambda: None) -> SequentialResult:
    """`finish_rest` rounds the targets no block step quantized (head, pooler) at the end.
    The float block's outputs are kept for the step only when it asks (`keep_float_outputs`,
    QAT's targets) or when they feed the next block: they are as large as the inputs."""
    model = source.model
    blocks = named_blocks(model)
    source.load(exclude=[name for name, _ in blocks])
    by_name = {t.name: t for t in targets}
    total = len(targets)
    done = 0
    quantized: dict[str, QuantizedWeight] = {}
    rewritten: dict[str, torch.Tensor] = {}
    by_parameter: dict[int, QuantizedWeight] = {}

    def record(name: str, qw: QuantizedWeight, figures: dict) -> None:
        nonlocal done
        quantized[name] = qw
        done += 1
        on_layer(done, total, name, figures)

    def rounded(chosen: list[Target]) -> None:
        for name, qw in quantize_rtn(lambda t: t.module.weight.data, chosen, by_parameter=by_parameter).items():
            record(name, qw, {"method": "rtn"})

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
        floats_before = _float_tensors(block, block_name, skip=set(layers))
        collector = InputStatsCollector(layers, sample_every)
        try:
            float_outputs = run_block(block, inputs, keep=keep_float_outputs or not propagate_quantized)
        finally:
            collector.close()
        work = BlockWork(index, block_name, block, layers, {n: by_name[n] for n in layers}, collector.stats,
                         inputs, float_outputs, check_cancelled=check_cancelled)
        for name, qw, figures in step(work):
            record(name, qw, {"block": index, **figures})
        del collector, work.stats
        for key, before in floats_before.items():
            now = block.get_parameter(key.removeprefix(block_name + ".")).detach()
            if not torch.equal(now, before):
                rewritten[key] = now.clone()
        try:
            next_hidden = run_block(block, inputs) if propagate_quantized else float_outputs
        finally:
            for handle in work.propagation_hooks:
                handle.remove()
        inputs = BlockInputs(hidden=next_hidden, kwargs=inputs.kwargs)
        source.release(block_name)
        release_free_memory()
    if finish_rest:
        rounded([t for t in targets if t.name not in quantized])
    return SequentialResult(quantized, rewritten)


def _float_tensors(block: nn.Module, block_name: str, skip: set[str]) -> dict[str, torch.Tensor]:
    """Copies of the block's float parameters other than the targets' weights (norms, biases)."""
    out = {}
    for sub, param in block.named_parameters():
        key = f"{block_name}.{sub}"
        if key.removesuffix(".weight") in skip and key.endswith(".weight"):
            continue
        out[key] = param.detach().clone()
    return out


def int8_embedding(original: torch.nn.Embedding, qw: QuantizedWeight) -> Int8Embedding:
    module = Int8Embedding(original.num_embeddings, original.embedding_dim, original.padding_idx)
    module.weight = qw.codes.to(torch.int8)
    module.weight_scale = qw.params.scale.to(SCALE_DTYPE).float().reshape(-1)
    return module


def shared_input_groups(hessians: dict[str, torch.Tensor], schemes: dict[str, object] | None = None
                        ) -> list[list[str]]:
    """Names grouped by identical Hessian (layers fed the same input) and, when given, the
    same scheme, in block order."""
    groups: list[list[str]] = []
    for name, h in hessians.items():
        for group in groups:
            first = hessians[group[0]]
            if schemes is not None and schemes[group[0]] != schemes[name]:
                continue
            if first.shape == h.shape and torch.equal(first, h):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def split_rows(name_modules: list[tuple[str, nn.Linear]]) -> Iterator[tuple[str, slice]]:
    """Row slices of a tensor stacked from these modules' weights, in order."""
    row = 0
    for name, module in name_modules:
        yield name, slice(row, row + module.weight.shape[0])
        row += module.weight.shape[0]
