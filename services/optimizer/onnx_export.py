"""PyTorch → ONNX for the two model kinds modelpress serves, with dynamic batch and sequence axes.

Encoders are exported from eager attention with the TorchScript exporter: that is the graph
ONNX Runtime's BERT fusions (EmbedLayerNormalization, Attention, BiasGelu, SkipLayerNorm) were
written for — measured on MiniLM here, SDPA or the dynamo exporter leave attention unfused.
Causal LMs go through the dynamo exporter, which keeps the tied embedding and head as one
tensor (the TorchScript exporter duplicates it). With a KV cache (the default) the graph is
(input_ids, attention_mask, position_ids, past_key_values.N.key/value) → (logits,
present.N.key/value): one graph for prefill (an empty past) and decode (the presents fed back).
Without, it is (input_ids, attention_mask) → logits. Encoders map (input_ids, attention_mask) to
the last hidden state, which the caller pools.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from services.optimizer.cache_graph import traceable

ONNX_FILE = "model.onnx"
INPUT_NAMES = ["input_ids", "attention_mask"]
# torch.export and the TorchScript tracer keep process-wide state: two exports in two stage
# threads of one worker failed (KeyError sym_numel_default). One export at a time per process; building
# or running a model in another stage thread (loading the float model, the GGUF reload check) takes it
# too: every torch._dynamo.disable'd function reads torch.compiler.is_exporting() and writes fx
# traceback's current_meta, both process-wide, and failed with KeyError 'custom' during an export.
# Re-entrant: a stage that holds it may load a model.
EXPORT_LOCK = threading.RLock()


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class HiddenStates(nn.Module):
    """An encoder as (input_ids, attention_mask) -> last_hidden_state, for every exporter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def output_name(kind: str) -> str:
    return "logits" if kind == "causal-lm" else "last_hidden_state"


def _sample_inputs(model: nn.Module, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(5, max(6, min(vocab, 32000)), (2, length), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids)


def _export_with_past(model: nn.Module, path: Path, opset: int) -> None:
    from services.optimizer.cache_graph import INPUTS, CacheGeometry, LogitsWithCache, sample_inputs

    geometry = CacheGeometry.of(model.config)
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=1, max=8192)
    # Exported with a past of at least 1; ONNX Runtime then runs it with an empty past as well.
    past = torch.export.Dim("past", min=1, max=8192)
    total = torch.export.Dim("total", min=2, max=16384)
    cache_axes = tuple({0: batch, 2: past} for _ in range(2 * geometry.layers))
    program = torch.onnx.export(
        LogitsWithCache(model).eval(), sample_inputs(model), dynamo=True, opset_version=max(opset, 18),
        optimize=False, verbose=False,
        input_names=INPUTS + geometry.names("past_key_values"), output_names=["logits"] + geometry.names("present"),
        dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: total}, {0: batch, 1: sequence}, cache_axes))
    program.save(str(path), external_data=False)


def _gemms_as_matmuls(path: Path) -> int:
    """Rewrites each Gemm whose weight is a 2-D initializer as MatMul (+ Add for its bias); returns
    how many. The dynamo exporter writes a Linear over a 2-D input as Gemm (MoE blocks flatten the
    tokens before their router and shared expert), and ONNX Runtime's blockwise weight quantizer
    (MatMulNBits) only takes MatMul: those weights would stay float in an INT8 / INT4 graph. (Where
    a bias follows, ORT's basic-level folding fuses MatMul + Add back into Gemm: GPT-2's Conv1D.)"""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" else None
        if (weight is None or len(weight.dims) != 2 or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        b = node.input[1]
        if attrs.get("transB", 0):
            if uses[b] == 1:  # stored transposed in place: nothing else reads it
                weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), b))
            else:
                nodes.append(helper.make_node("Transpose", [b], [f"{node.name}_weight_t"], perm=[1, 0],
                                              name=f"{node.name}_transpose"))
                b = f"{node.name}_weight_t"
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        product = f"{node.name}_matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], b], [product], name=f"{node.name}_as_matmul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(path))
    return rewritten


def export(model: nn.Module, kind: str, out_dir: Path, *, opset: int = 17, sample_length: int = 16,
           with_past: bool = True) -> Path:
    """Writes out_dir/model.onnx; returns its path. An encoder should be loaded with
    attn_implementation="eager" (see the module docstring); `with_past` applies to causal LMs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILE
    ids, mask = _sample_inputs(model, sample_length)
    output = output_name(kind)
    with EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings(), traceable(model):
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        if kind == "causal-lm" and with_past:
            _export_with_past(model, path, opset)
        elif kind == "causal-lm":
            batch, sequence = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=8192)
            program = torch.onnx.export(
                _Logits(model).eval(), (ids, mask), dynamo=True, opset_version=max(opset, 18),
                # No constant folding: it would store the tied head a second time, transposed.
                input_names=INPUT_NAMES, output_names=[output], optimize=False, verbose=False,
                dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}})
            program.save(str(path), external_data=False)
        else:
            axes = {0: "batch", 1: "sequence"}
            torch.onnx.export(HiddenStates(model).eval(), (ids, mask), str(path), dynamo=False, opset_version=opset,
                              input_names=INPUT_NAMES, output_names=[output],
                              dynamic_axes={"input_ids": axes, "attention_mask": axes, output: axes})
    if kind == "causal-lm":
        _gemms_as_matmuls(path)
    return path
