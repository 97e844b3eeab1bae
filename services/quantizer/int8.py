"""INT8 weight-only quantization: symmetric, one scale per output channel (per row for embeddings).

Round-to-nearest with scale = max|w| / 127 keeps the grid symmetric around zero, so zero
stays exact and no zero-point is stored; -128 is left unused for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from services.common.models.packed import Int8Embedding, Int8Linear
from services.quantizer.configs import Int8WeightOnlyConfig

QMAX = 127


def quantize_per_row(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (int8 weights, float32 scales[rows]) with weight ≈ q * scale[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / QMAX
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def _packed_linear(linear: nn.Linear) -> Int8Linear:
    packed = Int8Linear(linear.in_features, linear.out_features, linear.bias is not None)
    packed.weight, packed.weight_scale = quantize_per_row(linear.weight)
    if linear.bias is not None:
        packed.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
    return packed


def _packed_embedding(embedding: nn.Embedding) -> Int8Embedding:
    packed = Int8Embedding(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
    packed.weight, packed.weight_scale = quantize_per_row(embedding.weight)
    return packed


def quantizable_modules(model: nn.Module, config: Int8WeightOnlyConfig) -> list[tuple[str, nn.Module]]:
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if module is out_emb and not config.include_lm_head:
                continue
            chosen.append((name, module))
        elif isinstance(module, nn.Embedding) and config.include_embeddings:
            chosen.append((name, module))
    return chosen


def quantize_int8_weight_only(
    model: nn.Module,
    config: Int8WeightOnlyConfig,
    on_layer: Callable[[int, int, str, float], None] = lambda *_: None,
) -> dict:
    """Replaces Linear (and Embedding) modules in place; returns per-model figures.

    `on_layer(i, n, name, rel_error)` is called after each module (progress, and the
    place a cancel takes effect). A tied LM head shares the embedding's int8 tensors.
    """
    modules = quantizable_modules(model, config)
    if not modules:
        raise ValueError("the model has no Linear or Embedding layers to quantize")
    by_weight: dict[int, nn.Module] = {}
    errors = []
    for i, (name, module) in enumerate(modules):
        key = module.weight.data_ptr()
        if key in by_weight:  # tied to a module already packed: share it
            shared = by_weight[key]
            packed = Int8Linear(module.in_features, module.out_features, module.bias is not None)
            packed.weight, packed.weight_scale = shared.weight, shared.weight_scale
        else:
            packed = _packed_linear(module) if isinstance(module, nn.Linear) else _packed_embedding(module)
            by_weight[key] = packed
        with torch.no_grad():
            w = module.weight.float()
            error = float((packed.dequantize() - w).norm() / w.norm().clamp(min=1e-12))
        model.set_submodule(name, packed)
        errors.append(error)
        on_layer(i + 1, len(modules), name, error)
    return {
        "quantized_modules": len(modules),
        "mean_relative_weight_error": sum(errors) / len(errors),
        "max_relative_weight_error": max(errors),
        "bits": 8,
    }
