"""Recovery: a short fine-tune of the pruned model with its unpruned input as the teacher, on
calibration text only, bounded by wall time and steps, cancellable between steps.

Causal LMs match the teacher's next-token distributions (KL(teacher ‖ student) on the logits);
encoders match its token states (MSE, relative to the teacher's mean square) and pooled sentence
embeddings (1 − cosine), what sentence-transformers' distillation does. Weights zeroed by
unstructured pruning stay zero: their gradients are masked and the mask re-applied after a step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from services.common.models.families import is_causal_lm
from services.common.datasets.calibration_text import text_pieces
from services.pruner.configs import RecoveryConfig


@dataclass
class RecoveryOutcome:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float  # mean of the last few steps


def _causal_batches(tokenizer, text: str, config: RecoveryConfig, generator: torch.Generator):
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    count = ids.numel() // config.recovery_sequence_length
    if count < 1:
        raise ValueError("recovery: the calibration text is shorter than one recovery_sequence_length window")
    windows = ids[: count * config.recovery_sequence_length].view(count, config.recovery_sequence_length)
    while True:
        yield {"input_ids": windows[torch.randint(count, (config.recovery_batch,), generator=generator)]}


def _encoder_batches(tokenizer, text: str, config: RecoveryConfig, generator: torch.Generator):
    pieces = text_pieces(text)
    if not pieces:
        raise ValueError("recovery: the calibration text has no paragraph of 30 characters or more")
    while True:
        picks = torch.randint(len(pieces), (config.recovery_batch,), generator=generator).tolist()
        yield dict(tokenizer([pieces[i] for i in picks], padding=True, truncation=True,
                             max_length=config.recovery_sequence_length, return_tensors="pt"))


def _causal_loss(student: nn.Module, teacher: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        target = teacher(**batch, use_cache=False).logits.float().log_softmax(-1)
    logits = student(**batch, use_cache=False).logits.float().log_softmax(-1)
    return nn.functional.kl_div(logits.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")


def _encoder_loss(student: nn.Module, teacher: nn.Module, batch: dict) -> torch.Tensor:
    mask = batch["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad():
        target = teacher(**batch).last_hidden_state.float()
        scale = ((target ** 2) * mask).sum() / mask.sum() / target.shape[-1]
    hidden = student(**batch).last_hidden_state.float()
    states = (((hidden - target) ** 2) * mask).sum() / mask.sum() / target.shape[-1] / scale
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled_target = (target * mask).sum(1) / mask.sum(1)
    return states + (1 - nn.functional.cosine_similarity(pooled, pooled_target, dim=-1)).mean()


def zero_masks(model: nn.Module, names: list[str]) -> dict[nn.Parameter, torch.Tensor]:
    """Keep-masks of the given Linears' weights where they are already zero (unstructured pruning)."""
    return {model.get_submodule(n).weight: model.get_submodule(n).weight.detach() != 0 for n in names}


def recover(student: nn.Module, teacher: nn.Module, tokenizer, text: str, config: RecoveryConfig,
            on_step: Callable[[int, float, float], None], *, masks: dict | None = None,
            minutes: float | None = None, seed: int = 0) -> RecoveryOutcome:
    """Fine-tunes `student` in place; `on_step(step, loss, seconds)` after every step (the caller's
    reporter raises there on cancel)."""
    budget = (config.recovery_minutes if minutes is None else minutes) * 60.0
    causal = is_causal_lm(student)
    generator = torch.Generator().manual_seed(seed)
    batches = (_causal_batches if causal else _encoder_batches)(tokenizer, text, config, generator)
    loss_of = _causal_loss if causal else _encoder_loss
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.recovery_learning_rate, weight_decay=0.0)
    masks = masks or {}
    student.train()
    losses: list[float] = []
    start = time.monotonic()
    try:
        with torch.enable_grad():
            while time.monotonic() - start < budget and (not config.recovery_steps or
                                                         len(losses) < config.recovery_steps):
                loss = loss_of(student, teacher, next(batches))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for param, keep in masks.items():
                    if param.grad is not None:
                        param.grad.mul_(keep)
                optimizer.step()
                with torch.no_grad():
                    for param, keep in masks.items():
                        param.mul_(keep)
                losses.append(loss.item())
                on_step(len(losses), losses[-1], time.monotonic() - start)
    finally:
        student.eval()
        optimizer.zero_grad(set_to_none=True)
        for p in params:
            p.requires_grad_(False)
    tail = losses[-10:]
    return RecoveryOutcome(len(losses), time.monotonic() - start, losses[0] if losses else 0.0,
                           sum(tail) / len(tail) if tail else 0.0)
