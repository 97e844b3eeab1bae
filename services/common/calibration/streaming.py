"""A model whose weights stay on disk until a block needs them.

The architecture is built on the meta device; tensors are read from the safetensors
files one block at a time and dropped (back to meta) once its step is done, so
peak memory is the embeddings plus one block, not the whole FP32 model. Reading through
`safe_open` copies just the asked tensors: the file is never left mapped and resident.

Checkpoint names are read through transformers' own conversion mapping (CheckpointConversion):
its renamings (GPT-NeoX's embed_out is the model's lm_head), and its merges of per-expert tensors
into fused 3-D expert tensors (Mixtral, Qwen MoE), which the streamed model keeps split instead: one
Linear per expert projection, named as the checkpoint names it (SplitExperts), computing what the
fused module computes. Writers map a model name back to its checkpoint key (`key`, `name_of`), so
outputs keep the checkpoint's own names, which transformers converts again on reload.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from services.common.models import families, modelio
from services.common.models.model_errors import UnsupportedModelError
from services.common.models.packed import materialise_meta_buffers


# safetensors' dtype names → torch's.
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class CheckpointReader:
    """The tensors of a (possibly sharded) safetensors model folder, read on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            self._file_of = {k: self.folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise modelio.UnsupportedModelError(f"{self.folder.name}: no *.safetensors weights")
            self._file_of = {}
            for path in files:
                with safe_open(str(path), "pt") as f:
                    self._file_of.update({k: path for k in f.keys()})

    def keys(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, key: str) -> bool:
        return key in self._file_of

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self._file_of[key], []).append(key)
        out = {}
        for path, names in by_file.items():
            with safe_open(str(path), "pt") as f:
                for name in names:
                    out[name] = f.get_tensor(name)
        return out

    def get(self, key: str) -> torch.Tensor:
        return self.read([key])[key]

    def dtype(self, key: str) -> torch.dtype:
        """The stored dtype of `key`, from the file's header (no tensor is read)."""
        with safe_open(str(self._file_of[key]), "pt") as f:
            return getattr(torch, SAFETENSORS_DTYPES[f.get_slice(key).get_dtype()])

    def under(self, prefix: str) -> list[str]:
        return [k for k in self._file_of if k.startswith(prefix + ".")]


