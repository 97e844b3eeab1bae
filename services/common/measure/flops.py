"""Forward FLOPs and parameter counts of a model at an evaluation shape.

FLOPs come from torch.utils.flop_counter running the model once: the dense matmul FLOPs PyTorch
eager executes whatever the zeros (on CPU the attention-score products inside SDPA are not among
them; at 128 tokens, counted by hand, about 3 % of either built-in model's total). Parameters are
counted once per shared tensor (a tied LM head is the embedding); `nonzero` counts what is left
after unstructured pruning.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from services.common.models.families import is_causal_lm


def forward_flops(model: nn.Module, sequence_length: int, batch: int = 1) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward on [batch, sequence_length] tokens (a causal LM's logits for every
    position, as the evaluator's prefill computes them), and per module (FlopCounterMode's
    hierarchical names, e.g. "BertModel.encoder.layer.0")."""
    causal = is_causal_lm(model)
    ids = torch.zeros(batch, sequence_length, dtype=torch.long)
    extra = {"use_cache": False} if causal else {}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, **extra)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module


def parameter_counts(model: nn.Module) -> dict[str, int]:
    seen: set[int] = set()
    total = nonzero = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if not param.is_meta:
            nonzero += int(torch.count_nonzero(param))
    return {"parameters": total, "nonzero_parameters": nonzero}
