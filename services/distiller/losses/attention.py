"""Attention-based losses.

distribution: KL(teacher ‖ student) of the attention probabilities of matched blocks, head by head
(TinyBERT); needs equal head counts. relations: MiniLMv2's self-attention relations, softmax(X Xᵀ/√d)
for X each of the queries, keys and values split into the same number of relation heads in both
models, so any widths and head counts match; KL(teacher ‖ student) per relation row.
"""

from __future__ import annotations

import math

import torch


def _row_kl(teacher_probs: torch.Tensor, student_probs: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """[batch, heads, L, L] probabilities; mean over heads and the valid query rows."""
    t = teacher_probs.float().clamp(min=1e-12)
    s = student_probs.float().clamp(min=1e-12)
    per_row = (t * (t.log() - s.log())).sum(-1)  # [batch, heads, L]
    rows = query_mask.bool().unsqueeze(1).expand_as(per_row)
    return per_row[rows].mean()


def distribution_loss(student_attentions, teacher_attentions, pairs: list[tuple[int, int]],
                      mask: torch.Tensor) -> torch.Tensor:
    """`*_attentions`: per block [batch, heads, L, L] (output_attentions=True); pairs are 1-based blocks."""
    return sum(_row_kl(teacher_attentions[t - 1], student_attentions[s - 1], mask) for s, t in pairs) / len(pairs)


def relation(x: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """[batch, L, width] -> [batch, heads, L, L] relation probabilities (padded keys get none)."""
    batch, length, width = x.shape
    if width % heads:
        raise ValueError(f"relation_heads: {heads} does not divide the width {width}")
    split = x.float().view(batch, length, heads, width // heads).transpose(1, 2)
    scores = split @ split.transpose(-1, -2) / math.sqrt(width // heads)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(-1)


def relation_loss(student_qkv: tuple[torch.Tensor, ...], teacher_qkv: tuple[torch.Tensor, ...], heads: int,
                  mask: torch.Tensor) -> torch.Tensor:
    """Sum over Q-Q, K-K and V-V of the relation KL of one matched block pair."""
    return sum(_row_kl(relation(t, heads, mask), relation(s, heads, mask), mask)
               for s, t in zip(student_qkv, teacher_qkv))
