"""How to cut a block's units out so the result is a smaller model of the same class that stock
transformers reloads from its config. Which families allow which cuts, where their units are and how
they are packed, is declared once in families.py (`Family.structured`, `Attention`, `Mlp`).

Every declared family supports layers and MLP neurons: the same count removed from every layer, the
config's MLP width field (`Mlp.width_key`: intermediate_size, n_inner, ffn_dim, hidden_dim ...) rewritten.
A GLU whose gate and up halves one Linear computes (`Mlp.stacked`) keeps the same neurons in each half;
GPT-2's Conv1D (`Family.conv1d`) stores its weight [in, out], so its output rows are weight columns.
Heads are cut where the model reads `head_dim` from the config (Llama, Qwen, Gemma, Granite, OLMo2,
Phi-3): whole KV groups or the same number of query heads per group under GQA, from separate q/k/v
Linears or a fused one (`Attention.qkv_layout`). A family that derives the head size from
hidden_size / num_attention_heads (BERT, GPT-2, OPT ...) refuses heads with that reason
(`Family.structured_note`): fewer heads at the same width do not reload. Routed experts (Mixtral,
Qwen-MoE: `Experts.width_key`) lose the same number of neurons in every expert, each its own least
important; Qwen2-MoE's shared expert is left whole (its width is another config field).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from services.common.models import families
from services.common.models.families import Attention, Mlp
from services.common.models.modelio import UnsupportedModelError

# What a refusal names when the caller does not say which method it runs.
STRUCTURED = "structured pruning"
# The families whose hidden width the distiller's narrow_hidden rewrites (residual_readers): Llama-style
# decoders that read head_dim from the config and BERT-style encoders whose attention keeps
# attention_head_size / all_head_size; others keep the width in module attributes it does not know
# (OPT's head_dim, StableLM's, Gemma's embedding scale, OLMo2's all-head q/k norms).
HIDDEN_NARROWING = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "bert", "roberta", "xlm-roberta"})
# A weight-shaped tensor of one of a block's weights (the weight, its gradient, their product) and a
# reduction over the input dimension of an [..., out, in] tensor (`lambda t: t.norm(dim=-1)`).
Values = Callable[[nn.Parameter], torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]


def slice_in_place(module: nn.Module, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                   conv1d: bool = False) -> None:
    """Keeps output `rows` and input `cols` of a Linear (or a subclass: Falcon's FalconLinear keeps its
    class) or of transformers' Conv1D (`conv1d`: weight stored [in, out]), in place."""
    weight = module.weight.detach()
    if conv1d:
        weight = weight.t()
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    out_features, in_features = weight.shape
    module.weight = nn.Parameter((weight.t() if conv1d else weight).contiguous().clone(),
                                 requires_grad=module.weight.requires_grad)
    if module.bias is not None and rows is not None:
        module.bias = nn.Parameter(module.bias.detach()[rows].clone(), requires_grad=module.bias.requires_grad)
    if conv1d:
        module.nf, module.nx = out_features, in_features
    else:
        module.out_features, module.in_features = out_features, in_features


