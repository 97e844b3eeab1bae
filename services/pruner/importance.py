"""How much each structural unit matters: MLP neurons and attention-head units per block, and whole
blocks, from one calibration pass over the full model.

Each score is one class in a registry (UNIT_SCORES for neurons and heads, BLOCK_SCORES for whole
blocks) that names the statistics it needs from the pass; the pass gathers only those, and the
config's `importance` / `layer_importance` allow exactly the registered names. The scores:

- magnitude: the norms of the unit's weights (input rows × output columns), no data;
- activation: the RMS of the unit's activation entering the output projection × that projection's
  column norms (Wanda's |W|·‖X‖ summed over a unit);
- taylor / fisher: per calibration window s = Σ g·w over the unit's weights (the first-order change
  of the loss if the unit were removed); taylor = |Σ s|, fisher = Σ s² (the empirical Fisher of a
  mask on the unit). They need a loss: the causal LM's next-token loss on calibration text.
- obs: the order in which greedy Optimal Brain Surgeon removal (SlimGPT / ZipLM, structured) drops
  the units, each step removing the unit whose loss of output projection output, after the kept
  columns absorb it by least squares on the calibration Gram matrix, is least: it ranks units by
  what the refit (`reconstruct`) cannot carry, not by their own size;
- blocks: cosine = 1 − mean cos(block input, block output) per token (ShortGPT's block influence), or
  the Taylor / Fisher score of all the block's weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from services.common.models import families
from services.common.models.families import is_causal_lm
from services.common.calibration.blocks import decoder_blocks
from services.common.contract.registry import NamedRegistry
from services.common.models.architecture import Architecture

# Statistics a score may ask of the calibration pass.
ACTIVATIONS = "activations"  # mean squares of the inputs of the MLP and attention output projections
GRADIENTS = "gradients"  # per-window Σ g·w of every unit and block (needs the model's training loss)
BLOCK_COSINES = "block-cosines"  # cos(block input, block output) per token
FLUCTUATIONS = "fluctuations"  # Σx and Σx² of the inputs of the MLP and attention output projections
GRAMS = "grams"  # Σ xᵀx of the same inputs: what refitting the output projections after a cut solves with


@dataclass
class UnitScores:
    mlp: list[torch.Tensor] = field(default_factory=list)  # per block: [intermediate]
    heads: list[torch.Tensor] = field(default_factory=list)  # per block: [head units]
    blocks: torch.Tensor | None = None  # [blocks]
    # With GRAMS asked for: per block, Σ xᵀx of the MLP output projection's inputs [width, width] and of the
    # attention output projection's [heads·d, heads·d] (None without head cuts), for the cut's refit.
    mlp_grams: list[torch.Tensor] = field(default_factory=list)
    head_grams: list[torch.Tensor | None] = field(default_factory=list)


def _sum1(t: torch.Tensor) -> torch.Tensor:
    return t.sum(-1)


def _norm1(t: torch.Tensor) -> torch.Tensor:
    return t.norm(dim=-1)


def _weight(weight: nn.Parameter) -> torch.Tensor:
    return weight.detach().float()


def _unit_sums(arch: Architecture, block: nn.Module, head_unit: str, values: Callable[[nn.Parameter], torch.Tensor],
               columns: Callable[[nn.Parameter], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-neuron and per-head-unit sums of a per-element quantity: `values` of the unit's input-side
    rows, `columns` of its output projection's columns (weight-shaped; the architecture orients them)."""
    mlp = arch.mlp_rows(block, values, _sum1) + arch.mlp_columns(block, columns, _sum1)
    if arch.attention is None:
        return mlp, None
    d = arch.head_dim
    q, k, v = arch.qkv_rows(block, values, _sum1)
    kv = (k + v).view(arch.kv_heads, d).sum(1)
    q = q.view(arch.heads, d).sum(1) + arch.o_columns(block, columns, _sum1).view(arch.heads, d).sum(1)
    return mlp, _group_heads(arch, q, kv, head_unit)


def _group_heads(arch: Architecture, q: torch.Tensor, kv: torch.Tensor, head_unit: str) -> torch.Tensor:
    per_group = arch.heads // arch.kv_heads
    grouped = q.view(arch.kv_heads, per_group)
    if head_unit == "kv-group":
        return grouped.sum(1) + kv
    return grouped.sum(0)  # query position p within every group is removed together


