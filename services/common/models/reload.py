"""A written model folder reloads with stock transformers and computes what the model in memory does.

Run by every stage that changes a model's shape (a pruner cut, a distiller's student), so a folder
that does not reload, or reloads differently, fails its own stage, not a later one."""

from __future__ import annotations

from pathlib import Path

import torch

from services.common.models.families import is_causal_lm
from services.common.models import modelio

TOLERANCE = 1e-3


@torch.no_grad()
def reload_difference(model, folder: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      what: str = "the model") -> float:
    """Max |Δ| between the outputs (logits, or last hidden states) of `model` and of `folder` reloaded;
    a RuntimeError naming `what` past the tolerance."""
    reloaded = modelio.load_model(folder, dtype=torch.float32)
    inputs = {"input_ids": input_ids} | ({"attention_mask": attention_mask} if attention_mask is not None else {})
    causal = is_causal_lm(model)

    def out(m) -> torch.Tensor:
        return m(**inputs, use_cache=False).logits if causal else m(**inputs).last_hidden_state

    difference = float((out(model) - out(reloaded)).abs().max())
    if difference > TOLERANCE:
        raise RuntimeError(f"{what} reloads with different outputs (max |Δ| {difference:.3g})")
    return difference
