"""A float HF model folder written from a streamed source with some tensors replaced.

What a transform (AWQ scales folded in, SmoothQuant, pruning masks) writes: the model stays
a plain float checkpoint any engine's own quantizer or exporter takes, each tensor in the
dtype the source stored it in, the source's config untouched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from services.common.models import modelio
from services.common.models import packed
from services.common.calibration.streaming import StreamingModel
from services.common.models.safetensors_writer import write_safetensors

WEIGHTS_FILE = "model.safetensors"
# Files of a HF model folder besides weights and tokenizer that loaders read.
CONFIG_FILES = ("config.json", "generation_config.json")


def refuse_quantized(src: Path) -> None:
    """Transforms start from float weights; re-quantizing or pruning codes would compound errors silently."""
    if packed.is_packed(src) or modelio.read_config(src).get("quantization_config"):
        raise ValueError("the input is already quantized; start from a float model")


def write_float_model(source: StreamingModel, changed: dict[str, torch.Tensor], folder: Path) -> int:
    """Writes the source's tensors with `changed` (module-path names, no checkpoint prefix) in
    their place; returns how many stored tensors differ from the source."""
    folder.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(changed) - {source.name_of(k) for k in source.reader.keys()})
    if unknown:
        raise KeyError(f"not in the source checkpoint: {', '.join(unknown[:5])}")
    tensors: dict[str, torch.Tensor] = {}
    replaced = 0
    for key in source.reader.keys():
        stored = source.reader.get(key)
        new = changed.get(source.name_of(key))  # model names: a renamed tensor is written under its own key
        if new is not None:
            if new.shape != stored.shape:
                raise ValueError(f"{key}: new shape {tuple(new.shape)} differs from the stored {tuple(stored.shape)}")
            replaced += 1
            stored = new.detach().to(stored.dtype)
        tensors[key] = stored.contiguous()
    write_safetensors(folder / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    for name in CONFIG_FILES:
        if (source.reader.folder / name).exists():
            shutil.copyfile(source.reader.folder / name, folder / name)
    return replaced
