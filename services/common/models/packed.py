"""The packed safetensors layout: int8 weights + per-row scales, readable without the quantizer.

An artifact in this layout is an HF folder whose `model.safetensors` holds, for each
quantized module, `<name>.weight` (int8, [out, in] or [vocab, dim]) and
`<name>.weight_scale` (float32, [out]); every other tensor is stored as is.
`quantization.json` names the quantized modules. Tensor names follow compressed-tensors
(`weight`, `weight_scale`) so the layout maps onto that format without renaming.
Inference keeps the int8 weights resident and widens one layer at a time, so the memory
saving is real, not undone at load time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from services.common.models.artifact_format import QUANT_FILE, is_packed  # noqa: F401 - their home is torch-free
from services.common.models.bounded_json import loads_bounded
from services.common.models.model_errors import IncompleteCheckpoint
from services.common.models.safetensors_writer import write_safetensors

WEIGHTS_FILE = "model.safetensors"


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Widen one layer's weights at a time and scale the output columns: on this CPU
        # that runs at FP32 speed, while torch._weight_int8pack_mm was 20-40x slower.
        out = F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]


class Int8Embedding(nn.Module):
    """Integer rows with one scale per row, or per group of columns (a [rows, groups] scale)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 groups: int = 1) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8))
        shape = (num_embeddings,) if groups == 1 else (num_embeddings, groups)
        self.register_buffer("weight_scale", torch.empty(shape, dtype=torch.float32))

    def _row_scales(self, scales: torch.Tensor) -> torch.Tensor:
        if self.weight_scale.dim() == 1:
            return scales.unsqueeze(-1)
        return scales.repeat_interleave(self.embedding_dim // self.weight_scale.shape[1], dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight)
        return rows.to(self.weight_scale.dtype) * self._row_scales(self.weight_scale[ids])

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self._row_scales(self.weight_scale)


def packed_modules(model: nn.Module) -> dict[str, dict]:
    described = {}
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            described[name] = {"kind": "linear", "bits": 8, "scheme": "symmetric-per-output-channel"}
        elif isinstance(module, Int8Embedding):
            described[name] = {"kind": "embedding", "bits": 8, "scheme": "symmetric-per-row"}
    return described


def save_packed(model: nn.Module, folder: Path, *, scheme: str) -> None:
    """Writes config, weights and quantization.json; tied tensors are stored once."""

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    seen: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.contiguous()
    write_safetensors(folder / WEIGHTS_FILE, tensors, metadata={"format": "pt", "modelpress": scheme})
    (folder / QUANT_FILE).write_text(json.dumps(
        {"scheme": scheme, "modules": packed_modules(model), "tied": tied}, indent=2))


def load_packed(folder: Path, kind: str) -> nn.Module:
    """Builds the architecture on the meta device, swaps in packed modules, then loads.

    Building on meta first keeps the float weights from ever being allocated, so peak
    memory is the packed size.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    folder = Path(folder)
    layout = loads_bounded((folder / QUANT_FILE).read_bytes(), QUANT_FILE)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    with torch.device("meta"):
        model = auto.from_config(config)
    for name, spec in layout["modules"].items():
        original = model.get_submodule(name)
        if spec["kind"] == "linear":
            replacement = Int8Linear(original.in_features, original.out_features, original.bias is not None)
        else:
            replacement = Int8Embedding(original.num_embeddings, original.embedding_dim, original.padding_idx)
        model.set_submodule(name, replacement)
    state = load_file(str(folder / WEIGHTS_FILE))
    for alias, source in layout.get("tied", {}).items():
        state[alias] = state[source]
    model.load_state_dict(state, strict=False, assign=True)
    _tie_aliases(model, layout.get("tied", {}))
    materialise_meta_buffers(model)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise IncompleteCheckpoint(f"{folder.name}: the checkpoint lacks {len(leftover)} of the model's tensors "
                                   f"({', '.join(leftover[:10])}{' ...' if len(leftover) > 10 else ''})")
    return model.eval()


def _tie_aliases(model: nn.Module, tied: dict[str, str]) -> None:
    """Points aliased tensors (e.g. a tied lm_head) at one shared storage again."""
    for alias, source in tied.items():
        alias_mod, _, alias_attr = alias.rpartition(".")
        src_mod, _, src_attr = source.rpartition(".")
        tensor = getattr(model.get_submodule(src_mod), src_attr)
        target = model.get_submodule(alias_mod)
        if alias_attr in target._buffers:
            target._buffers[alias_attr] = tensor
        else:
            setattr(target, alias_attr, tensor)


def materialise_meta_buffers(model: nn.Module) -> None:
    """Recomputes the non-persistent buffers (rotary frequencies, position ids) meta init left empty."""
    for name, module in list(model.named_modules()):
        metas = [b for b, t in module.named_buffers(recurse=False) if t.is_meta]
        if not metas:
            continue
        if type(module).__name__.endswith("RotaryEmbedding"):
            model.set_submodule(name, type(module)(config=model.config))
            continue
        for buf in metas:
            shape = module._buffers[buf].shape
            if buf == "position_ids":
                module._buffers[buf] = torch.arange(shape[-1]).expand(shape).contiguous()
            elif buf == "token_type_ids":
                module._buffers[buf] = torch.zeros(shape, dtype=torch.long)
            elif hasattr(module, f"scalar_{buf}"):
                # transformers keeps the number a scalar buffer is built from (Gemma's embed_scale, sqrt(hidden)).
                module._buffers[buf] = torch.tensor(getattr(module, f"scalar_{buf}"))
            else:
                raise ValueError(f"cannot rebuild buffer {name}.{buf} of a packed model")
