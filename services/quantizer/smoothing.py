"""Per-channel scales folded into the operation that produces a Linear's input.

For Y = X·Wᵀ and any positive per-input-channel s, Y = (X/s)·(W·s)ᵀ. When X comes from a
norm with a weight (or from a Linear with nothing nonlinear in between), X/s is had for
free by dividing that weight, so the float model computes exactly the same function
while the quantizer sees easier inputs (SmoothQuant) or better-placed weights (AWQ).
Only these producer → consumer pairs are exact; any other Linear is left unscaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from services.common.models import families

# (producer, consumers, scoring) relative to a block: a Linear feeding Linears with nothing
# nonlinear between, wherever these names mean what they do in Llama and BERT. v → o holds only
# without grouped-query attention; the shape check below drops it otherwise. A norm's readers come
# from the family table (families.Family.norm_readers): a name alone cannot say whether a norm feeds
# a Linear or normalises an output (OLMo2's post_attention_layernorm does the latter).
# The third item names a token-wise module whose output scores the consumers' candidate
# weights through its nonlinearity (AWQ); empty means the consumers' own outputs.
LINEAR_PAIRS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("mlp.up_proj", ("mlp.down_proj",), ""),
    ("self_attn.v_proj", ("self_attn.o_proj",), ""),
    ("attention.self.value", ("attention.output.dense",), ""),
)
NormReaders = tuple[tuple[str, tuple[str, ...]], ...]


def _norm_pairs(norm_readers: NormReaders) -> list[tuple[str, tuple[str, ...], str]]:
    """A norm's readers scored through the MLP module when they are its inputs (AWQ), else by themselves."""
    return [(norm, readers, "mlp" if all(r.startswith("mlp.") for r in readers) else "")
            for norm, readers in norm_readers]


@dataclass(frozen=True)
class SmoothingGroup:
    producer: str  # module name relative to the block
    consumers: tuple[str, ...]
    module: str = ""  # token-wise module that scores candidates; "" = the consumers' outputs


def _is_scalable_norm(module: nn.Module, width: int) -> bool:
    # Gemma-style norms multiply by (1 + weight): dividing the weight would not divide the output.
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    return (("RMSNorm" in name or "LayerNorm" in name) and "Gemma" not in name
            and isinstance(weight, torch.Tensor) and weight.shape == (width,))


def smoothing_groups(block: nn.Module, norm_readers: NormReaders | None = None) -> list[SmoothingGroup]:
    """The block's exact producer → consumers pairs. `norm_readers`: the family's (families.py); None
    means Llama's names, for a caller holding a bare Llama or BERT block."""
    if norm_readers is None:
        norm_readers = families.FAMILIES["llama"].norm_readers
    groups = []
    modules = dict(block.named_modules())
    for producer, consumers, scoring in (*_norm_pairs(norm_readers), *LINEAR_PAIRS):
        if producer not in modules or not all(isinstance(modules.get(c), nn.Linear) for c in consumers):
            continue
        width = modules[consumers[0]].in_features
        if any(modules[c].in_features != width for c in consumers):
            continue
        source = modules[producer]
        ok = _is_scalable_norm(source, width) or (isinstance(source, nn.Linear) and source.out_features == width)
        if ok:
            groups.append(SmoothingGroup(producer, consumers, scoring if scoring in modules else ""))
    return groups


@torch.no_grad()
def fold(producer: nn.Module, consumers: list[nn.Linear], scales: torch.Tensor) -> None:
    """Divides the producer's output channels by `scales` and multiplies the consumers' input columns."""
    if isinstance(producer, nn.Linear):
        producer.weight.div_(scales[:, None])
    else:
        producer.weight.div_(scales)
    if getattr(producer, "bias", None) is not None:
        producer.bias.div_(scales)
    for linear in consumers:
        linear.weight.mul_(scales[None, :])


def normalise(scales: torch.Tensor) -> torch.Tensor:
    """Geometric-mean-centred scales, so neither side's magnitudes drift far from 1."""
    scales = scales.clamp(min=1e-4)
    return scales / (scales.max() * scales.min()).sqrt()