def _norm_scores(arch: Architecture, block: nn.Module, head_unit: str, rms_mlp: torch.Tensor | None,
                 rms_heads: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """magnitude (rms None) or activation-aware scores."""
    down = arch.mlp_columns(block, _weight, _norm1)
    mlp = down * (rms_mlp if rms_mlp is not None else arch.mlp_rows(block, _weight, _norm1))
    if arch.attention is None:
        return mlp, None
    o = arch.o_columns(block, _weight, _norm1)
    if rms_heads is not None:
        per_column = o * rms_heads
    else:
        per_column = o * arch.qkv_rows(block, _weight, _norm1)[0]
    q = per_column.view(arch.heads, arch.head_dim).sum(1)
    return mlp, _group_heads(arch, q, torch.zeros(arch.kv_heads), head_unit)


@dataclass
class PassStatistics:
    """What one calibration pass gathered, per block, for the scores that asked for it."""

    mlp_square: dict[int, tuple[torch.Tensor, int]] = field(default_factory=dict)  # (Σ x², rows)
    head_square: dict[int, tuple[torch.Tensor, int]] = field(default_factory=dict)
    cosines: list[list] = field(default_factory=list)  # [Σ cos, tokens]
    taylor: list[tuple[torch.Tensor, torch.Tensor | None] | None] = field(default_factory=list)  # Σ s
    fisher: list[tuple[torch.Tensor, torch.Tensor | None] | None] = field(default_factory=list)  # Σ s²
    block_taylor: torch.Tensor | None = None
    block_fisher: torch.Tensor | None = None
    mlp_moments: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=dict)  # (Σ x, Σ x², rows)
    head_moments: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=dict)
    mlp_gram: dict[int, torch.Tensor] = field(default_factory=dict)  # Σ xᵀx
    head_gram: dict[int, torch.Tensor] = field(default_factory=dict)


class UnitScore:
    """Importance of every MLP neuron and head unit of one block; a new score is one subclass
    registered in UNIT_SCORES."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    def score(self, arch: Architecture, block: nn.Module, index: int, head_unit: str, stats: PassStatistics,
              want_heads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([intermediate], [head units] or None) for block `index`."""
        raise NotImplementedError