class Architecture:
    """Names of one block's units, relative to the block, how they are packed, and the config fields
    they set. Where a family's MLPs are routed experts (transformers 5 stores them fused: gate_up
    [experts, 2·width, hidden], down [experts, hidden, width]), `mlp` names those two parameters and
    every expert keeps the same number of its own neurons (one width in the config)."""

    def __init__(self, model: nn.Module, method: str = STRUCTURED) -> None:
        self.config = model.config
        self.model_type = getattr(model.config, "model_type", "")
        self.method = method
        family = families.family_of(model.config)
        declared = ", ".join(f.model_type for f in families.FAMILIES.values() if f.structured)
        if family is None:
            raise families.refuse(model.config, method, f"is not declared in modelpress's family table, which "
                                                        f"says where a block's units are; declared: {declared}")
        if not family.structured or (family.mlp is None and family.experts is None):
            why = f"{family.structured_note}; " if family.structured_note else ""
            raise families.refuse(model.config, method, f"declares no structured cuts stock transformers would "
                                                        f"reload ({why}declared for {declared})")
        self.family = family
        self.routed = family.mlp is None
        if self.routed:
            e = family.experts
            if getattr(self.config, "mlp_only_layers", None) or getattr(self.config, "decoder_sparse_step", 1) != 1:
                raise families.refuse(model.config, method, "mixes dense MLPs and experts by layer index "
                                      "(mlp_only_layers / decoder_sparse_step); structured cuts take it only "
                                      "where every block's MLP is experts")
            self.mlp = Mlp((f"{e.experts}.{e.gate_up}",), f"{e.experts}.{e.down}", stacked=2, width_key=e.width_key)
        else:
            self.mlp: Mlp = family.mlp
        self.conv1d = family.conv1d
        # Heads are cut only where the config keeps head_dim (structured_note says why not); the
        # attention's projections are read anyway.
        self.attention: Attention | None = family.attention if "heads" in family.structured else None
        self.attention_output = family.attention.o

    @property
    def qkv(self) -> tuple[str, str, str]:
        """The separate q, k, v Linears; refused where one fused Linear computes all three."""
        attention = self.family.attention
        if attention.qkv:
            raise families.refuse(self.config, self.method,
                                  f"computes q, k and v in one fused Linear ({attention.qkv}), which "
                                  f"{self.method} does not split")
        return attention.inputs

    @property
    def bert_like(self) -> bool:
        """The head size is derived from hidden_size / num_attention_heads (no head cuts)."""
        return "heads" not in self.family.structured

    @property
    def residual_readers(self) -> tuple[str, ...]:
        """A block's Linears that read the residual stream (attention q/k/v, the MLP's inputs), for a
        rewrite of the hidden width (HIDDEN_NARROWING)."""
        self._dense_only()
        if self.model_type not in HIDDEN_NARROWING:
            raise families.refuse(self.config, self.method,
                                  f"keeps its hidden width in places {self.method} does not rewrite; it narrows "
                                  f"{', '.join(sorted(HIDDEN_NARROWING))}")
        return self.qkv + self.mlp.inputs

    @property
    def residual_writers(self) -> tuple[str, ...]:
        """A block's Linears that write the residual stream (attention output, MLP output)."""
        self._dense_only()
        return (self.attention_output, self.mlp.output)

    def _dense_only(self) -> None:
        if self.routed:
            raise families.refuse(self.config, self.method, "routes its MLPs to experts (fused 3-D parameters, "
                                                            f"not Linears), which {self.method} does not rewrite")

    @property
    def mlp_modules(self) -> tuple[str, ...]:
        """The modules computing the MLP, relative to a block (the experts' module where routed)."""
        if self.routed:
            return (self.family.experts.experts,)
        return (*self.mlp.inputs, self.mlp.output)

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
            note = self.family.structured_note or "declares no head cuts stock transformers would reload"
            raise families.refuse(self.config, "heads_keep", note)
        if head_unit == "kv-group" and self.kv_heads < 2:
            raise UnsupportedModelError("heads_keep: the model has one KV group; use head_unit 'query-head'")

    def head_units(self, head_unit: str) -> int:
        """How many removable units a block has: KV groups, or query heads per group."""
        return self.kv_heads if head_unit == "kv-group" else self.heads // self.kv_heads

    # --- reading units: per-neuron and per-row reductions of weight-shaped tensors -------------------

    def weight(self, block: nn.Module, name: str) -> nn.Parameter:
        """The weight of the block's Linear (or Conv1D) `name`, or the experts' parameter `name`."""
        if self.routed and name in (*self.mlp.inputs, self.mlp.output):
            return block.get_parameter(name)
        return block.get_submodule(name).weight

    def oriented(self, block: nn.Module, name: str, values: Values) -> torch.Tensor:
        """`values` of the weight `name` as [..., out, in] (Conv1D stores [in, out]; experts [experts, out, in])."""
        tensor = values(self.weight(block, name))
        return tensor.t() if self.conv1d else tensor

    def mlp_width(self, block: nn.Module) -> int:
        return self.weight(block, self.mlp.output).shape[-2 if self.conv1d else -1]

    def mlp_rows(self, block: nn.Module, values: Values, reduce: Reduce) -> torch.Tensor:
        """[width] ([experts, width] where routed): Σ over the MLP's inputs (and the halves a fused GLU
        stacks) of `reduce` of each neuron's input-side row."""
        width = self.mlp_width(block)
        total = 0
        for name in self.mlp.inputs:
            rows = reduce(self.oriented(block, name, values))
            total = total + rows.view(*rows.shape[:-1], self.mlp.stacked, width).sum(-2)
        return total

    def mlp_columns(self, block: nn.Module, values: Values, reduce: Reduce) -> torch.Tensor:
        """[width] ([experts, width] where routed): `reduce` of each neuron's column of the output."""
        return reduce(self.oriented(block, self.mlp.output, values).transpose(-1, -2))

    def qkv_rows(self, block: nn.Module, values: Values, reduce: Reduce
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`reduce` of every output row of q [heads·d], k and v [kv heads·d], fused or not."""
        a = self.family.attention
        if not a.qkv:
            return tuple(reduce(self.oriented(block, name, values)) for name in (a.q, a.k, a.v))
        rows = reduce(self.oriented(block, a.qkv, values))
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        if a.qkv_layout == "per-head":
            per_head = rows.view(h, 3, d)
            return per_head[:, 0].flatten(), per_head[:, 1].flatten(), per_head[:, 2].flatten()
        if a.qkv_layout != "stacked":
            raise families.refuse(self.config, self.method, f"declares no layout for its fused {a.qkv}")
        return rows[:h * d], rows[h * d:(h + kv) * d], rows[(h + kv) * d:]

    def o_columns(self, block: nn.Module, values: Values, reduce: Reduce) -> torch.Tensor:
        """[heads·d]: `reduce` of each column of the attention's output projection."""
        return reduce(self.oriented(block, self.attention_output, values).t())

    def mlp_activation_hook(self, block: nn.Module, record: Callable[[torch.Tensor], None]):
        """Hooks the block so that every forward passes the MLP's intermediate activations, the input
        of its output projection, to `record`: [tokens, width]; where routed, [experts, tokens, width]
        with each expert's rows zero for the tokens not routed to it, scaled by the routing weight (what
        its down projection's output is weighed by). Returns the hook's handle."""
        if not self.routed:
            return block.get_submodule(self.mlp.output).register_forward_pre_hook(
                lambda _m, args: record(args[0].detach().float().reshape(-1, args[0].shape[-1])))
        experts = block.get_submodule(self.family.experts.experts)
        gate_up, down = self.mlp.inputs[0].rsplit(".", 1)[1], self.mlp.output.rsplit(".", 1)[1]

        def hook(module, args, kwargs, _output):
            hidden, index, weights = (list(args) + [kwargs.get(k) for k in ("hidden_states", "top_k_index",
                                                                            "top_k_weights")][len(args):])[:3]
            hidden = hidden.detach().float().reshape(-1, hidden.shape[-1])
            w_gate_up = getattr(module, gate_up).detach().float()
            count, width = w_gate_up.shape[0], getattr(module, down).shape[-1]
            out = torch.zeros(count, hidden.shape[0], width)
            for e in range(count):
                tokens, slot = torch.where(index == e)
                if tokens.numel():
                    g, u = nn.functional.linear(hidden[tokens], w_gate_up[e]).chunk(2, dim=-1)
                    out[e, tokens] = module.act_fn(g) * u * weights[tokens, slot, None].detach().float()
            record(out)

        return experts.register_forward_hook(hook, with_kwargs=True)

    # --- cutting ---------------------------------------------------------------------------------

    def cut_mlp(self, block: nn.Module, keep: torch.Tensor) -> None:
        """Keeps the given neurons (indices, in order; [experts, kept] where routed, each expert its
        own): their rows of every input (in every stacked half) and their columns of the output."""
        width = self.mlp_width(block)
        rows = torch.cat([part * width + keep for part in range(self.mlp.stacked)], dim=-1)
        if self.routed:
            self._cut_experts(block, rows, keep)
            return
        for name in self.mlp.inputs:
            slice_in_place(block.get_submodule(name), rows=rows, conv1d=self.conv1d)
        slice_in_place(block.get_submodule(self.mlp.output), cols=keep, conv1d=self.conv1d)

    def _cut_experts(self, block: nn.Module, rows: torch.Tensor, keep: torch.Tensor) -> None:
        experts = block.get_submodule(self.family.experts.experts)
        gate_up, down = self.weight(block, self.mlp.inputs[0]), self.weight(block, self.mlp.output)
        count = gate_up.shape[0]
        if keep.dim() == 1:
            keep, rows = keep.expand(count, -1), rows.expand(count, -1)
        gate_up = torch.gather(gate_up.detach(), 1, rows.unsqueeze(-1).expand(-1, -1, gate_up.shape[-1]))
        down = torch.gather(down.detach(), 2, keep.unsqueeze(1).expand(-1, down.shape[1], -1))
        setattr(experts, self.mlp.inputs[0].rsplit(".", 1)[1], nn.Parameter(gate_up.contiguous()))
        setattr(experts, self.mlp.output.rsplit(".", 1)[1], nn.Parameter(down.contiguous()))
        if hasattr(experts, "intermediate_dim"):
            experts.intermediate_dim = keep.shape[-1]

    def set_mlp_width(self, width: int) -> None:
        setattr(self.config, self.mlp.width_key, width)

    def kept_heads(self, keep_units: torch.Tensor, head_unit: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(query heads, KV heads) that keeping `keep_units` keeps."""
        per_group = self.heads // self.kv_heads
        if head_unit == "kv-group":
            return torch.cat([g * per_group + torch.arange(per_group) for g in keep_units.tolist()]), keep_units
        return torch.cat([g * per_group + keep_units for g in range(self.kv_heads)]), torch.arange(self.kv_heads)

    def kept_o_columns(self, keep_units: torch.Tensor, head_unit: str) -> torch.Tensor:
        """The attention output projection's input columns that keeping `keep_units` keeps."""
        return _head_rows(self.kept_heads(keep_units, head_unit)[0], self.head_dim)

    def cut_heads(self, block: nn.Module, keep_units: torch.Tensor, head_unit: str) -> None:
        """Keeps the given KV groups (with their query heads), or the given query-head positions
        within every group."""
        a, d = self.attention, self.head_dim
        q_heads, kv = self.kept_heads(keep_units, head_unit)
        q_rows = _head_rows(q_heads, d)
        kv_rows = _head_rows(kv, d)
        if not a.qkv:
            for name, rows in ((a.q, q_rows), (a.k, kv_rows), (a.v, kv_rows)):
                slice_in_place(block.get_submodule(name), rows=rows, conv1d=self.conv1d)
        else:
            slice_in_place(block.get_submodule(a.qkv), rows=self._fused_rows(q_heads, kv), conv1d=self.conv1d)
        for norm, rows in ((a.q_norm, q_rows), (a.k_norm, kv_rows)):
            if norm:
                module = block.get_submodule(norm)
                module.weight = nn.Parameter(module.weight.detach()[rows].clone())
        slice_in_place(block.get_submodule(a.o), cols=q_rows, conv1d=self.conv1d)
        attention = block.get_submodule(a.o.rsplit(".", 1)[0])
        attention.num_key_value_groups = len(q_heads) // len(kv)
        for attr, value in (("num_heads", len(q_heads)), ("num_key_value_heads", len(kv))):
            if hasattr(attention, attr):
                setattr(attention, attr, value)

    def _fused_rows(self, q_heads: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """The rows of a fused qkv Linear that the kept query heads and KV heads own."""
        a, d, h = self.attention, self.head_dim, self.heads
        if a.qkv_layout == "stacked":
            return torch.cat([_head_rows(q_heads, d), h * d + _head_rows(kv, d),
                              (h + self.kv_heads) * d + _head_rows(kv, d)])
        if a.qkv_layout == "per-head" and h == self.kv_heads:
            return _head_rows(q_heads, 3 * d)  # [heads, 3, d]: a head's q, k and v rows are adjacent
        raise families.refuse(self.config, "heads_keep", f"declares no head cut for its fused {a.qkv} "
                                                         f"(layout {a.qkv_layout or 'undeclared'})")

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
