"""Unstructured and N:M pruning of every Linear inside the model's blocks, block by block on the
shared calibration core (embeddings and the LM head stay dense, as Wanda, SparseGPT and
llm-compressor leave them).

Magnitude needs no data; Wanda and SparseGPT take each Linear's input Hessian from a calibration
pass, and each block's outputs as pruned feed the next block. The result is a float checkpoint
with zeros in place (see engine.py for why dense zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from services.common.calibration.blocks import capture_first_block_inputs, linear_layers, named_blocks
from services.common.calibration.hessian import relative_output_error
from services.common.calibration.sequential import BlockStep, BlockWork, rewrite_sequential, run_blocks
from services.common.calibration.walk_checkpoint import WalkCheckpoints
from services.common.calibration.streaming import StreamingModel
from services.common.models import families
from services.pruner.masks import (global_threshold, layer_mask, magnitude_scores, nm_mask, outlier_ratio,
                                   owl_sparsities, row_mask, wanda_scores)
from services.pruner.sparsegpt import sparsegpt_prune

OnLayer = Callable[[int, int, str, dict], None]


def block_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every Linear inside the repeated blocks, by full module name, in block order (MoE routers and
    expert gates left dense: families.expert_gates)."""
    gates = families.expert_gates(model)
    return {f"{block_name}.{sub}": m for block_name, block in named_blocks(model)
            for sub, m in linear_layers(block).items() if f"{block_name}.{sub}" not in gates}


def check_nm(model: torch.nn.Module, nm: tuple[int, int] | None) -> None:
    """N:M needs every pruned Linear's input width to be a multiple of M; said before any work."""
    if nm is None:
        return
    bad = [f"{n} ({m.in_features} inputs)" for n, m in block_linears(model).items() if m.in_features % nm[1]]
    if bad:
        raise ValueError(f"structure: {nm[0]}:{nm[1]} needs input widths that are multiples of {nm[1]}; "
                         f"not: {', '.join(bad[:3])}")


def density_figures(weight: torch.Tensor) -> dict:
    return {"sparsity": float((weight == 0).float().mean())}


def _mask_of(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, per_row: bool) -> torch.Tensor:
    if nm:
        return nm_mask(scores, *nm)
    return row_mask(scores, sparsity) if per_row else layer_mask(scores, sparsity)


@torch.no_grad()
def prune_magnitude(source: StreamingModel, sparsity: float, nm: tuple[int, int] | None, scope: str,
                    on_layer: OnLayer) -> dict[str, torch.Tensor]:
    """|w| masks per Linear (or one threshold for all of them); no calibration data."""
    layers = block_linears(source.model)
    read = lambda name: source.reader.get(source.key(f"{name}.weight")).float()  # noqa: E731
    threshold = global_threshold([read(n).abs() for n in layers], sparsity) if scope == "global" else None
    changed = {}
    for i, name in enumerate(layers, start=1):
        weight = read(name)
        if threshold is not None:
            mask = weight.abs() > threshold
        else:
            mask = _mask_of(magnitude_scores(weight), sparsity, nm, per_row=False)
        changed[f"{name}.weight"] = weight * mask
        on_layer(i, len(layers), name, {"method": "magnitude", **density_figures(changed[f"{name}.weight"])})
    return changed


# One Linear's pruning from its weight, its input Hessian and the target sparsity: the pruned
# weight and the figures the method adds.
LayerPrune = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict]]


def wanda_layer(nm: tuple[int, int] | None) -> LayerPrune:
    """Wanda: per-row masks of |w|·‖x‖, no update."""

    def prune(before: torch.Tensor, hessian: torch.Tensor, sparsity: float) -> tuple[torch.Tensor, dict]:
        return before * _mask_of(wanda_scores(before, hessian), sparsity, nm, per_row=True), {}

    return prune


def sparsegpt_layer(nm: tuple[int, int] | None, *, damping: float, block_size: int) -> LayerPrune:
    """SparseGPT: OBS masks with the kept weights updated to compensate."""

    def prune(before: torch.Tensor, hessian: torch.Tensor, sparsity: float) -> tuple[torch.Tensor, dict]:
        outcome = sparsegpt_prune(before, hessian, sparsity, nm=nm, block_size=block_size, damping=damping)
        return outcome.weight, {"damping": outcome.damping, "fell_back": outcome.fell_back}

    return prune


def calibrated_step(method: str, sparsity_of: Callable[[int], float], prune_layer: LayerPrune) -> BlockStep:
    """`prune_layer` on every Linear of a block, from the block's calibration Hessians."""

    def step(work: BlockWork) -> Iterator[tuple[str, torch.Tensor, dict]]:
        sparsity = sparsity_of(work.index)
        for name, module in work.layers.items():
            work.check_cancelled()
            hessian = work.stats[name].hessian
            before = module.weight.detach().float()
            if work.stats[name].rows == 0:
                # No calibration token reached it (an expert the router never chose): its Hessian is
                # empty, so the method runs on the identity instead (its masks by magnitude, no update
                # across columns), and says so.
                after, extra = prune_layer(before, torch.eye(before.shape[1]), sparsity)
                module.weight.data = after.to(module.weight.dtype)
                yield name, after, {"method": f"{method} (magnitude: no calibration tokens)",
                                    "no_calibration_tokens": True, "target_sparsity": sparsity,
                                    **density_figures(after), **extra}
                continue
            after, extra = prune_layer(before, hessian, sparsity)
            module.weight.data = after.to(module.weight.dtype)
            yield name, after, {"method": method, "loss": relative_output_error(before, after, hessian),
                                "target_sparsity": sparsity, **density_figures(after), **extra}

    return step


@torch.no_grad()
def owl_block_sparsities(source: StreamingModel, batches: torch.Tensor, sparsity: float, spread: float,
                         threshold: float, on_block: Callable[[int, int, float], None]) -> list[float]:
    """A float pass over the blocks measuring each one's Wanda-score outlier ratio."""
    blocks = named_blocks(source.model)
    source.load(exclude=[name for name, _ in blocks])
    inputs = capture_first_block_inputs(source.model, batches)
    ratios: list[float] = []

    def measure(work: BlockWork) -> Iterator[tuple[str, None, dict]]:
        outliers = total = 0.0
        for name, module in work.layers.items():
            scores = wanda_scores(module.weight, work.stats[name].hessian)
            outliers += outlier_ratio(scores, threshold) * scores.numel()
            total += scores.numel()
        ratios.append(outliers / total if total else 0.0)
        on_block(work.index, len(blocks), ratios[-1])
        return iter(())

    run_blocks(source, blocks, inputs, block_linears(source.model), measure, lambda *_: None,
               propagate_updated=False)
    return owl_sparsities(ratios, sparsity, spread)


def prune_calibrated(source: StreamingModel, batches: torch.Tensor, step: BlockStep, on_layer: OnLayer,
                     check_cancelled: Callable[[], None], checkpoints: WalkCheckpoints | None = None
                     ) -> dict[str, torch.Tensor]:
    targets = block_linears(source.model)
    return rewrite_sequential(source, targets, batches, step, on_layer, check_cancelled=check_cancelled,
                              checkpoints=checkpoints)
