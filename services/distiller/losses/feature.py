"""Feature-based loss: student block outputs match the teacher's through a layer map, with a learned
projection where the widths differ (FitNets; TinyBERT's hidden-state loss)."""

from __future__ import annotations

import torch
from torch import nn


def layer_map(student_blocks: int, teacher_blocks: int, how: str, last_k: int = 1,
              explicit: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """(student, teacher) 1-based block outputs to match."""
    if explicit:
        for s, t in explicit:
            if s > student_blocks or t > teacher_blocks:
                raise ValueError(f"feature_layers: {s}:{t} is past the student's {student_blocks} or the "
                                 f"teacher's {teacher_blocks} blocks")
        return explicit
    if how == "uniform":
        return [(j, round(j * teacher_blocks / student_blocks)) for j in range(1, student_blocks + 1)]
    if how == "last-k":
        k = min(last_k, student_blocks, teacher_blocks)
        return [(student_blocks - i, teacher_blocks - i) for i in reversed(range(k))]
    raise ValueError(f"layer_map: unknown {how!r}")


def width_map(student_width: int, teacher_width: int, basis: torch.Tensor | None = None) -> nn.Module:
    """Identity at equal widths; else a Linear from the student's width to the teacher's, starting
    from `basis` [teacher width, student width] (the directions the student was narrowed to) when
    there is one."""
    if student_width == teacher_width:
        return nn.Identity()
    linear = nn.Linear(student_width, teacher_width)
    if basis is not None:
        linear.weight.data = basis.detach().float().clone()
        linear.bias.data.zero_()
    return linear


class Projections(nn.Module):
    """One map per matched pair where the widths differ (identity otherwise), trained with the student."""

    def __init__(self, pairs: list[tuple[int, int]], student_width: int, teacher_width: int,
                 basis: torch.Tensor | None = None) -> None:
        super().__init__()
        self.pairs = pairs
        self.maps = nn.ModuleList([width_map(student_width, teacher_width, basis) for _ in pairs])

    def forward(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.maps[index](hidden)


def hidden_state_loss(student_states: tuple[torch.Tensor, ...], teacher_states: tuple[torch.Tensor, ...],
                      projections: Projections, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the pairs of the masked token-state MSE, relative to the teacher's mean square.
    `*_states` are the models' hidden_states (index 0 the embeddings, j the output of block j)."""
    weights = mask.unsqueeze(-1).float()
    total = 0.0
    for i, (s, t) in enumerate(projections.pairs):
        target = teacher_states[t].float()
        mapped = projections(i, student_states[s].float())
        scale = ((target ** 2) * weights).sum().clamp(min=1e-12)
        total = total + (((mapped - target) ** 2) * weights).sum() / scale
    return total / len(projections.pairs)
