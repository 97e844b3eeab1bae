"""Response-based losses: the student matches what the teacher outputs.

Causal LMs: divergences between temperature-softened next-token distributions on the teacher's
cached top-k tokens, scaled by T² (Hinton et al.) so the gradient's size does not shrink with T.
Encoders: the mean-pooled sentence embedding by MSE and/or 1 - cosine (sentence-transformers'
distillation losses).
"""

from __future__ import annotations

import torch
from torch import nn


def _support_log_probs(student_logits: torch.Tensor, top_logits: torch.Tensor, top_ids: torch.Tensor,
                       temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher, student) log-probabilities on the teacher's top-k tokens at `temperature`: the
    teacher's renormalised over its top-k, the student's over its whole vocabulary (so mass the
    student puts elsewhere is still penalised by forward KL)."""
    teacher = (top_logits.float() / temperature).log_softmax(-1)
    student = (student_logits.float() / temperature).log_softmax(-1).gather(-1, top_ids.long())
    return teacher, student


def logit_divergence(student_logits: torch.Tensor, top_logits: torch.Tensor, top_ids: torch.Tensor,
                     temperature: float, divergence: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of T² · D(teacher, student); `mask` [..] marks the tokens that count."""
    teacher, student = _support_log_probs(student_logits, top_logits, top_ids, temperature)
    if divergence == "forward-kl":
        per_token = (teacher.exp() * (teacher - student)).sum(-1)
    else:
        # Reverse KL and JSD compare two distributions on one support: the student's renormalised there.
        student = student.log_softmax(-1)
        if divergence == "reverse-kl":
            per_token = (student.exp() * (student - teacher)).sum(-1)
        elif divergence == "jsd":
            mixture = torch.logsumexp(torch.stack([teacher, student]), 0) - torch.log(torch.tensor(2.0))
            per_token = 0.5 * ((teacher.exp() * (teacher - mixture)).sum(-1)
                               + (student.exp() * (student - mixture)).sum(-1))
        else:
            raise ValueError(f"divergence: unknown {divergence!r}")
    if mask is not None:
        per_token = per_token[mask.bool()]
    return per_token.mean() * temperature ** 2


def next_token_cross_entropy(student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The hard-label term: the text's own next tokens."""
    return nn.functional.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Pooled [batch, width] embeddings; MSE relative to the teacher's mean square so its size does
    not depend on the embedding's scale."""
    terms = []
    if "mse" in kind:
        terms.append(((student - teacher) ** 2).mean() / (teacher ** 2).mean().clamp(min=1e-12))
    if "cosine" in kind:
        terms.append((1 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean())
    if not terms:
        raise ValueError(f"embedding_loss: unknown {kind!r}")
    return sum(terms)
