"""Per-layer mixed 4/8-bit weights for ONNX Runtime's MatMulNBits under an average-bits budget.

Each weight MatMul's sensitivity is measured on calibration text: the output error its 4-bit blocks
would add over its 8-bit ones, Σ_j E[x_j²]·‖W_j − Q(W_j)‖² over its input channels j, with E[x_j²] read
from the activations the float graph computes on calibration windows (the diagonal-Hessian weighting
GPTQ and AWQ rest on). Starting from 8 bits everywhere, the layers that lose least per bit saved go to
4 bits until the average over the MatMul weights meets the budget — what ModelOpt's AutoQuantize does
with gradient scores, here with a forward-only score the CPU computes in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class WeightMatMul:
    node: str
    activation: str  # the MatMul's input A
    weight: str  # the initializer B, [in, out]
    params: int


def weight_matmuls(model) -> list[WeightMatMul]:
    """The MatMuls whose B is a 2-D float initializer: what MatMulNBits quantizes. An unnamed one is named by
    its place in the graph (the same on every load of the file), so each can be planned and excluded."""
    import onnx

    initializers = {i.name: i for i in model.graph.initializer}
    found = []
    for index, node in enumerate(model.graph.node):
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT:
            node.name = node.name or f"mixed_bits_matmul_{index}"
            found.append(WeightMatMul(node.name, node.input[0], weight.name, int(weight.dims[0] * weight.dims[1])))
    return found


def empty_past(model) -> dict[str, np.ndarray]:
    """An empty KV cache for the graph's past_key_values.* inputs, batch 1 ([1, heads, 0, head_dim])."""
    past = {}
    for graph_input in model.graph.input:
        if graph_input.name.startswith("past_key_values."):
            dims = graph_input.type.tensor_type.shape.dim
            past[graph_input.name] = np.zeros((1, dims[1].dim_value, 0, dims[3].dim_value), np.float32)
    return past


def activation_moments(path: Path, matmuls: list[WeightMatMul], feeds: Iterable[dict], threads: int = 2
                       ) -> dict[str, np.ndarray]:
    """E[x_j²] per input channel of each MatMul's activation, over every token of `feeds` (the graph's inputs)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from services.common.engines.onnx_session import session_options

    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    names = sorted({m.activation for m in matmuls} - existing)
    model.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    probe = path.with_name(path.stem + ".moments.onnx")
    onnx.save(model, str(probe))
    del model
    try:
        session = ort.InferenceSession(str(probe), sess_options=session_options(threads, level="basic"),
                                       providers=["CPUExecutionProvider"])
        wanted = sorted({m.activation for m in matmuls})
        sums: dict[str, np.ndarray] = {}
        tokens = 0
        for feed in feeds:
            outputs = dict(zip(wanted, session.run(wanted, feed)))
            for name, value in outputs.items():
                rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
                sums[name] = sums.get(name, 0.0) + (rows * rows).sum(0)
            tokens += int(np.prod(next(iter(outputs.values())).shape[:-1]))
    finally:
        probe.unlink(missing_ok=True)
    return {m.node: sums[m.activation] / max(tokens, 1) for m in matmuls}


def row_errors(weight: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """Squared error per input row of symmetric `bits`-bit blocks of `block_size` along the input axis
    (MatMulNBits' layout: one scale per block of each output column)."""
    rows, cols = weight.shape
    padded = np.zeros((-(-rows // block_size) * block_size, cols), np.float32)
    padded[:rows] = weight
    blocks = padded.reshape(-1, block_size, cols)
    top = 2 ** (bits - 1) - 1
    scale = np.abs(blocks).max(1, keepdims=True) / top
    scale[scale == 0] = 1.0
    error = blocks - np.clip(np.rint(blocks / scale), -top - 1, top) * scale
    return (error * error).sum(-1).reshape(-1)[:rows]


def sensitivities(model, matmuls: list[WeightMatMul], moments: dict[str, np.ndarray], block_size: int
                  ) -> dict[str, float]:
    """The output error each layer's 4-bit blocks add over its 8-bit ones, weighted by its inputs' energy."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    found = {}
    for m in matmuls:
        weight = numpy_helper.to_array(initializers[m.weight]).astype(np.float32)
        added = row_errors(weight, 4, block_size) - row_errors(weight, 8, block_size)
        found[m.node] = float((moments[m.node] * added).sum())
    return found


def plan(matmuls: list[WeightMatMul], sensitivity: dict[str, float], average_bits: float) -> set[str]:
    """The layers put in 4 bits: the least sensitive per bit saved, until the average is at most the budget."""
    total = sum(m.params for m in matmuls)
    to_save = (8.0 - average_bits) * total
    four: set[str] = set()
    saved = 0.0
    for m in sorted(matmuls, key=lambda m: sensitivity[m.node] / (4.0 * m.params)):
        if saved >= to_save - 1e-9:
            break
        four.add(m.node)
        saved += 4.0 * m.params
    return four


def average_bits(matmuls: list[WeightMatMul], four: set[str]) -> float:
    total = sum(m.params for m in matmuls)
    return sum((4 if m.node in four else 8) * m.params for m in matmuls) / max(total, 1)


def quantize_mixed(src: Path, dst: Path, four: set[str], *, block_size: int, accuracy_level: int = 4) -> None:
    """MatMulNBits at 4 bits for `four`, 8 bits for every other weight MatMul (symmetric blocks)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    rest = [m.node for m in weight_matmuls(model) if m.node not in four]
    # nodes_to_include only adds to the MatMuls it quantizes anyway: the other bit width is excluded instead.
    # The second pass finds the first's as MatMulNBits, which it leaves alone.
    for bits, excluded in ((4, rest), (8, [])):
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level, nodes_to_exclude=excluded)
        quantizer.process()
        model = quantizer.model.model
    onnx.save(model, str(dst))
