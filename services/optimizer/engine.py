"""The optimizer's methods: convert a float model for an inference engine and optimize it there.

Engine code only: folders in, folder out, progress through a ProgressReporter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from modelpress.v1 import common_pb2
from services.common import modelio, packed
from services.common.engine_api import Method, NotPossibleHere, ProgressReporter, StageResult
from services.common.tokenizer_files import copy_tokenizer
from services.optimizer import onnx_export, onnx_runtime
from services.optimizer.configs import OnnxConfig, OnnxInt4Config, OnnxInt8Config
from services.optimizer.engines import require


def _load_float(src: Path):
    """The model as PyTorch float weights, with the attention the exporter's fusions expect."""
    from transformers import AutoModel, AutoModelForCausalLM

    config = modelio.read_config(src)
    if packed.is_packed(src) or config.get("quantization_config"):
        raise ValueError("the input is already quantized for PyTorch; export the float model and quantize in the "
                         "engine (onnx-int8 / onnx-int4)")
    kind = modelio.model_kind(config)
    modelio.check_safe(src)
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    with modelio.CONSTRUCTION_LOCK:
        model = auto.from_pretrained(src, use_safetensors=True, dtype="float32", attn_implementation="eager")
    return model.eval(), kind, config


def _export(config: OnnxConfig, src: Path, dst: Path, reporter: ProgressReporter, steps: int) -> tuple[Path, dict]:
    """Exports and (optionally) optimizes into dst/model.onnx; returns the path and the figures."""
    require("onnxruntime")
    reporter.report(0, steps, "loading the float model")
    model, kind, model_config = _load_float(src)
    work = dst / "_work"
    reporter.report(1, steps, f"exporting {kind} to ONNX (opset {config.opset})")
    exported = onnx_export.export(model, kind, work, opset=config.opset)
    figures: dict = {"kind": kind, "exported_nodes": sum(onnx_runtime.op_counts(exported).values())}
    current = exported
    if config.fuse:
        reporter.report(2, steps, "optimizing the graph")
        if kind == "encoder":
            fused = work / "fused.onnx"
            figures["fused_operators"] = onnx_runtime.fuse_transformer(
                current, fused, num_heads=int(model_config["num_attention_heads"]),
                hidden_size=int(model_config["hidden_size"]))
            current = fused
        # ONNX Runtime redoes its own graph optimizations at every load; they are reported, not
        # stored (stored, the folded transposes would duplicate tied weights on disk).
        figures["graph_optimization"] = onnx_runtime.optimize_graph(current, work / "optimized.onnx",
                                                                    threads=config.threads)
    del model
    return current, figures


def _finish(model_path: Path, src: Path, dst: Path, figures: dict, precision: str) -> StageResult:
    shutil.move(str(model_path), dst / onnx_export.ONNX_FILE)
    shutil.rmtree(dst / "_work", ignore_errors=True)
    config = modelio.read_config(src)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    copy_tokenizer(src, dst)
    (dst / "onnx_model.json").write_text(json.dumps({
        "engine": "onnxruntime", "precision": precision, "kind": figures["kind"],
        "inputs": onnx_export.INPUT_NAMES, "output": onnx_export.output_name(figures["kind"])}, indent=2))
    architecture = (config.get("architectures") or [config.get("model_type", "")])[0]
    return StageResult(format=common_pb2.ARTIFACT_FORMAT_ONNX, architecture=architecture,
                       compression={"engine": "onnxruntime", "precision": precision},
                       metrics={**figures, "onnx_bytes": (dst / onnx_export.ONNX_FILE).stat().st_size})


def run_onnx(config: OnnxConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    current, figures = _export(config, src, dst, reporter, steps=3)
    reporter.report(3, 3, "saved")
    return _finish(current, src, dst, figures, "fp32")


def run_onnx_int8(config: OnnxInt8Config, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    if modelio.model_kind(modelio.read_config(src)) == "causal-lm" and not config.allow_causal_lm:
        # Per-tensor dynamic INT8 activations cannot hold an LLM's outlier channels.
        raise NotPossibleHere("onnx-int8 quantizes activations per tensor, which wrecks a causal LM (SmolLM2 "
                              "perplexity 13.5 -> over 10^6 measured here); use onnx-int4 or the quantizer's "
                              "int8-weight-only, or set allow_causal_lm=true to get it anyway")
    current, figures = _export(config, src, dst, reporter, steps=4)
    reporter.report(3, 4, "INT8 weights per channel, dynamic INT8 activations")
    folded = onnx_runtime.fold_constants(current, current.parent / "folded.onnx", threads=config.threads)
    quantized = current.parent / "int8.onnx"
    figures.update(onnx_runtime.quantize_int8(folded, quantized, reduce_range=config.reduce_range))
    reporter.report(4, 4, "saved")
    return _finish(quantized, src, dst, figures, "int8")


def run_onnx_int4(config: OnnxInt4Config, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    current, figures = _export(config, src, dst, reporter, steps=4)
    reporter.report(3, 4, f"4-bit weights (MatMulNBits, block {config.block_size})")
    folded = onnx_runtime.fold_constants(current, current.parent / "folded.onnx", threads=config.threads)
    quantized = current.parent / "int4.onnx"
    figures.update(onnx_runtime.quantize_int4(folded, quantized, block_size=config.block_size,
                                              accuracy_level=config.accuracy_level))
    reporter.report(4, 4, "saved")
    return _finish(quantized, src, dst, figures, "int4")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("onnx", "Export to ONNX (dynamic batch and sequence) and apply ONNX Runtime's fusions and graph "
           "optimizations", OnnxConfig, run_onnx),
    Method("onnx-int8", "ONNX export, fusions, then INT8 weights per channel with dynamic INT8 activations",
           OnnxInt8Config, run_onnx_int8),
    Method("onnx-int4", "ONNX export, fusions, then 4-bit blockwise weights (MatMulNBits)", OnnxInt4Config,
           run_onnx_int4),
)}