class BlockScore:
    """Importance of every block; a new score is one subclass registered in BLOCK_SCORES."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    def score(self, stats: PassStatistics) -> torch.Tensor:
        """[blocks]"""
        raise NotImplementedError


UNIT_SCORES: NamedRegistry[UnitScore] = NamedRegistry("unit importance")
BLOCK_SCORES: NamedRegistry[BlockScore] = NamedRegistry("block importance")


@UNIT_SCORES.register
class Magnitude(UnitScore):
    name = "magnitude"
    description = "weight norms (no data)"

    def score(self, arch, block, index, head_unit, stats, want_heads):
        return _norm_scores(arch, block, head_unit, None, None)


@UNIT_SCORES.register
class Activation(UnitScore):
    name = "activation"
    description = "activation-aware (calibration RMS × weight norm)"
    needs = frozenset({ACTIVATIONS})

    def score(self, arch, block, index, head_unit, stats, want_heads):
        total, rows = stats.mlp_square[index]
        rms_heads = None
        if want_heads:
            head_total, head_rows = stats.head_square[index]
            rms_heads = (head_total / head_rows).sqrt()
        return _norm_scores(arch, block, head_unit, (total / rows).sqrt(), rms_heads)


@UNIT_SCORES.register
class Taylor(UnitScore):
    name = "taylor"
    description = "first-order Taylor |Σ g·w| (causal LMs)"
    needs = frozenset({GRADIENTS})

    def score(self, arch, block, index, head_unit, stats, want_heads):
        return _magnitudes(stats.taylor[index])


@UNIT_SCORES.register
class Fisher(UnitScore):
    name = "fisher"
    description = "Fisher Σ (g·w)² (causal LMs)"
    needs = frozenset({GRADIENTS})

    def score(self, arch, block, index, head_unit, stats, want_heads):
        return _magnitudes(stats.fisher[index])


@UNIT_SCORES.register
class Obs(UnitScore):
    name = "obs"
    description = "greedy structured Optimal Brain Surgeon: the order units leave the output projection (dense)"
    needs = frozenset({GRAMS})

    def score(self, arch, block, index, head_unit, stats, want_heads):
        down = arch.oriented(block, arch.mlp.output, _weight)
        width = down.shape[-1]
        mlp = obs_order(down, stats.mlp_gram[index], [torch.tensor([j]) for j in range(width)])
        heads = None
        if want_heads:
            units = arch.head_units(head_unit)
            groups = [arch.kept_o_columns(torch.tensor([u]), head_unit) for u in range(units)]
            heads = obs_order(arch.oriented(block, arch.attention.o, _weight), stats.head_gram[index], groups)
        return mlp, heads


# Ridge on a Gram matrix, relative to its mean diagonal (GPTQ's damping): keeps a solve or an inverse
# well-posed where inputs are nearly collinear or never fire on the calibration text.
GRAM_DAMPING = 0.01


def obs_order(weight: torch.Tensor, gram: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """Greedy structured OBS over the input columns of `weight` [out, in] on inputs with Gram matrix
    `gram` [in, in]: each step removes the group of columns S whose removal, with the remaining columns
    refitted by least squares, adds the least output error, tr(W_S (H⁻¹_SS)⁻¹ W_Sᵀ), then updates W
    and H⁻¹ as if it were gone. Returns [groups]: the step each group was removed at (the last one
    left gets the highest), so keeping the top k keeps what the greedy keeps at k."""
    w = weight.double().clone()
    g = gram.double()
    ridge = GRAM_DAMPING * g.diagonal().mean().clamp(min=1e-12)
    inverse = torch.linalg.inv(g + ridge * torch.eye(len(g), dtype=g.dtype))
    order = torch.full((len(groups),), float(len(groups) - 1))
    if all(len(c) == 1 for c in groups):
        # Float32 updates: three times faster, and the kept sets matched float64's on the cuts tried.
        return _obs_order_columns(w.float(), inverse.float(), torch.cat(groups), order)
    left = list(range(len(groups)))
    for step in range(len(groups) - 1):
        costs = [float(torch.trace(w[:, groups[u]] @ torch.linalg.solve(inverse[groups[u]][:, groups[u]],
                                                                         w[:, groups[u]].t()))) for u in left]
        unit = left.pop(min(range(len(left)), key=costs.__getitem__))
        order[unit] = step
        c = groups[unit]
        block_inverse = torch.linalg.inv(inverse[c][:, c])
        w -= w[:, c] @ block_inverse @ inverse[c, :]
        inverse -= inverse[:, c] @ block_inverse @ inverse[c, :]
        w[:, c] = 0
        inverse[:, c] = 0
        inverse[c, :] = 0
    return order


def _obs_order_columns(w: torch.Tensor, inverse: torch.Tensor, columns: torch.Tensor, order: torch.Tensor
                       ) -> torch.Tensor:
    """obs_order with one column per group: every saliency at once, rank-one updates in place."""
    unit_of = torch.empty(len(columns), dtype=torch.long)
    unit_of[columns] = torch.arange(len(columns))
    gone = torch.ones(w.shape[1], dtype=torch.bool)  # columns in no group never compete
    gone[columns] = False
    for step in range(len(columns) - 1):
        saliency = (w * w).sum(0) / inverse.diagonal().clamp(min=1e-30)
        saliency[gone] = float("inf")
        j = int(saliency.argmin())
        order[unit_of[j]] = step
        row = inverse[j].clone() / inverse[j, j]
        w.addr_(w[:, j].clone(), row, alpha=-1)
        inverse.addr_(inverse[:, j].clone(), row, alpha=-1)
        gone[j] = True
    return order


@UNIT_SCORES.register
class Fluctuation(UnitScore):
    """FLAP (An et al., 2024): a unit whose activation barely varies over the calibration text can be
    removed with little change (its mean could be folded into a bias), whatever its weights' size."""

    name = "fluctuation"
    description = "FLAP's fluctuation: variance of the unit's activation × its output weights' squared norm"
    needs = frozenset({FLUCTUATIONS})

    def score(self, arch, block, index, head_unit, stats, want_heads):
        mlp = _fluctuation(stats.mlp_moments[index], arch.mlp_columns(block, _weight, _square1))
        heads = None
        if want_heads:
            columns = _fluctuation(stats.head_moments[index], arch.o_columns(block, _weight, _square1))
            q = columns.view(arch.heads, arch.head_dim).sum(1)
            heads = _group_heads(arch, q, torch.zeros(arch.kv_heads), head_unit)
        return mlp, heads


def _square1(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).sum(-1)


