"""Structured pruning: how much to remove (explicit amounts or a FLOPs target) and removing it,
uniformly across blocks so the result reloads with stock transformers (architecture.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from services.common.calibration.blocks import decoder_blocks
from services.common.calibration.hessian import relative_output_error
from services.common.measure.flops import forward_flops
from services.common.models import families
from services.common.models.architecture import Architecture, keep_layers
from services.pruner.configs import StructuredConfig
from services.pruner.importance import GRAM_DAMPING, UnitScores


@dataclass(frozen=True)
class Shape:
    """What every block keeps."""

    layers: int
    mlp_width: int
    head_units: int  # KV groups, or query heads per group (see Architecture.head_units)

    def data(self) -> dict:
        return {"layers": self.layers, "mlp_width": self.mlp_width, "head_units": self.head_units}


def _round_width(width: float, multiple: int, full: int) -> int:
    return int(min(full, max(multiple, round(width / multiple) * multiple)))


def current_shape(model: nn.Module, config: StructuredConfig) -> Shape:
    arch = Architecture(model, "structured pruning")
    width = arch.mlp_width(decoder_blocks(model)[0])
    units = arch.head_units(config.head_unit) if arch.attention is not None else 0
    return Shape(len(decoder_blocks(model)), width, units)


def target_shape(model: nn.Module, config: StructuredConfig) -> Shape:
    """The shape the config asks for. A FLOPs target removes layers for half the cut (rounded to
    whole layers) and MLP width for the rest, from this model's FLOPs per module at the evaluation
    shape; the result is counted again after the cut."""
    arch = Architecture(model, "structured pruning")
    now = current_shape(model, config)
    if config.heads_keep < 1.0:
        arch.check_heads(config.head_unit)
    units = max(1, round(now.head_units * config.heads_keep)) if config.heads_keep < 1.0 else now.head_units
    if not config.target_flops:
        layers = config.kept_layers(now.layers)
        if layers > now.layers:
            raise ValueError(f"layers_keep: {layers} asked, the model has {now.layers} blocks")
        return Shape(layers, _round_width(now.mlp_width * config.mlp_keep, config.width_multiple, now.mlp_width),
                     units)
    total, per_module = forward_flops(model, config.flops_sequence_length)
    blocks = decoder_blocks(model)
    block_names = {id(m): n for n, m in model.named_modules()}
    root = type(model).__name__

    def flops_of(module_name: str) -> int:
        return per_module.get(f"{root}.{module_name}", 0)

    first = block_names[id(blocks[0])]
    block_flops = flops_of(first)
    mlp_flops = sum(flops_of(f"{first}.{n}") for n in arch.mlp_modules)
    if not mlp_flops:
        raise families.refuse(model.config, "target_flops", "computes its MLP where the FLOPs counter sees none "
                              "(routed experts indexing fused 3-D parameters); ask for mlp_keep / layers_keep instead")
    cut = (1.0 - config.target_flops) * total
    removed = min(now.layers - 1, int(round(cut / 2 / block_flops)))
    rest = cut - removed * block_flops
    kept = now.layers - removed
    share = 1.0 - rest / (kept * mlp_flops) if rest > 0 else 1.0
    if share < config.width_multiple / now.mlp_width:
        raise ValueError(f"target_flops: {config.target_flops} needs more than the MLP width can give after "
                         f"removing {removed} of {now.layers} layers; ask for less")
    # Round the width down so the target is met, not missed by a rounding.
    width = max(config.width_multiple, int(now.mlp_width * share) // config.width_multiple * config.width_multiple)
    return Shape(kept, min(width, now.mlp_width), units)


def schedule_shapes(start: Shape, end: Shape, steps: int) -> list[Shape]:
    """Cubic schedule (Zhu & Gupta, 2017): the removed share grows as 1 − (1 − t/N)³."""
    shapes = []
    for t in range(1, steps + 1):
        done = 1.0 - (1.0 - t / steps) ** 3
        shapes.append(Shape(
            start.layers - round(done * (start.layers - end.layers)),
            start.mlp_width - round(done * (start.mlp_width - end.mlp_width)),
            start.head_units - round(done * (start.head_units - end.head_units))))
    return shapes


def refit_columns(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The kept input columns of an output projection `weight` [out, in] refitted so that, on inputs
    whose Gram matrix is `gram` = Σ xᵀx [in, in], W' x_keep reproduces W x as closely as possible:
    W' = W G[:, K] (G[K, K] + λI)⁻¹ (the least-squares solution; the removed inputs' share of the
    output is carried by the kept ones they correlate with). Returns W' [out, kept] and the relative
    output error before (columns only sliced) and after the refit."""
    w, g = weight.double(), gram.double()
    g_kk = g[keep][:, keep]
    ridge = GRAM_DAMPING * g_kk.diagonal().mean().clamp(min=1e-12)
    fitted = torch.linalg.solve(g_kk + ridge * torch.eye(len(keep), dtype=g.dtype), (w @ g[:, keep]).t()).t()

    def error(w_kept: torch.Tensor) -> float:
        # The cut layer as a full-width one whose removed columns are zero.
        widened = torch.zeros_like(w)
        widened[:, keep] = w_kept
        return relative_output_error(w, widened, g)

    return fitted.to(weight.dtype), {"sliced": error(w[:, keep]), "refit": error(fitted)}


