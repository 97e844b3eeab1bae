"""The causal-LM graph engines decode with: flat past keys/values in, logits and flat present
keys/values out. ONNX exports it as is (the caller feeds the presents back); OpenVINO turns the
past/present pairs into variables of the request (stateful).

What the tracers need of some families (`traceable`, and the cache `LogitsWithCache` builds):
sliding-window layers (Mistral, Gemma 2/3) keep their whole history and let the mask's window hide
what lies beyond it; routed experts (Mixtral, Qwen2/3-MoE) run densely, weighted by the router;
Falcon's ALiBi bias is built without a bf16 multiply; Falcon's cache has one KV head when
multi-query (`CacheGeometry`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
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
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=self.model.config)
        # Every layer keeps its whole history, sliding-window ones too: a DynamicSlidingWindowLayer
        # counts its tokens in a Python int (traced as the constant 0, which sizes the mask to the
        # new tokens only) and trims to the window with a branch on that count. Kept whole, the
        # mask's own sliding-window function hides what lies beyond the window, at any length (the
        # engine's cache then holds the whole sequence for those layers too: more memory than
        # transformers' trimmed one, the same logits).
        cache.layers = [DynamicLayer() if layer.is_sliding else layer for layer in cache.layers]
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


# The experts implementation the exporters trace MoE models with (registered on first use).
DENSE_EXPERTS = "modelpress_dense"


def dense_experts_forward(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """Routed experts computed as a fixed graph: every expert runs on every token and its output is
    weighted by the router's weight for it (0 where the expert was not chosen), so the result is
    the routed one. transformers' own implementations gather the chosen tokens with data-dependent
    shapes (eager: nonzero and a loop over the experts hit; grouped_mm: histc offsets, which neither
    the ONNX exporter nor OpenVINO converts) or gather each pair's weight matrices (batched_mm: a
    MatMul whose weights are no longer a constant, so weight compression passes it by). Here each
    expert's projections are a constant slice of the fused parameter: a plain MatMul an INT8/INT4
    weight compressor quantizes. The cost is num_experts / top_k times the routed MLP arithmetic."""
    num_experts = int(experts.num_experts)
    # (tokens, experts): the router's weight for each expert, 0 for those not in the token's top k.
    chosen = top_k_index.unsqueeze(-1) == torch.arange(num_experts, device=top_k_index.device)
    weights = (chosen.to(top_k_weights.dtype) * top_k_weights.unsqueeze(-1)).sum(dim=1)
    transposed = getattr(experts, "is_transposed", False)
    has_gate, has_bias = getattr(experts, "has_gate", True), getattr(experts, "has_bias", False)

    def linear(x, weight, bias):
        # A MatMul, not F.linear: the ONNX exporter writes a 2-D linear as Gemm, which ONNX
        # Runtime's blockwise weight quantizer (MatMulNBits) passes by.
        out = x @ (weight if transposed else weight.transpose(0, 1))
        return out if bias is None else out + bias

    out = torch.zeros_like(hidden_states)
    for e in range(num_experts):
        if has_gate:
            projected = experts._apply_gate(linear(hidden_states, experts.gate_up_proj[e],
                                                   experts.gate_up_proj_bias[e] if has_bias else None))
        else:
            projected = experts.act_fn(linear(hidden_states, experts.up_proj[e],
                                              experts.up_proj_bias[e] if has_bias else None))
        projected = linear(projected, experts.down_proj[e], experts.down_proj_bias[e] if has_bias else None)
        if getattr(experts, "has_post_expert_norm", False):
            projected = experts.post_expert_norm(projected)
        out = out + projected * weights[:, e:e + 1]
    return out.to(hidden_states.dtype)


def _alibi_slopes(num_heads: int) -> list[float]:
    """Falcon's (BLOOM's) ALiBi slopes, as `build_alibi_tensor` computes them."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** p for p in range(1, 1 + closest)]
    if closest != num_heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** p for p in range(1, 1 + 2 * min(closest, num_heads - closest), 2)]
    return slopes


def _float_alibi(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Falcon's `build_alibi_tensor` with its bf16 product done as an f32 one rounded to bf16: the
    same numbers (a bf16 multiply is an f32 one rounded), but no bf16 Mul, which ONNX Runtime's CPU
    provider does not implement, and the slopes a constant."""
    batch, length = attention_mask.shape
    slopes = torch.tensor(_alibi_slopes(num_heads), dtype=torch.float32, device=attention_mask.device)
    positions = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]
    product = slopes[..., None].to(torch.bfloat16).float() * positions.to(torch.bfloat16).float()
    return product.to(torch.bfloat16).reshape(batch * num_heads, 1, length).to(dtype)


@contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """The model as the exporters trace it, restored afterwards: routed experts (transformers'
    `@use_experts_implementation` classes) switched to `dense_experts_forward`, and Falcon's ALiBi
    bias built without a bf16 multiply."""
    config = model.config
    with _patched_alibi(config):
        # transformers' experts classes: fused 3-D gate_up_proj / down_proj and the dispatching forward.
        if not any(hasattr(m, "num_experts") and hasattr(m, "down_proj") and hasattr(m, "has_gate")
                   for m in model.modules()):
            yield model
            return
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        if DENSE_EXPERTS not in ALL_EXPERTS_FUNCTIONS:
            ALL_EXPERTS_FUNCTIONS[DENSE_EXPERTS] = dense_experts_forward
        before = config._experts_implementation
        config._experts_implementation = DENSE_EXPERTS
        try:
            yield model
        finally:
            config._experts_implementation = before


@contextmanager
def _patched_alibi(config) -> Iterator[None]:
    if getattr(config, "model_type", "") != "falcon" or not getattr(config, "alibi", False):
        yield
        return
    from transformers.models.falcon import modeling_falcon

    original = modeling_falcon.build_alibi_tensor
    modeling_falcon.build_alibi_tensor = _float_alibi
    try:
        yield
    finally:
        modeling_falcon.build_alibi_tensor = original


@dataclass(frozen=True)
class CacheGeometry:
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> CacheGeometry:
        heads = int(config.num_attention_heads)
        return cls(layers=int(config.num_hidden_layers), kv_heads=_cached_heads(config, heads),
                   head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads))

    def names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    def bytes_per_token(self, element_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * element_bytes


def _cached_heads(config, heads: int) -> int:
    """The heads axis of the cached keys and values: the config's KV heads, except Falcon's, which
    names them num_kv_heads and caches one head when multi_query (Falcon-7B), and every query head
    with new_decoder_architecture (Falcon-40B broadcasts its KV groups before caching them)."""
    if getattr(config, "model_type", "") == "falcon":
        if config.new_decoder_architecture:
            return heads
        return 1 if config.multi_query else int(config.num_kv_heads or heads)
    return int(getattr(config, "num_key_value_heads", None) or heads)


def sample_inputs(model: nn.Module, sample_length: int = 8, past_length: int = 4) -> tuple:
    """Trace inputs: a non-empty past, so the traced graph concatenates onto it."""
    geometry = CacheGeometry.of(model.config)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(5, max(6, min(vocab, 32000)), (1, sample_length), generator=torch.Generator().manual_seed(0))
    past = [torch.zeros(1, geometry.kv_heads, past_length, geometry.head_dim) for _ in range(2 * geometry.layers)]
    mask = torch.ones(1, past_length + sample_length, dtype=torch.long)
    positions = torch.arange(past_length, past_length + sample_length)[None]
    return (ids, mask, positions, *past)
