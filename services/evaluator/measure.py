"""Size and compute of a model: logical parameters, stored parameter bytes, FLOPs. Plain PyTorch."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from services.common.models.packed import Int8Embedding, Int8Linear

# Quantization metadata that is not a model parameter (compressed-tensors names).
_QUANT_METADATA = ("weight_scale", "weight_zero_point", "weight_shape", "weight_global_scale", "input_scale",
                   "input_zero_point", "output_scale", "output_zero_point")


def count_parameters(model: nn.Module) -> int:
    """Logical parameters: a packed weight counts as the float weight it stands for; tied tensors
    once; scales and zero-points not at all."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        tensors = [(n, t) for n, t in module.named_parameters(recurse=False) if n not in _QUANT_METADATA]
        if isinstance(module, (Int8Linear, Int8Embedding)):
            tensors = [("weight", module.weight)] + [(n, t) for n, t in tensors if n != "weight"]
        for name, tensor in tensors:
            if name == "weight_packed":  # compressed-tensors int4: count the unpacked shape
                total += int(torch.Size(module.weight_shape.tolist()).numel())
                continue
            key = tensor.untyped_storage().data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += tensor.numel()
    return total


def stored_parameter_bytes(folder: Path) -> int:
    """Bytes of every tensor in the folder's safetensors files, read from their headers: packed
    codes, scales and zero-points as stored, whatever the loader later does with them."""
    # An ONNX file (with any external data), an OpenVINO .bin or a GGUF is the stored weights
    # plus a small graph or header: its size is what the weights take.
    engine_files = [path for pattern in ("*.onnx*", "openvino_model.bin", "*.gguf")
                    for path in sorted(Path(folder).glob(pattern))]
    if engine_files and not any(Path(folder).glob("*.safetensors")):
        return sum(path.stat().st_size for path in engine_files)
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
        total += sum(end - start for name, entry in header.items() if name != "__metadata__"
                     for start, end in [entry["data_offsets"]])
    return total


def count_flops(model: nn.Module, ids: torch.Tensor) -> int:
    """FLOPs of one forward pass on `ids`, counted op by op by torch's flop counter (matmuls,
    attention, convolutions; a multiply-add counts as two)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return int(counter.get_total_flops())
