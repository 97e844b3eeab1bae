"""Which modules of a model get which integer scheme."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from services.common.models import families
from services.quantizer.configs import WeightOnlyConfig
from services.quantizer.qscheme import WeightScheme


@dataclass(frozen=True)
class Target:
    name: str
    module: nn.Module
    scheme: WeightScheme
    role: str  # "linear", "embedding" or "head"
    fallback_from: int = 0  # the requested group size when this layer had to use another

    @property
    def kind(self) -> str:
        return "Embedding" if isinstance(self.module, nn.Embedding) else "Linear"


def weight_targets(model: nn.Module, config: WeightOnlyConfig) -> list[Target]:
    """Every Linear (body at `bits`), the token embedding and the LM head (per channel at 8 bits).

    A head tied to the embedding is listed after it with the same scheme, so both share
    one set of integers.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embedding is not None and head.weight is embedding.weight
    body = WeightScheme(config.bits, config.group_size, config.symmetric)
    targets: list[Target] = []
    for name, module in model.named_modules():
        if module is embedding and isinstance(module, nn.Embedding):
            if config.embedding_bits:
                targets.append(Target(name, module, WeightScheme(config.embedding_bits, 0, True), "embedding"))
        elif module is head:
            bits = config.embedding_bits if tied else config.head_bits
            if bits:
                targets.append(Target(name, module, WeightScheme(bits, 0, True), "head"))
        elif isinstance(module, nn.Linear):
            scheme = body.for_layer(module.in_features)
            fallback = config.group_size if scheme.group_size != config.group_size else 0
            targets.append(Target(name, module, scheme, "linear", fallback))
    if not any(t.role == "linear" for t in targets):
        raise _no_linears(model)
    # Embedding before a tied head, so the head finds the shared weight already on its grid.
    return sorted(targets, key=lambda t: {"embedding": 0, "linear": 1, "head": 2}[t.role])


def _no_linears(model: nn.Module) -> Exception:
    """The refusal of a model without nn.Linear layers, naming its family (GPT-2 keeps its block
    projections in transformers' Conv1D, which the compressed-tensors layout does not quantize)."""
    family = families.family_of(model.config)
    why = ("keeps its block projections in transformers' Conv1D, not nn.Linear; the compressed-tensors "
           "layout quantizes Linears only" if family and family.conv1d else "has no nn.Linear layers to quantize")
    return families.refuse(model.config, "weight quantization", why)


def fallback_report(targets: list[Target]) -> dict[str, int]:
    return {t.name: t.scheme.group_size for t in targets if t.fallback_from}
