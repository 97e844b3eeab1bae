"""How to cut a block's units out so the result is a smaller model of the same class that stock
transformers reloads from its config. Which families allow which cuts, and where their units are, is
declared once in families.py (`Family.structured`).

Llama-style decoders (Llama, Mistral, Qwen2/3: `head_dim` in the config) support layers, MLP neurons and
heads: the same count removed from every layer, whole KV groups or the same number of query heads per
group under GQA. BERT-style encoders support layers and MLP neurons; heads are refused, because BERT
derives the head size from hidden_size / num_attention_heads, so fewer heads with the same hidden size
do not reload.
"""

from __future__ import annotations

import torch
from torch import nn

from services.common.models import families
from services.common.models.families import Attention, Mlp
from services.common.models.modelio import UnsupportedModelError

BERT_HEADS = ("heads_keep: BERT-style encoders derive the head size from hidden_size / num_attention_heads, so "
              "a BERT with fewer heads does not reload in stock transformers; prune layers or MLP neurons instead")
# What a refusal names when the caller does not say which method it runs.
STRUCTURED = "structured pruning"


def slice_linear(linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
                 ) -> nn.Linear:
    """A new Linear keeping output `rows` and input `cols` (indices, in order) of `linear`."""
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = linear.bias
    if bias is not None and rows is not None:
        bias = bias.detach()[rows]
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    out.weight.data = weight.clone()
    if bias is not None:
        out.bias.data = bias.detach().clone()
    return out


class Architecture:
    """Names of one block's units, relative to the block, and the config fields they set."""

    def __init__(self, model: nn.Module, method: str = STRUCTURED) -> None:
        self.config = model.config
        self.model_type = getattr(model.config, "model_type", "")
        family = families.family_of(model.config)
        if family is None or not family.structured or family.mlp is None:
            declared = [f.model_type for f in families.FAMILIES.values() if f.structured]
            raise families.refuse(model.config, method,
                                  f"declares no structured cuts stock transformers would reload; declared for "
                                  f"{', '.join(declared)}")
        self.family = family
        self.mlp: Mlp = family.mlp
        # Heads are cut only where the config keeps head_dim (BERT_HEADS); their projections are read anyway.
        self.attention: Attention | None = family.attention if "heads" in family.structured else None
        self.qkv = family.attention.inputs
        self.attention_output = family.attention.o

    @property
    def bert_like(self) -> bool:
        """The head size is derived from hidden_size / num_attention_heads (no head cuts)."""
        return "heads" not in self.family.structured

    @property
    def residual_readers(self) -> tuple[str, ...]:
        """A block's Linears that read the residual stream (attention q/k/v, the MLP's inputs)."""
        return self.qkv + self.mlp.inputs

    @property
    def residual_writers(self) -> tuple[str, ...]:
        """A block's Linears that write the residual stream (attention output, MLP output)."""
        return (self.attention_output, self.mlp.output)

    @property
    def heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.heads

    def check_heads(self, head_unit: str) -> None:
        if self.attention is None:
            raise UnsupportedModelError(BERT_HEADS)
        if head_unit == "kv-group" and self.kv_heads < 2:
            raise UnsupportedModelError("heads_keep: the model has one KV group; use head_unit 'query-head'")

    def head_units(self, head_unit: str) -> int:
        """How many removable units a block has: KV groups, or query heads per group."""
        return self.kv_heads if head_unit == "kv-group" else self.heads // self.kv_heads

    def cut_mlp(self, block: nn.Module, keep: torch.Tensor) -> None:
        for name in self.mlp.inputs:
            replace_module(block, name, slice_linear(block.get_submodule(name), rows=keep))
        replace_module(block, self.mlp.output, slice_linear(block.get_submodule(self.mlp.output), cols=keep))

    def cut_heads(self, block: nn.Module, keep_units: torch.Tensor, head_unit: str) -> None:
        """Keeps the given KV groups (with their query heads), or the given query-head positions
        within every group."""
        a, d = self.attention, self.head_dim
        per_group = self.heads // self.kv_heads
        if head_unit == "kv-group":
            kv = keep_units
            q_heads = torch.cat([g * per_group + torch.arange(per_group) for g in kv.tolist()])
        else:
            kv = torch.arange(self.kv_heads)
            q_heads = torch.cat([g * per_group + keep_units for g in range(self.kv_heads)])
        q_rows = _head_rows(q_heads, d)
        kv_rows = _head_rows(kv, d)
        replace_module(block, a.q, slice_linear(block.get_submodule(a.q), rows=q_rows))
        replace_module(block, a.k, slice_linear(block.get_submodule(a.k), rows=kv_rows))
        replace_module(block, a.v, slice_linear(block.get_submodule(a.v), rows=kv_rows))
        replace_module(block, a.o, slice_linear(block.get_submodule(a.o), cols=q_rows))
        attention = block.get_submodule(a.q.rsplit(".", 1)[0])
        attention.num_key_value_groups = len(q_heads) // len(kv)
        for attr, value in (("num_heads", len(q_heads)), ("num_key_value_heads", len(kv))):
            if hasattr(attention, attr):
                setattr(attention, attr, value)

    def set_heads(self, heads: int, kv_heads: int) -> None:
        self.config.head_dim = self.head_dim  # fixed before the counts change it for configs that derive it
        self.config.num_attention_heads = heads
        self.config.num_key_value_heads = kv_heads


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()


def replace_module(block: nn.Module, name: str, module: nn.Module) -> None:
    """Puts `module` at the dotted `name` under `block`."""
    parent, _, child = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, child, module)


def keep_layers(model: nn.Module, blocks: nn.ModuleList, keep: list[int]) -> None:
    """Drops the other blocks; the config's per-layer lists and each attention's layer index follow."""
    kept = nn.ModuleList([blocks[i] for i in keep])
    parent = next(m for m in model.modules() if any(c is blocks for c in m.children()))
    attr = next(n for n, c in parent.named_children() if c is blocks)
    setattr(parent, attr, kept)
    config = model.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    for index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
