"""Bits per weight of a checkpoint with everything it stores counted: codes, scales, zero-points,
and the tensors left float (embedding, head, norms). The figure an INT4 recipe's size is judged by,
since a float embedding is a sixth of a small LLM and counting only the rounded Linears hides it.

Weights are counted as the model has them: a packed tensor by the shape it unpacks to, a tied head
once (the checkpoint stores it once). Only headers and the small `weight_shape` tensors are read.
"""

from __future__ import annotations

import math
from pathlib import Path

from safetensors import safe_open

from services.common.models.safetensors_header import DTYPE_BYTES, read_file_header

# Tensors that describe a quantized weight rather than being weights: their bits count, not their values.
QUANTIZATION_METADATA = (".weight_scale", ".weight_zero_point", ".weight_shape", ".input_scale",
                         ".weight_global_scale", ".weight_g_idx")


def stored_bits_per_weight(folder: Path) -> float:
    """Every bit of the folder's safetensors files over the number of weights they hold."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    bits = weights = 0
    for path in files:
        header = read_file_header(path)
        with safe_open(str(path), framework="pt") as stored:
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                count = math.prod(entry["shape"])
                bits += count * DTYPE_BYTES[entry["dtype"]] * 8
                if name.endswith(".weight_packed"):
                    shape = stored.get_tensor(name.removesuffix("_packed") + "_shape")
                    weights += math.prod(int(d) for d in shape.tolist())
                elif not name.endswith(QUANTIZATION_METADATA):
                    weights += count
    return bits / weights if weights else 0.0