class StreamingModel:
    """The model skeleton plus a reader; `loaded(prefix)` holds one block's weights at a time."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        modelio.check_safe(folder)
        config_json = modelio.read_config(folder)
        kind = modelio.model_kind(config_json)
        modelio.check_loadable(folder, config_json)
        families.check_streamable(config_json)
        self.reader = CheckpointReader(folder)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
        with modelio.CONSTRUCTION_LOCK, torch.device("meta"):
            self.model = auto.from_config(config, dtype=torch.float32)
        self.model.eval()
        # Read while the skeleton is intact: swapping modules later breaks the identity check.
        self.tied_head = tied_head(self.model)
        what = f"{Path(folder).name} (model family {families.model_type_of(config_json)!r})"
        self.conversion = CheckpointConversion(self.model, self.reader.keys(), what)
        # The fused experts modules now split into per-expert Linears (empty for a dense model).
        self.split_experts = self.conversion.split(self.model, what)
        self._rows_as_fp32 = None  # the hook `load(embedding_as_stored=True)` puts on the embedding
        # Checkpoints of bare encoders may carry a prefix (e.g. "bert.") the bare model lacks.
        self.checkpoint_prefix = self._find_checkpoint_prefix()
        # A tensor the checkpoint lacks would stay on meta (or be invented): refused here, by name.
        modelio.check_covers(self.model, set(self.conversion.key_of), what, self.checkpoint_prefix)

    def _find_checkpoint_prefix(self) -> str:
        own = {n for n, _ in self.model.named_parameters()}
        for key in self.conversion.key_of:
            if key in own:
                return ""
            head, _, rest = key.partition(".")
            if rest in own:
                return head + "."
        return ""

    def key(self, name: str) -> str:
        """The checkpoint key of the model's tensor `name`."""
        converted = self.checkpoint_prefix + name
        return self.conversion.key_of.get(converted, converted)

    def name_of(self, key: str) -> str:
        """The model's name (no checkpoint prefix) of the checkpoint tensor `key`."""
        return self.conversion.name_of.get(key, key).removeprefix(self.checkpoint_prefix)

    def load(self, prefixes: list[str] | None = None, *, exclude: list[str] | None = None,
             embedding_as_stored: bool = False) -> None:
        """Reads the tensors under `prefixes` (all when None), skipping those under `exclude`, in FP32.
        `embedding_as_stored` keeps a plain token embedding in the checkpoint's dtype, its looked-up
        rows cast to FP32 (as the FP32 lookup gives them): enough to compute the first block's inputs,
        at half the memory of an FP32 copy of a bf16 embedding (544 MB for Qwen2.5-0.5B's vocabulary)."""
        embedding = self.model.get_input_embeddings() if embedding_as_stored else None
        # Subclasses (Gemma's scaled embedding) compute in the weight's dtype: those stay FP32.
        as_stored = {f"{n}.weight" for n, m in self.model.named_modules()
                     if m is embedding and type(m) is nn.Embedding}
        wanted = []
        for name, _ in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if prefixes is not None and not any(name == p or name.startswith(p + ".") for p in prefixes):
                continue
            if exclude and any(name.startswith(p + ".") for p in exclude):
                continue
            if self.key(name) in self.reader:
                wanted.append(name)
        tensors = self.reader.read([self.key(n) for n in wanted])
        state = {n: tensors[self.key(n)].float() if tensors[self.key(n)].is_floating_point() and n not in as_stored
                 else tensors[self.key(n)] for n in wanted}
        self.model.load_state_dict(state, strict=False, assign=True)
        if as_stored and self._rows_as_fp32 is None:
            self._rows_as_fp32 = embedding.register_forward_hook(lambda _m, _a, rows: rows.float())
        if prefixes is None or exclude is not None:
            self._finish_non_block()

    def _finish_non_block(self) -> None:
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        embedding = self.model.get_input_embeddings()
        if head is not None and head.weight.is_meta and getattr(self.model.config, "tie_word_embeddings", False):
            head.weight = embedding.weight
        materialise_meta_buffers(self.model)

    def release(self, prefix: str) -> None:
        self.model.get_submodule(prefix).to_empty(device="meta")

    @contextmanager
    def loaded(self, prefix: str) -> Iterator[nn.Module]:
        self.load([prefix])
        try:
            yield self.model.get_submodule(prefix)
        finally:
            self.release(prefix)


class ExpertLinear(nn.Linear):
    """One expert's projection: a 2-D slice of transformers' fused 3-D expert tensor, as a Linear so
    every technique calibrates, quantizes and prunes it like any other (plain PyTorch; marked so the
    writers know it reloads through transformers' expert merge, not as a module of its own)."""


class SplitExperts(nn.Module):
    """transformers' fused experts module (gate_up_proj [E, 2I, H], down_proj [E, H, I]) as one
    submodule per expert holding the checkpoint's own per-expert Linears, e.g. `3.w1`, `3.w3`, `3.w2`
    (Mixtral) or `3.gate_proj`, `3.up_proj`, `3.down_proj` (Qwen MoE). Its forward computes what the
    fused module's eager forward does: each expert runs on the tokens the router sent it only, so a
    Linear's forward hook sees exactly its expert's routed tokens."""

    def __init__(self, fused: nn.Module, gate_up: tuple[str, str], down: str) -> None:
        super().__init__()
        self.num_experts, hidden, inner = fused.down_proj.shape
        self.act_fn = fused.act_fn
        self.gate_up, self.down = gate_up, down
        for e in range(self.num_experts):
            expert = nn.Module()
            for leaf in gate_up:
                expert.add_module(leaf, ExpertLinear(hidden, inner, bias=False, device="meta"))
            expert.add_module(down, ExpertLinear(inner, hidden, bias=False, device="meta"))
            self.add_module(str(e), expert)

    def expert(self, e: int) -> nn.Module:
        return getattr(self, str(e))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
                ) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            token, slot = torch.where(top_k_index == e)
            if token.numel() == 0:
                continue
            expert = self.expert(e)
            x = hidden_states[token]
            gate, up = (getattr(expert, leaf)(x) for leaf in self.gate_up)
            y = getattr(expert, self.down)(self.act_fn(gate) * up)
            out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
        return out

    def fused(self) -> dict[str, torch.Tensor]:
        """The tensors transformers builds from this checkpoint: gate_up_proj and down_proj, stacked."""
        experts = [self.expert(e) for e in range(self.num_experts)]
        return {"gate_up_proj": torch.stack([torch.cat([getattr(x, leaf).weight for leaf in self.gate_up])
                                             for x in experts]),
                "down_proj": torch.stack([getattr(x, self.down).weight for x in experts])}