def _fluctuation(moments: tuple[torch.Tensor, torch.Tensor, int], column_squares: torch.Tensor) -> torch.Tensor:
    """Per input column of an output projection: the variance of that input over the calibration
    tokens × the column's squared norm (`column_squares`)."""
    total, squares, rows = moments
    variance = (squares / rows - (total / rows) ** 2).clamp(min=0)
    return variance * column_squares


@BLOCK_SCORES.register
class Cosine(BlockScore):
    name = "cosine"
    description = "1 - cos(block input, output) on calibration text"
    needs = frozenset({BLOCK_COSINES})

    def score(self, stats):
        return torch.tensor([1.0 - total / count for total, count in stats.cosines])


@BLOCK_SCORES.register
class BlockTaylor(BlockScore):
    name = "taylor"
    description = "Taylor |Σ g·w| of the whole block (causal LMs)"
    needs = frozenset({GRADIENTS})

    def score(self, stats):
        return stats.block_taylor.abs()


@BLOCK_SCORES.register
class BlockFisher(BlockScore):
    name = "fisher"
    description = "Fisher Σ (g·w)² of the whole block (causal LMs)"
    needs = frozenset({GRADIENTS})

    def score(self, stats):
        return stats.block_fisher


def _magnitudes(sums: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    mlp, heads = sums
    return mlp.abs(), heads.abs() if heads is not None else None


def _mean_square(store: dict, key: int):
    """Adds Σ x² over the tokens of x [..., tokens, width] (routed experts: a leading experts axis)."""
    def record(x: torch.Tensor) -> None:
        total, rows = store.get(key, (0, 0))
        store[key] = (total + (x * x).sum(-2), rows + x.shape[-2])
    return record


def _moments(store: dict, key: int):
    def record(x: torch.Tensor) -> None:
        total, squares, rows = store.get(key, (0, 0, 0))
        store[key] = (total + x.sum(-2), squares + (x * x).sum(-2), rows + x.shape[-2])
    return record


def _mean_square_hook(store: dict, key: int):
    record = _mean_square(store, key)
    return lambda _module, args, _output: record(args[0].detach().float().reshape(-1, args[0].shape[-1]))


def _moments_hook(store: dict, key: int):
    record = _moments(store, key)
    return lambda _module, args, _output: record(args[0].detach().float().reshape(-1, args[0].shape[-1]))


def _gram(store: dict, key: int):
    def record(x: torch.Tensor) -> None:
        # One window's product in FP32 (a few times faster than FP64 on a CPU), the sum over windows in FP64.
        store[key] = store.get(key, 0) + (x.float().t() @ x.float()).double()
    return record


def _gram_hook(store: dict, key: int):
    record = _gram(store, key)
    return lambda _module, args, _output: record(args[0].detach().float().reshape(-1, args[0].shape[-1]))


def _cosine_hook(store: list, key: int):
    def hook(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        cos = nn.functional.cosine_similarity(hidden.detach().float(), out.detach().float(), dim=-1)
        store[key][0] += float(cos.sum())
        store[key][1] += cos.numel()
    return hook


def score_units(model: nn.Module, batches: torch.Tensor, importance: str, layer_importance: str, head_unit: str,
                *, want_heads: bool, grams: bool = False, check_cancelled: Callable[[], None] = lambda: None,
                on_window: Callable[[int, int], None] = lambda i, n: None) -> UnitScores:
    """The `importance` score of every unit and the `layer_importance` score of every block, from one
    pass over `batches` gathering what the two scores need (and with `grams`, what a refit of the cut
    output projections needs)."""
    unit_score = UNIT_SCORES.pick(importance, "importance")
    block_score = BLOCK_SCORES.pick(layer_importance, "layer_importance")
    causal = is_causal_lm(model)
    for field_name, chosen in (("importance", unit_score), ("layer_importance", block_score)):
        if GRADIENTS in chosen.needs and not causal:
            raise ValueError(f"{field_name}: {chosen.name} needs a training loss, which an encoder without a task "
                             "head lacks here; use 'activation' or 'magnitude' (and layer_importance 'cosine')")
    arch = Architecture(model, "structured pruning")
    blocks = decoder_blocks(model)
    want_heads = want_heads and arch.attention is not None
    needs = unit_score.needs | block_score.needs | ({GRAMS} if grams else frozenset())
    if GRAMS in needs and arch.routed:
        field_name, ask = (("importance", "use 'activation'") if GRAMS in unit_score.needs
                           else ("reconstruct", "set reconstruct=false"))
        raise families.refuse(model.config, field_name, "routes its MLPs to experts; the least-squares refit and OBS "
                                                        f"order are for dense MLPs ({ask})")
    stats = _calibration_pass(model, arch, blocks, batches, needs, head_unit, want_heads, check_cancelled, on_window)
    scores = UnitScores()
    for i, block in enumerate(blocks):
        mlp, heads = unit_score.score(arch, block, i, head_unit, stats, want_heads)
        scores.mlp.append(mlp)
        scores.heads.append(heads if want_heads else None)
    scores.blocks = block_score.score(stats)
    if grams:
        scores.mlp_grams = [stats.mlp_gram[i] for i in range(len(blocks))]
        scores.head_grams = [stats.head_gram.get(i) for i in range(len(blocks))]
    return scores


def _calibration_pass(model: nn.Module, arch: Architecture, blocks: list[nn.Module], batches: torch.Tensor,
                      needs: frozenset[str], head_unit: str, want_heads: bool, check_cancelled: Callable[[], None],
                      on_window: Callable[[int, int], None]) -> PassStatistics:
    """Forward passes over the calibration windows (with the loss's backward when GRADIENTS is needed),
    hooked for the statistics in `needs` only."""
    stats = PassStatistics(cosines=[[0.0, 0] for _ in blocks], taylor=[None] * len(blocks),
                           fisher=[None] * len(blocks), block_taylor=torch.zeros(len(blocks)),
                           block_fisher=torch.zeros(len(blocks)))
    gradients = GRADIENTS in needs
    handles = []
    for i, block in enumerate(blocks):
        if ACTIVATIONS in needs:
            handles.append(arch.mlp_activation_hook(block, _mean_square(stats.mlp_square, i)))
            if want_heads:
                handles.append(block.get_submodule(arch.attention.o).register_forward_hook(
                    _mean_square_hook(stats.head_square, i)))
        if FLUCTUATIONS in needs:
            handles.append(arch.mlp_activation_hook(block, _moments(stats.mlp_moments, i)))
            if want_heads:
                handles.append(block.get_submodule(arch.attention.o).register_forward_hook(
                    _moments_hook(stats.head_moments, i)))
        if GRAMS in needs:
            handles.append(arch.mlp_activation_hook(block, _gram(stats.mlp_gram, i)))
            if want_heads:
                handles.append(block.get_submodule(arch.attention.o).register_forward_hook(
                    _gram_hook(stats.head_gram, i)))
        if BLOCK_COSINES in needs:
            handles.append(block.register_forward_hook(_cosine_hook(stats.cosines, i), with_kwargs=True))
    extra = {"use_cache": False} if is_causal_lm(model) else {}
    try:
        for w, window in enumerate(batches):
            check_cancelled()
            ids = window.unsqueeze(0)
            if not gradients:
                with torch.no_grad():
                    model(input_ids=ids, **extra)
            else:
                model.zero_grad(set_to_none=True)
                model(input_ids=ids, labels=ids, **extra).loss.backward()
                _add_gradient_sums(stats, arch, blocks, head_unit)
            on_window(w + 1, len(batches))
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return stats


def _add_gradient_sums(stats: PassStatistics, arch: Architecture, blocks: list[nn.Module], head_unit: str) -> None:
    """One window's s = Σ g·w per unit and per block into the Taylor (Σ s) and Fisher (Σ s²) sums."""
    taylor, fisher = stats.taylor, stats.fisher
    for i, block in enumerate(blocks):
        gw = lambda w: (w.grad * w).detach().float() if w.grad is not None else torch.zeros(w.shape)  # noqa: E731
        mlp, heads = _unit_sums(arch, block, head_unit, gw, gw)
        s_block = sum(float((p.grad * p.detach()).sum()) for p in block.parameters() if p.grad is not None)
        taylor[i] = (mlp, heads) if taylor[i] is None else (taylor[i][0] + mlp, _add(taylor[i][1], heads))
        fisher[i] = (mlp ** 2, _sq(heads)) if fisher[i] is None else (
            fisher[i][0] + mlp ** 2, _add(fisher[i][1], _sq(heads)))
        stats.block_taylor[i] += s_block
        stats.block_fisher[i] += s_block ** 2


def _add(a, b):
    return None if a is None or b is None else a + b


def _sq(a):
    return None if a is None else a ** 2
