"""ONNX Runtime graph work: fusions and graph optimizations (reported), constant folding, INT8 and
4-bit weights. Sessions are opened the way every modelpress process opens them (common.onnx_session)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from services.common.engines.onnx_session import session_options


def op_counts(path: Path) -> Counter:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def optimize_graph(src: Path, dst: Path, threads: int = 2) -> dict:
    """Runs ORT's graph optimizations offline (constant folding, redundant-node elimination and the
    CPU fusions: LayerNorm, SkipLayerNorm, Gelu, MatMul+Add, attention where it matches) and saves
    the result; returns which operators appeared and disappeared."""
    import onnxruntime as ort

    before = op_counts(src)
    # "extended" keeps the saved graph portable across CPUs (layout transforms of "all" are
    # specific to the machine that ran them); the session still applies "all" at load.
    ort.InferenceSession(str(src), sess_options=session_options(threads, optimized_path=dst, level="extended"),
                         providers=["CPUExecutionProvider"])
    after = op_counts(dst)
    fused = {op: n for op, n in (after - before).items()}
    removed = {op: n for op, n in (before - after).items()}
    return {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()), "fused_operators": fused,
            "removed_operators": removed}


def fold_constants(src: Path, dst: Path, threads: int = 2) -> Path:
    """Constant folding (ORT's basic level): turns weight transposes into initializers, which the
    quantizers need (they quantize a MatMul only when its weight is an initializer)."""
    import onnxruntime as ort

    ort.InferenceSession(str(src), sess_options=session_options(threads, optimized_path=dst, level="basic"),
                         providers=["CPUExecutionProvider"])
    return dst


def fuse_transformer(src: Path, dst: Path, *, num_heads: int, hidden_size: int) -> dict:
    """ONNX Runtime's BERT fusions (embedding + LayerNorm, multi-head attention, bias + GELU,
    residual + LayerNorm) on an encoder graph; returns the count of each fused operator."""
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    optimized.save_model_to_file(str(dst))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def quantize_int8(src: Path, dst: Path, *, reduce_range: bool = False, weights: str = "s8") -> dict:
    """Dynamic INT8: weights per output channel (per-tensor cost MiniLM 0.96 cosine here), activations
    quantized per call at run time; MatMul and Gemm only. `weights` "s8" or "u8" (see OnnxInt8Config)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Only products with a weight: activation x activation MatMuls (attention scores, the
    # probabilities times V in an unfused graph) quantized per tensor at run time wreck a causal
    # LM (SmolLM2 perplexity went from 13.5 to millions when they were included).
    model = onnx.load(str(src), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    nodes = [n.name for n in model.graph.node
             if n.op_type == "Attention" or (n.op_type in ("MatMul", "Gemm") and n.input[1] in initializers)]
    # Fused contrib ops (Attention, SkipLayerNormalization) defeat ONNX shape inference; their
    # outputs are float, which is what the quantizer needs to be told.
    weight_type = QuantType.QInt8 if weights == "s8" else QuantType.QUInt8
    quantize_dynamic(str(src), str(dst), per_channel=True, reduce_range=reduce_range, weight_type=weight_type,
                     op_types_to_quantize=["MatMul", "Gemm", "Attention"], nodes_to_quantize=nodes,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    counts = op_counts(dst)
    return {"int8_ops": {op: counts[op] for op in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention")
                         if counts.get(op)}, "weight_type": weights}


def quantize_nbits(src: Path, dst: Path, *, bits: int = 4, block_size: int = 32, accuracy_level: int = 4,
                   symmetric: bool = True, embeddings: bool = False) -> dict:
    """4- or 8-bit blockwise weights in MatMulNBits, activations float; accuracy_level 4 lets the CPU
    kernel compute in int8 after quantizing activations per block. With `embeddings`, the token
    embedding tables too (8-bit blocks, quantize_embedding_gathers)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    quantizer = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level, bits=bits)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    figures = {"matmul_nbits": op_counts(dst).get("MatMulNBits", 0), "bits": bits, "group_size": block_size,
               "accuracy_level": accuracy_level, "symmetric": symmetric}
    if embeddings:
        figures["embedding_gathers_8bit"] = quantize_embedding_gathers(dst, block_size=block_size)
    return figures


def quantize_embedding_gathers(path: Path, *, block_size: int = 32) -> int:
    """Rewrites, in place, each Gather of rows of a 2-D float initializer (a token embedding table) as ONNX
    Runtime's GatherBlockQuantized: 8-bit symmetric blocks along the hidden axis (zero point 128, one
    scale per block). MatMulNBits leaves the table float, and a causal LM with a tied head keeps it
    beside the head's quantized copy: a sixth of SmolLM2's weights, 113 MB of its INT8 graph's 265 MB.
    The float table is dropped where nothing else reads it. Returns how many Gathers it rewrote."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    tables = {i.name: i for i in graph.initializer}
    readers = Counter(name for node in graph.node for name in node.input)
    rewritten = 0
    for node in graph.node:
        table = tables.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or len(table.dims) != 2 or table.data_type != onnx.TensorProto.FLOAT \
                or table.dims[1] % block_size:
            continue
        weights = numpy_helper.to_array(table)
        blocks = weights.reshape(weights.shape[0], -1, block_size)
        scales = np.abs(blocks).max(-1) / 127.0
        scales[scales == 0] = 1.0
        codes = (np.clip(np.rint(blocks / scales[..., None]), -127, 127) + 128).astype(np.uint8)
        name = f"{table.name}_q8_{rewritten}"
        graph.initializer.extend([numpy_helper.from_array(codes.reshape(weights.shape), name),
                                  numpy_helper.from_array(scales.astype(np.float32), name + "_scales")])
        node.CopyFrom(helper.make_node("GatherBlockQuantized", [name, node.input[1], name + "_scales"],
                                       list(node.output), name=node.name, domain="com.microsoft", gather_axis=0,
                                       quantize_axis=1, block_size=block_size, bits=8))
        readers[table.name] -= 1
        if not readers[table.name]:
            graph.initializer.remove(table)
            tables.pop(table.name)
        rewritten += 1
    if rewritten:
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        onnx.save(model, str(path))
    return rewritten