# The fused experts layout SplitExperts computes: [gate; up] concatenated, [out, in] per expert, no bias.
SPLIT_LAYOUT = {"is_transposed": False, "has_bias": False, "is_concatenated": True, "has_gate": True}


class CheckpointConversion:
    """transformers' own conversion mapping (conversion_mapping.py) for one model, as the streamed loader
    follows it: its renamings applied to every checkpoint key (GPT-NeoX's embed_out → lm_head), and its
    per-expert merges (MergeModulelist, then Concatenate for gate with up) followed by splitting the fused
    experts module into the checkpoint's per-expert Linears (SplitExperts) instead of stacking, so each
    expert stays a Linear named as the checkpoint names it, read one block at a time."""

    def __init__(self, model: nn.Module, keys: list[str], what: str) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            Concatenate,
            MergeModulelist,
            WeightConverter,
            apply_converters,
            apply_renamings,
        )

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        self.name_of: dict[str, str] = {}  # checkpoint key → the streamed model's name
        self.fused: dict[str, dict[str, list[str]]] = {}  # experts module → fused param → source leaves
        for key in keys:
            renamed = apply_renamings(key, renamings)
            target, pattern = apply_converters(renamed, converters)
            if pattern is None:
                self.name_of[key] = renamed
                continue
            converter = next(c for c in converters if pattern in c.source_patterns)
            ops = [type(op) for op in converter.operations]
            module, _, param = target.rpartition(".")
            leaf = re.match(rf"^{re.escape(module)}\.\d+\.(\w+)\.weight$", renamed)
            if ops not in ([MergeModulelist], [MergeModulelist, Concatenate]) or leaf is None:
                raise UnsupportedModelError(
                    f"{what}: transformers converts its checkpoint tensor {key} to {target} by "
                    f"{', '.join(op.__name__ for op in ops)}, which the streamed loader does not follow "
                    "(it splits merged per-expert tensors only)")
            leaves = self.fused.setdefault(module, {}).setdefault(param, [])
            order = [re.search(r"\.\*\.(\w+)\.weight$", p) for p in converter.source_patterns]
            if not leaves:
                leaves.extend(m.group(1) for m in order if m)
            self.name_of[key] = renamed
        self.key_of = {name: key for key, name in self.name_of.items()}

    def split(self, model: nn.Module, what: str) -> list[str]:
        """Replaces every fused experts module by its SplitExperts; returns their names."""
        for name, params in self.fused.items():
            fused = model.get_submodule(name)
            gate_up, down = params.get("gate_up_proj", []), params.get("down_proj", [])
            # The layout transformers' experts implementations declare (integrations/moe.py).
            layout = {a: getattr(fused, a, None) for a in SPLIT_LAYOUT}
            if len(gate_up) != 2 or len(down) != 1 or layout != SPLIT_LAYOUT:
                raise UnsupportedModelError(
                    f"{what}: its experts {name} ({type(fused).__name__}: {sorted(params)}, {layout}) are "
                    "not the concatenated gate_up_proj / down_proj layout the streamed loader splits per expert")
            model.set_submodule(name, SplitExperts(fused, tuple(gate_up), down[0]))
        return list(self.fused)


def tied_head(model: nn.Module) -> tuple[str, str] | None:
    """(head name, embedding name) when the LM head shares the embedding's weight."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is None or embedding is None or head.weight is not embedding.weight:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(head)], names[id(embedding)]
