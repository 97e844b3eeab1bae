"""A model whose weights stay on disk until a block needs them.

The architecture is built on the meta device; tensors are read from the safetensors
files one block at a time and dropped (back to meta) once its step is done, so
peak memory is the embeddings plus one block, not the whole FP32 model. Reading through
`safe_open` copies just the asked tensors: the file is never left mapped and resident.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from services.common.models import families
from services.common.models import modelio
from services.common.models.packed import materialise_meta_buffers


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
        # Checkpoints of bare encoders may carry a prefix (e.g. "bert.") the bare model lacks.
        self.checkpoint_prefix = self._find_checkpoint_prefix()
        # A tensor the checkpoint lacks would stay on meta (or be invented): refused here, by name.
        what = f"{Path(folder).name} (model family {families.model_type_of(config_json)!r})"
        modelio.check_covers(self.model, set(self.reader.keys()), what, self.checkpoint_prefix)

    def _find_checkpoint_prefix(self) -> str:
        own = {n for n, _ in self.model.named_parameters()}
        for key in self.reader.keys():
            if key in own:
                return ""
            head, _, rest = key.partition(".")
            if rest in own:
                return head + "."
        return ""

    def key(self, name: str) -> str:
        return self.checkpoint_prefix + name

    def load(self, prefixes: list[str] | None = None, *, exclude: list[str] | None = None) -> None:
        """Reads the tensors under `prefixes` (all when None), skipping those under `exclude`."""
        wanted = []
        for name, _ in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if prefixes is not None and not any(name == p or name.startswith(p + ".") for p in prefixes):
                continue
            if exclude and any(name.startswith(p + ".") for p in exclude):
                continue
            if self.key(name) in self.reader:
                wanted.append(name)
        tensors = self.reader.read([self.key(n) for n in wanted])
        state = {n: tensors[self.key(n)].float() if tensors[self.key(n)].is_floating_point() else tensors[self.key(n)]
                 for n in wanted}
        self.model.load_state_dict(state, strict=False, assign=True)
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


def tied_head(model: nn.Module) -> tuple[str, str] | None:
    """(head name, embedding name) when the LM head shares the embedding's weight."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is None or embedding is None or head.weight is not embedding.weight:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(head)], names[id(embedding)]
