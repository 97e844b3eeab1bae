"""Walks a streamed model block by block over calibration inputs, handing each block to a
technique's step.

Only the non-block modules and one block's weights are in memory at a time (see
streaming.StreamingModel). For each block a calibration pass collects its chosen Linears' input
statistics (Hessian, |x| sums, row samples); the step turns them into per-layer results of its
own kind (quantized codes, pruning masks ...) and may rewrite the block's float tensors in place
(folding scales into a norm, zeroing pruned weights); the block's outputs as the step left it
then feed the next block. What happens before the first block (quantizing the embedding, say)
and after the last (layers outside the blocks) is the technique's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from services.common.calibration.blocks import (
    BlockInputs,
    InputStats,
    InputStatsCollector,
    capture_first_block_inputs,
    linear_layers,
    named_blocks,
    run_block,
)
from services.common.calibration.streaming import StreamingModel
from services.common.calibration.walk_checkpoint import WalkCheckpoints, WalkState
from services.common.models import families
from services.common.runtime.memory import release_free_memory


@dataclass
class BlockWork:
    """One block as a step sees it."""

    index: int
    name: str
    block: nn.Module
    layers: dict[str, nn.Linear]  # this block's chosen Linears, by full module name
    targets: dict[str, Any]  # what the technique attached to each of them (e.g. a quantization target)
    stats: dict[str, InputStats]
    inputs: BlockInputs
    float_outputs: list[torch.Tensor]
    # Hooks a step installs for the propagation pass (e.g. simulated activation quantization);
    # removed once the block's outputs are computed.
    propagation_hooks: list = field(default_factory=list)
    # The model family's (norm, Linears reading it) pairs (families.py): where scales may fold; empty for
    # an undeclared family (no norm is folded into by its name alone), None for Llama's names.
    norm_readers: tuple | None = None
    # Long steps (QAT's training loop) call this now and then: it raises when the stage was
    # cancelled, so cancel need not wait for the block to finish.
    check_cancelled: Callable[[], None] = lambda: None


# What a step that trains towards float outputs is given as its targets (BlockWork.float_outputs): none,
# the float block's outputs on the walked inputs ("block": each block repairs only its own rounding), or
# the float model's own hidden states, run through each float block in a second stream ("model": a block
# may also make up for what the blocks before it lost, as AutoRound's targets do).
FloatTargets = Literal["none", "block", "model"]

# Yields (module name, the technique's result for it, figures for the progress event).
BlockStep = Callable[[BlockWork], Iterator[tuple[str, Any, dict]]]
# (module name, result, figures) as each one arrives.
OnResult = Callable[[str, Any, dict], None]


@dataclass
class BlocksResult:
    results: dict[str, Any]
    # Float tensors the steps changed besides the chosen Linears' weights (norms, biases;
    # checkpoint names → new values). A chosen Linear's own outcome is its result.
    rewritten: dict[str, torch.Tensor]
    # The last block's outputs, as the steps left the model (what an LM head's norm reads).
    hidden: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def run_blocks(source: StreamingModel, blocks: list[tuple[str, nn.Module]], inputs: BlockInputs,
               targets: dict[str, Any], step: BlockStep, on_result: OnResult, *, propagate_updated: bool = True,
               sample_every: int = 0, float_targets: FloatTargets = "none",
               check_cancelled: Callable[[], None] = lambda: None,
               checkpoints: WalkCheckpoints | None = None) -> BlocksResult:
    """`inputs` are the first block's (blocks.capture_first_block_inputs); `targets` names the
    Linears whose statistics are collected. The block's float outputs are kept for the step only
    when it asks (`float_targets`) or when they feed the next block (`propagate_updated=False`):
    they are as large as the inputs, and "model" targets keep a second stream of them. With `checkpoints`, a stored
    walk goes on from its next block (its finished results handed to `on_result` again, so
    whoever counts them counts them all) and the walk is saved between blocks now and then."""
    results: dict[str, Any] = {}
    figures: dict[str, dict] = {}
    rewritten: dict[str, torch.Tensor] = {}
    family = families.family_of(source.model.config)
    norm_readers = family.norm_readers if family else ()
    start = 0
    # The float model's inputs to the next block, when they are the targets (a stream of their own).
    float_stream = list(inputs.hidden) if float_targets == "model" else []
    if checkpoints is not None and (stored := checkpoints.restore(len(blocks), inputs.hidden,
                                                                   with_float_stream=bool(float_stream))) is not None:
        start = stored.next_block
        inputs = BlockInputs(hidden=stored.hidden, kwargs=inputs.kwargs)
        float_stream = stored.float_hidden
        rewritten.update(stored.rewritten)
        for name, result in stored.results.items():
            results[name], figures[name] = result, stored.figures.get(name, {})
            on_result(name, result, figures[name])
    for index, (block_name, block) in enumerate(blocks):
        if index < start:
            continue
        source.load([block_name])
        layers = {f"{block_name}.{sub}": m for sub, m in linear_layers(block).items()
                  if f"{block_name}.{sub}" in targets}
        floats_before = _float_tensors(block, block_name, skip=set(layers))
        collector = InputStatsCollector(layers, sample_every)
        try:
            float_outputs = run_block(block, inputs, keep=float_targets == "block" or not propagate_updated)
        finally:
            collector.close()
        if float_stream:  # before the step: a step may rewrite the block (folded scales, trained weights)
            float_stream = run_block(block, BlockInputs(hidden=float_stream, kwargs=inputs.kwargs))
            float_outputs = float_stream
        work = BlockWork(index, block_name, block, layers, {n: targets[n] for n in layers}, collector.stats,
                         inputs, float_outputs, check_cancelled=check_cancelled, norm_readers=norm_readers)
        for name, result, step_figures in step(work):
            results[name], figures[name] = result, {"block": index, **step_figures}
            on_result(name, result, figures[name])
        del collector, work.stats
        for key, before in floats_before.items():
            now = block.get_parameter(key.removeprefix(block_name + ".")).detach()
            if not torch.equal(now, before):
                rewritten[key] = now.clone()
        try:
            next_hidden = run_block(block, inputs) if propagate_updated else float_outputs
        finally:
            for handle in work.propagation_hooks:
                handle.remove()
        inputs = BlockInputs(hidden=next_hidden, kwargs=inputs.kwargs)
        source.release(block_name)
        release_free_memory()
        if checkpoints is not None and index + 1 < len(blocks) and checkpoints.due():
            checkpoints.save(WalkState(index + 1, inputs.hidden, results, figures, rewritten, float_stream),
                             len(blocks))
    return BlocksResult(results, rewritten, inputs.hidden)


def _float_tensors(block: nn.Module, block_name: str, skip: set[str]) -> dict[str, torch.Tensor]:
    """Copies of the block's float parameters other than the chosen Linears' weights (norms, biases)."""
    out = {}
    for sub, param in block.named_parameters():
        key = f"{block_name}.{sub}"
        if key.removesuffix(".weight") in skip and key.endswith(".weight"):
            continue
        out[key] = param.detach().clone()
    return out


@torch.no_grad()
def rewrite_sequential(source: StreamingModel, targets: dict[str, object], batches: torch.Tensor,
                       step: BlockStep, on_layer: Callable[[int, int, str, dict], None], *,
                       sample_every: int = 0, check_cancelled: Callable[[], None] = lambda: None,
                       checkpoints: WalkCheckpoints | None = None) -> dict[str, torch.Tensor]:
    """Walks the blocks with a step that rewrites float weights (a transform folding scales, a
    pruning mask); returns every float tensor it changed (module names → values): the yielded
    Linears' new weights and whatever else the step rewrote (norms scales were folded into).
    Each block's outputs as rewritten feed the next."""
    blocks = named_blocks(source.model)
    source.load(exclude=[name for name, _ in blocks], embedding_as_stored=True)
    inputs = capture_first_block_inputs(source.model, batches)
    # The walk needs none of the modules outside the blocks (embedding, head): let go of them; the blocks are
    # on meta already. Tensors nothing changed are copied from the checkpoint by the writers.
    source.model.to_empty(device="meta")
    release_free_memory()
    changed: dict[str, torch.Tensor] = {}
    done = 0

    def record(name: str, weight: torch.Tensor, figures: dict) -> None:
        nonlocal done
        # Kept until the writer runs, so in the checkpoint's own dtype (what it writes anyway): a bf16
        # model's rewritten weights take half the memory of FP32 copies.
        key = f"{name}.weight"
        changed[key] = weight.to(source.reader.dtype(source.key(key)))
        done += 1
        on_layer(done, len(targets), name, figures)

    walked = run_blocks(source, blocks, inputs, targets, step, record, propagate_updated=True,
                        sample_every=sample_every, check_cancelled=check_cancelled, checkpoints=checkpoints)
    # Steps fold every scale before yielding, so a Linear that is also a producer (up_proj
    # before down_proj) is yielded with its final weight; `rewritten` holds the rest (norms).
    return {**walked.rewritten, **changed}
