"""Which modules of a model get which integer scheme."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from services.common.models import families
from services.quantizer.configs import WeightOnlyConfig
from services.quantizer.ct_format import CONV1D
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
        if isinstance(self.module, nn.Embedding):
            return "Embedding"
        return CONV1D if isinstance(self.module, Conv1DLinear) else "Linear"


class Conv1DLinear(nn.Linear):
    """transformers' Conv1D (GPT-2's block projections, weight stored [in, out]) as the nn.Linear it
    computes (weight [out, in]), so every method captures, calibrates and rounds it as any Linear.
    It loads the Conv1D's checkpoint tensors, transposing the weight; ct_format writes its codes back
    in the Conv1D's orientation (kind "Conv1D")."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict and not state_dict[key].is_meta:
            state_dict[key] = state_dict[key].t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _conv1d_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from transformers.pytorch_utils import Conv1D

    return [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]


def linear_conv1d(model: nn.Module) -> int:
    """Replaces each transformers Conv1D of `model` (the streamed skeleton) by a Conv1DLinear; the count."""
    found = _conv1d_modules(model)
    for name, conv in found:
        model.set_submodule(name, Conv1DLinear(conv.nx, conv.nf, bias=conv.bias is not None,
                                               device=conv.weight.device, dtype=conv.weight.dtype))
    return len(found)


def linear_weight(target: Target, weight: torch.Tensor) -> torch.Tensor:
    """The target's weight as its checkpoint stores it, oriented as its module's ([out, in]): a
    Conv1DLinear's checkpoint holds the Conv1D's [in, out]."""
    return weight.t() if isinstance(target.module, Conv1DLinear) else weight


def weight_targets(model: nn.Module, config: WeightOnlyConfig, *, conv1d: bool = False) -> list[Target]:
    """Every Linear (body at `bits`), the token embedding and the LM head (per channel at 8 bits).

    A head tied to the embedding is listed after it with the same scheme, so both share
    one set of integers. `conv1d`: the method takes transformers' Conv1D projections (GPT-2) as
    Linears: they are swapped for Conv1DLinear in `model` (the streamed skeleton, before its blocks
    load) and targeted as body Linears; checkpoint reads go through `linear_weight`. A method that
    leaves it False (one that writes float weights back, or rebuilds its skeleton) refuses such a
    model, naming its family.
    """
    if conv1d:
        linear_conv1d(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embedding is not None and head.weight is embedding.weight
    body = WeightScheme(config.bits, config.group_size, config.symmetric)
    targets: list[Target] = []
    gates = families.expert_gates(model)  # MoE routers and expert gates stay float
    for name, module in model.named_modules():
        if module is embedding and isinstance(module, nn.Embedding):
            if config.embedding_bits:
                targets.append(Target(name, module, _table_scheme(config, config.embedding_bits, module.embedding_dim),
                                      "embedding"))
        elif module is head:
            bits = config.embedding_bits if tied else config.head_bits
            if bits:
                targets.append(Target(name, module, _table_scheme(config, bits, module.weight.shape[1]), "head"))
        elif isinstance(module, nn.Linear) and name not in gates:
            scheme = body.for_layer(module.in_features)
            fallback = config.group_size if scheme.group_size != config.group_size else 0
            targets.append(Target(name, module, scheme, "linear", fallback))
    if _conv1d_modules(model):
        raise _conv1d_refused(model)
    if not any(t.role == "linear" for t in targets):
        raise _no_linears(model)
    # Embedding before a tied head, so the head finds the shared weight already on its grid.
    return sorted(targets, key=lambda t: {"embedding": 0, "linear": 1, "head": 2}[t.role])


def _table_scheme(config: WeightOnlyConfig, bits: int, width: int) -> WeightScheme:
    """An embedding's or head's grid: 8 bits one scale per row; fewer, the body's groups."""
    if bits >= 8:
        return WeightScheme(bits, 0, True)
    return WeightScheme(bits, config.group_size, True).for_layer(width)


def _no_linears(model: nn.Module) -> Exception:
    """The refusal of a model without nn.Linear layers, naming its family."""
    return families.refuse(model.config, "weight quantization", "has no nn.Linear layers to quantize")


def _conv1d_refused(model: nn.Module) -> Exception:
    """The refusal, naming the family, of a method that does not take Conv1D projections (GPT-2)."""
    return families.refuse(
        model.config, "this weight method (mixed precision, awq-transform, smoothquant-transform)",
        "keeps its block projections in transformers' Conv1D (weight stored [in, out]), which this method "
        "would read or write back as nn.Linear weights; RTN, GPTQ, AWQ, QAT and W8A8 / SmoothQuant take "
        "them as Linears and write them in the Conv1D's orientation")


def fallback_report(targets: list[Target]) -> dict[str, int]:
    return {t.name: t.scheme.group_size for t in targets if t.fallback_from}
