"""The causal-LM graph engines decode with: flat past keys/values in, logits and flat present
keys/values out. ONNX exports it as is (the caller feeds the presents back); OpenVINO turns the
past/present pairs into variables of the request (stateful)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

INPUTS = ["input_ids", "attention_mask", "position_ids"]


class LogitsWithCache(nn.Module):
    """Flat past keys/values in, logits and flat present keys/values out: the shape the stateful
    transformation turns into variables."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = int(model.config.num_hidden_layers)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.model.config)
        # Filled directly: DynamicLayer.update would concatenate onto a 1-D empty tensor, which
        # the converter rejects (rank mismatch), and the past would be traced as a constant.
        for i, layer in enumerate(cache.layers):
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
            layer.dtype, layer.device, layer.is_initialized = past[0].dtype, past[0].device, True
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        flat = []
        for layer in out.past_key_values.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


@dataclass(frozen=True)
class CacheGeometry:
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> "CacheGeometry":
        heads = int(config.num_attention_heads)
        return cls(layers=int(config.num_hidden_layers),
                   kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
                   head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads))

    def names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    def bytes_per_token(self, element_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * element_bytes


def sample_inputs(model: nn.Module, sample_length: int = 8, past_length: int = 4) -> tuple:
    """Trace inputs: a non-empty past, so the traced graph concatenates onto it."""
    geometry = CacheGeometry.of(model.config)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(5, max(6, min(vocab, 32000)), (1, sample_length), generator=torch.Generator().manual_seed(0))
    past = [torch.zeros(1, geometry.kv_heads, past_length, geometry.head_dim) for _ in range(2 * geometry.layers)]
    mask = torch.ones(1, past_length + sample_length, dtype=torch.long)
    positions = torch.arange(past_length, past_length + sample_length)[None]
    return (ids, mask, positions, *past)
