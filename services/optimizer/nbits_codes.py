"""A compressed-tensors INT4 checkpoint's own codes written into ONNX Runtime's 4-bit operators.

ONNX Runtime's blockwise quantizer rounds float weights itself: its symmetric blocks map the
largest magnitude to -8, the checkpoint's grid maps it to 7, so re-rounding the dequantized weights
of a GPTQ/AWQ/QAT checkpoint moves most blocks off the grid the calibration chose. Here each MatMul
whose weight is a quantized Linear (found by its values: the exported initializer is the dequantized
weight, transposed) becomes a MatMulNBits holding exactly the checkpoint's integers and scales
(zero point 8, the operator's default), and a Gather of a quantized table becomes a
GatherBlockQuantized of its codes, so the engine computes what the checkpoint stores.
Plain ONNX and numpy; the caller exports the graph.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MS_DOMAIN = "com.microsoft"
ZERO_POINT_4BIT = 8  # MatMulNBits' and GatherBlockQuantized's default for 4-bit codes


@dataclass(frozen=True)
class Grid:
    """One quantized module of the checkpoint: signed codes [out, in] and float32 scales [out, groups]."""

    name: str
    codes: np.ndarray
    scales: np.ndarray
    bits: int

    @property
    def block_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    def dequantized(self) -> np.ndarray:
        out, inp = self.codes.shape
        groups = self.codes.reshape(out, self.scales.shape[1], -1).astype(np.float32)
        return (groups * self.scales[..., None]).reshape(out, inp)


def read_grids(folder: Path) -> dict[str, Grid]:
    """The symmetric packed modules of a compressed-tensors checkpoint (weight_packed, weight_scale,
    weight_shape), unpacked; other tensors are left to the float export."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import safe_open

    config = json.loads((Path(folder) / "config.json").read_text()).get("quantization_config") or {}
    bits_of = {}
    for group in config.get("config_groups", {}).values():
        if group.get("weights"):
            bits_of.update({t: group["weights"]["num_bits"] for t in group.get("targets", [])})
    grids: dict[str, Grid] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as stored:
            keys = set(stored.keys())
            for key in sorted(k for k in keys if k.endswith(".weight_packed")):
                name = key.removesuffix(".weight_packed")
                if f"{name}.weight_zero_point" in keys:
                    continue  # asymmetric: left float (the quantizer writes those unpacked anyway)
                shape = torch.Size(int(d) for d in stored.get_tensor(f"{name}.weight_shape").tolist())
                bits = _bits(name, bits_of)
                codes = unpack_from_int32(stored.get_tensor(key), bits, shape)
                scales = stored.get_tensor(f"{name}.weight_scale").float()
                grids[name] = Grid(name, codes.to(torch.int8).numpy(), scales.reshape(shape[0], -1).numpy(), bits)
    return grids


def _bits(name: str, bits_of: dict[str, int]) -> int:
    for target, bits in bits_of.items():
        if target == "Linear" or (target.startswith("re:") and re.match(target[3:], name)) or target == name:
            return bits
    raise ValueError(f"{name}: packed weights without a config group that names its bits")


def _by_values(grids: dict[str, Grid]) -> dict[tuple, list[Grid]]:
    """Grids indexed by their dequantized shape [in, out] (the exported initializer's)."""
    index: dict[tuple, list[Grid]] = defaultdict(list)
    for grid in grids.values():
        index[(grid.codes.shape[1], grid.codes.shape[0])].append(grid)
    return index


def _match(weight_t: np.ndarray, candidates: list[Grid], tolerance: float = 1e-3) -> Grid | None:
    """The grid whose dequantized weight is this initializer (transposed), checked on a few rows
    first and then whole."""
    for grid in candidates:
        dequantized = grid.dequantized()
        if not np.allclose(dequantized[:4], weight_t[:4], rtol=0, atol=tolerance * (np.abs(weight_t[:4]).max() + 1e-12)):
            continue
        if np.allclose(dequantized, weight_t, rtol=0, atol=tolerance * (np.abs(weight_t).max() + 1e-12)):
            return grid
    return None


def pack_4bit(codes: np.ndarray, block_size: int) -> np.ndarray:
    """Signed 4-bit codes [rows, cols] as unsigned nibbles (code + 8), two per byte, low nibble first,
    [rows, cols / block_size, block_size / 2]: MatMulNBits' B and GatherBlockQuantized's data layout."""
    unsigned = (codes.astype(np.int16) + ZERO_POINT_4BIT).astype(np.uint8)
    pairs = unsigned.reshape(codes.shape[0], -1, 2)
    packed = pairs[..., 0] | (pairs[..., 1] << 4)
    return packed.reshape(codes.shape[0], codes.shape[1] // block_size, block_size // 2)


def write_from_codes(src: Path, grids: dict[str, Grid], dst: Path, *, accuracy_level: int = 4) -> dict:
    """Rewrites the graph at `src` into `dst`: every MatMul reading a quantized Linear's weight becomes
    a MatMulNBits of its codes, every Gather of a quantized table a GatherBlockQuantized; returns the
    counts and the modules no operator read (left out of the graph, or fused beyond recognition)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    index = _by_values(grids)
    used: set[str] = set()
    matmuls = gathers = 0
    for node in list(graph.node):
        if node.op_type == "MatMul" and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            grid = _match(weight.T, index.get(weight.shape, [])) if weight.ndim == 2 else None
            if grid is None or grid.bits != 4:
                continue
            k, n = weight.shape
            name = f"{node.input[1]}_nbits"
            if name not in initializers:
                graph.initializer.extend([numpy_helper.from_array(pack_4bit(grid.codes, grid.block_size), name),
                                          numpy_helper.from_array(grid.scales.reshape(-1).astype(np.float32),
                                                                  name + "_scales")])
                initializers[name] = graph.initializer[-2]
            node.CopyFrom(helper.make_node(
                "MatMulNBits", [node.input[0], name, name + "_scales"], list(node.output), name=node.name,
                domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=grid.block_size, accuracy_level=accuracy_level))
            used.add(grid.name)
            matmuls += 1
        elif node.op_type == "Gather" and node.input[0] in initializers:
            table = numpy_helper.to_array(initializers[node.input[0]])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            grid = _match(table, index.get((table.shape[1], table.shape[0]), [])) if table.ndim == 2 else None
            if grid is None or grid.bits != 4 or axis != 0:
                continue
            name = f"{node.input[0]}_q4"
            graph.initializer.extend([
                numpy_helper.from_array(pack_4bit(grid.codes, grid.block_size).reshape(table.shape[0], -1), name),
                numpy_helper.from_array(grid.scales.astype(np.float32), name + "_scales")])
            node.CopyFrom(helper.make_node(
                "GatherBlockQuantized", [name, node.input[1], name + "_scales"], list(node.output), name=node.name,
                domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=grid.block_size, bits=4))
            used.add(grid.name)
            gathers += 1
    readers = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in readers]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    onnx.save(model, str(dst))
    return {"matmul_nbits": matmuls, "gather_block_quantized": gathers,
            "modules_not_in_graph": sorted(set(grids) - used)}
