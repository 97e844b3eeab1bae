"""Response-based losses: the student matches what the teacher outputs.

Causal LMs: divergences between temperature-softened next-token distributions on the teacher's
cached top-k tokens, scaled by T² (Hinton et al.) so the gradient's size does not shrink with T.
Encoders: the mean-pooled sentence embedding by MSE and/or 1 - cosine (sentence-transformers'
distillation losses).

Each divergence and each embedding loss is one class in its registry (DIVERGENCES,
EMBEDDING_LOSSES); the config's `divergence` and `embedding_loss` allow exactly the registered names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from services.common.contract.registry import NamedRegistry


def _support_log_probs(student_logits: torch.Tensor, top_logits: torch.Tensor, top_ids: torch.Tensor,
                       temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher, student) log-probabilities on the teacher's top-k tokens at `temperature`: the
    teacher's renormalised over its top-k, the student's over its whole vocabulary (so mass the
    student puts elsewhere is still penalised by forward KL)."""
    teacher = (top_logits.float() / temperature).log_softmax(-1)
    student = (student_logits.float() / temperature).log_softmax(-1).gather(-1, top_ids.long())
    return teacher, student


class Divergence:
    """D(teacher, student) per token from log-probabilities on the teacher's top-k tokens."""

    name: ClassVar[str]
    description: ClassVar[str]
    # Compare two distributions on one support: the student's renormalised over the top-k first
    # (forward KL keeps the student's whole-vocabulary probabilities, so mass elsewhere still costs).
    renormalised_student: ClassVar[bool] = True

    def per_token(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


DIVERGENCES: NamedRegistry[Divergence] = NamedRegistry("divergence")


@DIVERGENCES.register
class ForwardKl(Divergence):
    name = "forward-kl"
    description = "KL(teacher ‖ student)"
    renormalised_student = False

    def per_token(self, teacher, student):
        return (teacher.exp() * (teacher - student)).sum(-1)


@DIVERGENCES.register
class ReverseKl(Divergence):
    name = "reverse-kl"
    description = "KL(student ‖ teacher)"

    def per_token(self, teacher, student):
        return (student.exp() * (student - teacher)).sum(-1)


@DIVERGENCES.register
class JensenShannon(Divergence):
    name = "jsd"
    description = "Jensen-Shannon"

    def per_token(self, teacher, student):
        mixture = torch.logsumexp(torch.stack([teacher, student]), 0) - torch.log(torch.tensor(2.0))
        return 0.5 * ((teacher.exp() * (teacher - mixture)).sum(-1) + (student.exp() * (student - mixture)).sum(-1))


def logit_divergence(student_logits: torch.Tensor, top_logits: torch.Tensor, top_ids: torch.Tensor,
                     temperature: float, divergence: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of T² · D(teacher, student), D the registered `divergence`; `mask` [..] marks
    the tokens that count."""
    chosen = DIVERGENCES.pick(divergence, "divergence")
    teacher, student = _support_log_probs(student_logits, top_logits, top_ids, temperature)
    if chosen.renormalised_student:
        student = student.log_softmax(-1)
    per_token = chosen.per_token(teacher, student)
    if mask is not None:
        per_token = per_token[mask.bool()]
    return per_token.mean() * temperature ** 2


def next_token_cross_entropy(student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The hard-label term: the text's own next tokens."""
    return nn.functional.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE relative to the teacher's mean square, so its size does not depend on the embedding's scale."""
    return ((student - teacher) ** 2).mean() / (teacher ** 2).mean().clamp(min=1e-12)


def _cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (1 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()


class EmbeddingLoss:
    """A loss between pooled [batch, width] embeddings: the sum of its terms."""

    name: ClassVar[str]
    description: ClassVar[str]
    terms: ClassVar[tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...]]


EMBEDDING_LOSSES: NamedRegistry[EmbeddingLoss] = NamedRegistry("embedding loss")


@EMBEDDING_LOSSES.register
class MseAndCosine(EmbeddingLoss):
    name = "mse+cosine"
    description = "the sum of the two below"
    terms = (_relative_mse, _cosine_distance)


@EMBEDDING_LOSSES.register
class Mse(EmbeddingLoss):
    name = "mse"
    description = "MSE relative to the teacher's mean square"
    terms = (_relative_mse,)


@EMBEDDING_LOSSES.register
class Cosine(EmbeddingLoss):
    name = "cosine"
    description = "1 - cosine"
    terms = (_cosine_distance,)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """The registered embedding loss `kind` between pooled [batch, width] embeddings."""
    return sum(term(student, teacher) for term in EMBEDDING_LOSSES.pick(kind, "embedding_loss").terms)
