"""Writes quantized models in the compressed-tensors format (transformers and vLLM load it).

The algorithms leave each quantized module's weight on its integer grid (fake-quantized
float) and hand over the scales/zero-points they chose; this module declares one
compressed-tensors scheme per distinct (bits, group, symmetry, layer kind), lets the
library pack the integers (int4 into int32 words: "pack-quantized"; int8 as is:
"int-quantized"), and saves. A tied LM head is stored once: its int8 weight equals the
embedding's, so the duplicate is dropped and transformers re-ties it on load.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from services.quantizer.qscheme import SCALE_DTYPE, QuantParams, WeightScheme

WEIGHTS_FILE = "model.safetensors"


@dataclass
class QuantizedWeight:
    scheme: WeightScheme
    params: QuantParams


def _args(scheme: WeightScheme, kind: str):
    from compressed_tensors.quantization import QuantizationArgs

    grouped = scheme.group_size > 0
    return QuantizationArgs(
        num_bits=scheme.bits,
        type="int",
        symmetric=scheme.symmetric,
        strategy="group" if grouped else "channel",
        group_size=scheme.group_size if grouped else None,
        scale_dtype=SCALE_DTYPE,
    )


def _exact(module_name: str) -> str:
    """A compressed-tensors target matching exactly this module."""
    return "re:^" + re.escape(module_name) + "$"


def _format(scheme: WeightScheme) -> str:
    # compressed-tensors 0.20 + transformers 5.24 cannot reload packed asymmetric
    # zero-points (shape mismatch on load), so asymmetric codes are stored unpacked.
    return "pack-quantized" if scheme.bits < 8 and scheme.symmetric else "int-quantized"


def build_config(model: nn.Module, quantized: dict[str, QuantizedWeight]):
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    by_scheme: dict[tuple, list[str]] = defaultdict(list)
    for name, qw in quantized.items():
        kind = "Embedding" if isinstance(model.get_submodule(name), nn.Embedding) else "Linear"
        by_scheme[(qw.scheme, kind)].append(name)
    groups = {}
    for i, ((scheme, kind), names) in enumerate(sorted(by_scheme.items(), key=lambda kv: kv[1][0])):
        groups[f"group_{i}"] = QuantizationScheme(
            targets=[_exact(name) for name in sorted(names)],
            weights=_args(scheme, kind),
            format=_format(scheme),
        )
    return QuantizationConfig(config_groups=groups)


def save_compressed_tensors(model: nn.Module, quantized: dict[str, QuantizedWeight], folder: Path) -> None:
    """Saves `model` (weights already on their grids) with `quantized`'s qparams."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config
    from safetensors.torch import load_file, save_file

    tied = _tied_head(model)
    compute_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    apply_quantization_config(model, build_config(model, quantized))
    with torch.no_grad():
        for name, qw in quantized.items():
            module = model.get_submodule(name)
            # Stored in SCALE_DTYPE (the params were rounded to it), halving the scales' bytes.
            module.weight_scale.data = qw.params.scale.to(SCALE_DTYPE).reshape(module.weight_scale.shape)
            if qw.params.zero_point is not None:
                # compressed-tensors keeps asymmetric codes signed: shift our unsigned zero-point.
                signed = qw.params.zero_point - 2 ** (qw.scheme.bits - 1)
                module.weight_zero_point.data = signed.to(module.weight_zero_point.dtype).reshape(
                    module.weight_zero_point.shape)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(folder, safe_serialization=True)
    compressor.update_config(str(folder))
    config = json.loads((folder / "config.json").read_text())
    # save_pretrained records the scales' float16 as the model dtype; loaders should compute
    # in the dtype the model was quantized in.
    config["dtype"] = compute_dtype
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if tied:
        head, embedding = tied
        path = folder / WEIGHTS_FILE
        tensors = load_file(str(path))
        if f"{head}.weight" in tensors and torch.equal(tensors[f"{head}.weight"], tensors[f"{embedding}.weight"]):
            del tensors[f"{head}.weight"]
            save_file(tensors, str(path), metadata={"format": "pt"})
            config = json.loads((folder / "config.json").read_text())
            config["tie_word_embeddings"] = True
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _tied_head(model: nn.Module) -> tuple[str, str] | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is None or embedding is None or head.weight is not embedding.weight:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(head)], names[id(embedding)]


def is_compressed_tensors(folder: Path) -> bool:
    config_path = Path(folder) / "config.json"
    if not config_path.exists():
        return False
    quant = json.loads(config_path.read_text()).get("quantization_config") or {}
    return quant.get("quant_method") == "compressed-tensors"