def _refit_output(arch: Architecture, block: nn.Module, name: str, gram: torch.Tensor, keep: torch.Tensor) -> dict:
    """Refits the kept columns of the block's output projection `name` in place (before the cut slices them)."""
    weight = arch.weight(block, name)
    oriented = weight.detach().t() if arch.conv1d else weight.detach()
    fitted, errors = refit_columns(oriented, gram, keep)
    with torch.no_grad():
        if arch.conv1d:
            weight[keep, :] = fitted.t()
        else:
            weight[:, keep] = fitted
    return errors


def cut_to(model: nn.Module, shape: Shape, scores: UnitScores, config: StructuredConfig) -> dict:
    """Removes the lowest-scoring blocks, then in every kept block the lowest-scoring MLP neurons
    and head units, the output projections' kept columns refitted first where the scores carry the
    Gram matrices (`reconstruct`); returns what was kept."""
    arch = Architecture(model, "structured pruning")
    blocks = decoder_blocks(model)
    width_before = arch.mlp_width(blocks[0])
    figures: dict = {}
    if shape.layers < len(blocks):
        keep = sorted(scores.blocks.topk(shape.layers).indices.tolist())
        figures["kept_layers"] = keep
        figures["block_importance"] = [float(x) for x in scores.blocks]
        mlp_scores = [scores.mlp[i] for i in keep]
        head_scores = [scores.heads[i] for i in keep]
        mlp_grams = [scores.mlp_grams[i] for i in keep] if scores.mlp_grams else []
        head_grams = [scores.head_grams[i] for i in keep] if scores.head_grams else []
        keep_layers(model, blocks, keep)
        blocks = decoder_blocks(model)
    else:
        mlp_scores, head_scores = scores.mlp, scores.heads
        mlp_grams, head_grams = scores.mlp_grams, scores.head_grams
    per_layer = []
    for i, block in enumerate(blocks):
        layer: dict = {}
        if shape.mlp_width < mlp_scores[i].shape[-1]:
            # [width], or [experts, width] where the MLP is routed experts: each expert keeps its own best
            kept = mlp_scores[i].topk(shape.mlp_width).indices.sort().values
            if mlp_grams:
                errors = _refit_output(arch, block, arch.mlp.output, mlp_grams[i], kept)
                layer.update(mlp_error_sliced=errors["sliced"], mlp_error_refit=errors["refit"])
            arch.cut_mlp(block, kept)
            layer["mlp_importance_kept"] = float(mlp_scores[i].gather(-1, kept).sum()
                                                 / mlp_scores[i].sum().clamp(min=1e-12))
        if arch.attention is not None and head_scores[i] is not None and shape.head_units < head_scores[i].numel():
            kept = head_scores[i].topk(shape.head_units).indices.sort().values
            if head_grams and head_grams[i] is not None:
                errors = _refit_output(arch, block, arch.attention.o, head_grams[i],
                                       arch.kept_o_columns(kept, config.head_unit))
                layer.update(attention_error_sliced=errors["sliced"], attention_error_refit=errors["refit"])
            arch.cut_heads(block, kept, config.head_unit)
            layer["kept_head_units"] = kept.tolist()
        per_layer.append(layer)
    if shape.mlp_width < width_before:
        arch.set_mlp_width(shape.mlp_width)  # the family's own field: intermediate_size, n_inner, ffn_dim ...
    if arch.attention is not None and shape.head_units < arch.head_units(config.head_unit):
        per_group = arch.heads // arch.kv_heads
        if config.head_unit == "kv-group":
            arch.set_heads(shape.head_units * per_group, shape.head_units)
        else:
            arch.set_heads(shape.head_units * arch.kv_heads, arch.kv_heads)
    figures["per_layer"] = per_layer
    return figures

