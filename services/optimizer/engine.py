"""The optimizer's methods: convert a float model for an inference engine and optimize it there.
Each is registered where it is defined (`@method`); METHODS is the registry the servicer reads.

Engine code only: folders in, folder out, progress through a ProgressReporter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from modelpress.v1 import common_pb2
from services.common.contract.engine_api import (CAUSAL_LM, FLOAT_INPUT, MODEL_KINDS, NotPossibleHere,
                                                 ProgressReporter, StageResult)
from services.common.contract.recipes import RECIPES
from services.common.contract.registry import method, registry
from services.common.measure.isa import ALIASES, class_flags, support
from services.common.measure.machine import this_cpu
from services.common.models import families, modelio, packed
from services.common.models.artifact_format import detect_format
from services.common.models.carried_files import carry_beside_weights
from services.common.contract import fastest_prior
from services.optimizer import gguf_export, nbits_codes, onnx_export, onnx_runtime, openvino_convert
from services.optimizer.configs import (NNCF_WINDOW, FastestCpuConfig, GgufConfig, GgufQ4Config, OnnxConfig,
                                        OnnxInt4Config, OnnxInt8Config, OnnxMixedConfig, OpenVinoConfig,
                                        OpenVinoInt4Config, OpenVinoInt8Config, TensorRtConfig)
from services.optimizer.engines import require

O = common_pb2.TECHNIQUE_OPTIMIZER
ONNX = common_pb2.ARTIFACT_FORMAT_ONNX
OPENVINO_IR = common_pb2.ARTIFACT_FORMAT_OPENVINO_IR
GGUF = common_pb2.ARTIFACT_FORMAT_GGUF
TENSORRT = common_pb2.ARTIFACT_FORMAT_TENSORRT
COMPRESSED = common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS

def _float_config(src: Path) -> dict:
    """The input's config, refusing a model already quantized for PyTorch: engines take float
    weights and quantize in their own formats."""
    config = modelio.read_config(src)
    if packed.is_packed(src) or config.get("quantization_config"):
        raise ValueError("the input is already quantized for PyTorch; convert the float model and let the engine "
                         "quantize (onnx-int8, openvino-int4, gguf-q8_0 ...)")
    modelio.check_safe(src)
    modelio.check_loadable(src, config)
    return config


def _result(src: Path, dst: Path, manifest_file: str, manifest: dict, fmt: int, metrics: dict) -> StageResult:
    """Writes what every engine artifact carries beside its graph (the source's config and tokenizer,
    the engine's manifest) and the stage's result."""
    config = modelio.read_config(src)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    carry_beside_weights(src, dst)
    (dst / manifest_file).write_text(json.dumps(manifest, indent=2))
    architecture = (config.get("architectures") or [config.get("model_type", "")])[0]
    return StageResult(format=fmt, architecture=architecture,
                       compression={"engine": manifest["engine"], "precision": manifest["precision"]},
                       metrics=metrics)


def _load_float(src: Path, engine: str, attention: str = "eager", *, dequantize: bool = False):
    """The model as PyTorch float weights, with the attention the exporter's fusions expect; a refusal
    naming the family where its declaration leaves `engine` out (families.check_export). `dequantize`:
    the input is a compressed-tensors checkpoint, loaded with its weights dequantized (exactly its grid)."""
    from transformers import AutoModel, AutoModelForCausalLM, CompressedTensorsConfig

    if dequantize:  # a compressed-tensors checkpoint whose codes the engine keeps (onnx-int4)
        config = modelio.read_config(src)
        modelio.check_safe(src)
    else:
        config = _float_config(src)
    kind = modelio.model_kind(config)
    families.check_export(config, engine)
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    if attention == "sdpa" and not _supports_sdpa(auto, config):
        attention = "eager"  # DeBERTa-v2, MPNet, Gemma2: transformers gives them no SDPA attention
    extra = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    with onnx_export.EXPORT_LOCK, modelio.CONSTRUCTION_LOCK:
        model = modelio.from_pretrained(auto, src, dtype="float32", attn_implementation=attention, **extra)
    return model.eval(), kind, config


def _supports_sdpa(auto, config: dict) -> bool:
    from transformers import AutoConfig

    model_class = auto._model_mapping.get(type(AutoConfig.for_model(config["model_type"])), None)
    return bool(getattr(model_class, "_supports_sdpa", False))


def _export(config: OnnxConfig, src: Path, dst: Path, reporter: ProgressReporter, steps: int,
            dequantize: bool = False) -> tuple[Path, dict]:
    """Exports and (optionally) optimizes into dst/model.onnx; returns the path and the figures."""
    require("onnxruntime")
    reporter.report(0, steps, "loading the dequantized model" if dequantize else "loading the float model")
    model, kind, model_config = _load_float(src, families.ONNX, dequantize=dequantize)
    work = dst / "_work"
    reporter.report(1, steps, f"exporting {kind} to ONNX (opset {config.opset})")
    exported = onnx_export.export(model, kind, work, opset=config.opset, with_past=config.kv_cache)
    figures: dict = {"kind": kind, "exported_nodes": sum(onnx_runtime.op_counts(exported).values()),
                     "kv_cache": kind == "causal-lm" and config.kv_cache}
    current = exported
    if config.fuse:
        reporter.report(2, steps, "optimizing the graph")
        if kind == "encoder":
            fused = work / "fused.onnx"
            # Read through the config object: DistilBERT names them n_heads and dim in config.json.
            figures["fused_operators"] = onnx_runtime.fuse_transformer(
                current, fused, num_heads=int(model.config.num_attention_heads),
                hidden_size=int(model.config.hidden_size))
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
    manifest = {"engine": "onnxruntime", "precision": precision, "kind": figures["kind"],
                "kv_cache": figures["kv_cache"], "output": onnx_export.output_name(figures["kind"])}
    return _result(src, dst, "onnx_model.json", manifest, common_pb2.ARTIFACT_FORMAT_ONNX,
                   {**figures, "onnx_bytes": (dst / onnx_export.ONNX_FILE).stat().st_size})


@method(O, "onnx", config=OnnxConfig, produces=(ONNX,), model_kinds=MODEL_KINDS,
        summary="Export to ONNX (dynamic batch and sequence) and apply ONNX Runtime's fusions and graph optimizations")
def run_onnx(config: OnnxConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    current, figures = _export(config, src, dst, reporter, steps=3)
    reporter.report(3, 3, "saved")
    return _finish(current, src, dst, figures, "fp32")


def _int8_weight_type(asked: str) -> str:
    """s8 where the CPU multiplies u8 x s8 in VNNI/AMX; else u8, whose kernel widens to 16 bits
    instead of pmaddubsw's saturating pairwise sums (SmoothQuant-ed SmolLM2 on an AVX2-only EPYC
    missed the demo's perplexity gate with s8 weights and met it with u8; README)."""
    if asked != "auto":
        return asked
    return "s8" if support("int8", this_cpu().isa_features).accelerated else "u8"


@method(O, "onnx-int8", config=OnnxInt8Config, produces=(ONNX,), model_kinds=MODEL_KINDS,
        summary="ONNX export, fusions, then INT8 weights per channel with dynamic INT8 activations (causal LMs: INT8 "
                "blockwise weights, float activations)")
def run_onnx_int8(config: OnnxInt8Config, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    causal = modelio.model_kind(modelio.read_config(src)) == "causal-lm"
    current, figures = _export(config, src, dst, reporter, steps=4)
    folded = onnx_runtime.fold_constants(current, current.parent / "folded.onnx", threads=config.threads)
    quantized = current.parent / "int8.onnx"
    if causal and config.causal_lm_activations == "float":
        # Per-tensor dynamic INT8 activations cannot hold an LLM's outlier channels (SmolLM2
        # perplexity 13.5 -> over 10^6 measured here): weights only, 8-bit blocks of 32.
        reporter.report(3, 4, "INT8 blockwise weights (MatMulNBits and the embedding's Gather, 8 bits), float "
                              "activations")
        figures.update(onnx_runtime.quantize_nbits(folded, quantized, bits=8, block_size=32, embeddings=True))
        figures["scheme"] = "weight-only int8 (MatMulNBits)"
    else:
        weights = _int8_weight_type(config.weights)
        reporter.report(3, 4, f"INT8 weights per channel ({weights}), dynamic INT8 activations")
        figures.update(onnx_runtime.quantize_int8(folded, quantized, reduce_range=config.reduce_range,
                                                  weights=weights))
        figures["scheme"] = "dynamic int8 (weights per channel, activations per tensor)"
    reporter.report(4, 4, "saved")
    return _finish(quantized, src, dst, figures, "int8")


@method(O, "onnx-int4", config=OnnxInt4Config, produces=(ONNX,), model_kinds=MODEL_KINDS,
        accepts=(FLOAT_INPUT, COMPRESSED),
        summary="ONNX export, fusions, then 4-bit blockwise weights (MatMulNBits); a compressed-tensors INT4 input "
                "keeps its own codes and scales (GPTQ, AWQ, QAT), not rounded again")
def run_onnx_int4(config: OnnxInt4Config, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    codes = detect_format(src) == "compressed-tensors"
    current, figures = _export(config, src, dst, reporter, steps=4, dequantize=codes)
    folded = onnx_runtime.fold_constants(current, current.parent / "folded.onnx", threads=config.threads)
    quantized = current.parent / "int4.onnx"
    if codes:
        reporter.report(3, 4, "the checkpoint's 4-bit codes into MatMulNBits and GatherBlockQuantized")
        grids = nbits_codes.read_grids(src)
        _check_codes_grid(config, grids)
        figures.update(nbits_codes.write_from_codes(folded, grids, quantized, accuracy_level=config.accuracy_level))
        figures.update({"bits": 4, "accuracy_level": config.accuracy_level, "codes": "the checkpoint's"})
    else:
        reporter.report(3, 4, f"4-bit weights (MatMulNBits, block {config.group_size})")
        figures.update(onnx_runtime.quantize_nbits(folded, quantized, bits=4, block_size=config.group_size,
                                                   accuracy_level=config.accuracy_level, symmetric=config.symmetric))
    reporter.report(4, 4, "saved")
    return _finish(quantized, src, dst, figures, "int4")


def _check_codes_grid(config: OnnxInt4Config, grids: dict) -> None:
    """A grid asked for explicitly must be the checkpoint's: its codes are kept, not rounded again."""
    groups = sorted({g.block_size for g in grids.values()})
    if "group_size" in config.model_fields_set and groups and groups != [config.group_size]:
        raise ValueError(f"group_size: {config.group_size} asked, but the input is a compressed-tensors checkpoint "
                         f"with groups of {', '.join(map(str, groups))}, whose codes onnx-int4 keeps; leave "
                         "group_size unset (or quantize the float model again with that group)")
    if "symmetric" in config.model_fields_set and not config.symmetric:
        raise ValueError("symmetric: false asked, but the input's codes are on a symmetric grid, which onnx-int4 "
                         "keeps; leave symmetric unset")


@method(O, "onnx-mixed", config=OnnxMixedConfig, produces=(ONNX,), model_kinds=(CAUSAL_LM,),
        summary="ONNX export, then 4- or 8-bit blockwise weights per layer (MatMulNBits) by sensitivity measured on "
                "calibration text, under an average-bits budget; the embedding in 8 bits")
def run_onnx_mixed(config: OnnxMixedConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    import onnx

    from services.common.datasets.calibration_text import calibration_batches, calibration_text
    from services.common.engines.causal_feeds import step_inputs
    from services.optimizer import mixed_bits
    from services.optimizer.configs import MIXED_WINDOW

    current, figures = _export(config, src, dst, reporter, steps=5)
    folded = onnx_runtime.fold_constants(current, current.parent / "folded.onnx", threads=config.threads)
    reporter.report(3, 5, f"measuring each layer's sensitivity on {config.calibration_samples} calibration windows")
    windows = calibration_batches(modelio.load_tokenizer(src), config.calibration_samples, MIXED_WINDOW,
                                  calibration_text()).numpy()
    model = onnx.load(str(folded))
    past = mixed_bits.empty_past(model)
    feeds = ({**step_inputs(row[None, :], 0), **past} for row in windows)
    matmuls = mixed_bits.weight_matmuls(model)
    moments = mixed_bits.activation_moments(folded, matmuls, feeds, threads=config.threads)
    sensitivity = mixed_bits.sensitivities(model, matmuls, moments, config.group_size)
    del model
    four = mixed_bits.plan(matmuls, sensitivity, config.average_bits)
    achieved = mixed_bits.average_bits(matmuls, four)
    reporter.report(4, 5, f"{len(four)} of {len(matmuls)} layers in 4 bits, {achieved:.2f} bits on average")
    quantized = current.parent / "mixed.onnx"
    mixed_bits.quantize_mixed(folded, quantized, four, block_size=config.group_size,
                              accuracy_level=config.accuracy_level)
    ranked = sorted(matmuls, key=lambda m: sensitivity[m.node] / m.params, reverse=True)
    figures.update({"average_bits": round(achieved, 3), "layers_4bit": len(four), "layers": len(matmuls),
                    "group_size": config.group_size, "calibration_windows": int(windows.shape[0]),
                    "most_sensitive": [m.node for m in ranked[:5]],
                    "embedding_gathers_8bit": onnx_runtime.quantize_embedding_gathers(
                        quantized, block_size=config.group_size),
                    "scheme": "mixed 4/8-bit weights (MatMulNBits) by measured sensitivity"})
    reporter.report(5, 5, "saved")
    return _finish(quantized, src, dst, figures, "mixed")


def compute_here(requested: str, applied: str) -> tuple[dict, list[str]]:
    """What this worker's CPU makes of a compute precision: the figures for the stage's metrics
    and the notes a person must see (emulated here, or replaced by the engine)."""
    cpu = this_cpu()
    asked = support(requested, cpu.isa_features)
    figures = {"requested": asked.precision, "applied": applied, "isa_class": cpu.isa_class, **asked.as_dict()}
    notes = []
    if asked.emulated:
        notes.append(f"{asked.precision} compute asked on an {cpu.isa_class} CPU ({cpu.cpu_model}): {asked.note}")
    if applied and ALIASES.get(applied, applied) != asked.precision:
        notes.append(f"OpenVINO runs {applied}, not the {asked.precision} asked, on this CPU ({cpu.isa_class}); the "
                     "evaluator measures what it runs")
    return figures, notes


def _openvino(config: OpenVinoConfig, src: Path, dst: Path, reporter: ProgressReporter, *, bits: int = 0,
              symmetric: bool = False, group_size: int = 128, ratio: float = 1.0,
              calibration_samples: int = 0) -> StageResult:
    """IR conversion, optional NNCF weight compression, and (causal LMs) the stateful KV cache."""
    require("openvino")
    from services.common.engines.openvino_runtime import applied_precision, compile_model, weight_counts

    steps = 4 if bits else 3
    reporter.report(0, steps, "loading the float model")
    model, kind, model_config = _load_float(src, families.OPENVINO, attention="sdpa")
    reporter.report(1, steps, f"converting {kind} to OpenVINO IR")
    ov_model = openvino_convert.convert(model, kind)
    geometry = openvino_convert.CacheGeometry.of(model.config) if kind == "causal-lm" else None
    del model
    figures: dict = {"kind": kind}
    precision = "fp32"
    if bits:
        calibration = None
        if calibration_samples:
            from services.common.datasets.calibration_text import calibration_batches, calibration_text

            windows = calibration_batches(modelio.load_tokenizer(src), calibration_samples, NNCF_WINDOW, calibration_text())
            calibration = openvino_convert.calibration_inputs(windows.tolist(), kind, geometry)
        reporter.report(2, steps, f"NNCF INT{bits} weights" + (" (data-aware)" if calibration else ""))
        ov_model, figures["compression"] = openvino_convert.compress_weights(
            ov_model, bits=bits, symmetric=symmetric, group_size=group_size, ratio=ratio, calibration=calibration)
        precision = f"int{bits}"
    if geometry is not None:
        openvino_convert.make_stateful(ov_model, geometry)
        figures["kv_cache"] = "stateful"
    figures["weights_by_type"] = weight_counts(ov_model)
    reporter.report(steps - 1, steps, "saving the IR")
    path = openvino_convert.save(ov_model, dst, float_weights_f16=config.inference_precision != "f32")
    # Compiled once here: the IR must load, and the precision the plugin applies is read back.
    applied = applied_precision(compile_model(path, precision=config.inference_precision))
    figures["inference_precision"] = applied
    figures["compute_precision"], notes = compute_here(config.inference_precision, applied)
    if config.inference_precision != "f32":
        precision = config.inference_precision if precision == "fp32" else f"{precision}-{config.inference_precision}"
    reporter.report(steps, steps, "saved")
    manifest = {"engine": "openvino", "precision": precision, "kind": kind,
                "inputs": openvino_convert.CAUSAL_INPUTS if geometry else openvino_convert.ENCODER_INPUTS,
                "output": onnx_export.output_name(kind), "stateful": geometry is not None,
                "inference_precision": config.inference_precision}
    ir_bytes = sum(f.stat().st_size for f in dst.glob("openvino_model.*"))
    result = _result(src, dst, "openvino_model.json", manifest, common_pb2.ARTIFACT_FORMAT_OPENVINO_IR,
                     {**figures, "ir_bytes": ir_bytes})
    result.notes.extend(notes)
    return result


@method(O, "openvino", config=OpenVinoConfig, produces=(OPENVINO_IR,), model_kinds=MODEL_KINDS,
        summary="OpenVINO IR (causal LMs stateful, KV cache in the request), FP32, precision hint pinned")
def run_openvino(config: OpenVinoConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    return _openvino(config, src, dst, reporter)


@method(O, "openvino-int8", config=OpenVinoInt8Config, produces=(OPENVINO_IR,), model_kinds=MODEL_KINDS,
        summary="OpenVINO IR with NNCF INT8 weights per channel")
def run_openvino_int8(config: OpenVinoInt8Config, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    return _openvino(config, src, dst, reporter, bits=8, symmetric=config.symmetric)


@method(O, "openvino-int4", config=OpenVinoInt4Config, produces=(OPENVINO_IR,), model_kinds=MODEL_KINDS,
        summary="OpenVINO IR with NNCF INT4 group weights (data-aware AWQ + scale estimation when "
                "data_aware)")
def run_openvino_int4(config: OpenVinoInt4Config, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    # NNCF spells one scale per output channel -1.
    return _openvino(config, src, dst, reporter, bits=4, symmetric=config.symmetric, group_size=config.group_size or -1,
                     ratio=config.ratio, calibration_samples=config.calibration_samples if config.data_aware else 0)


def _float_state(src: Path) -> tuple[dict, dict]:
    """The float checkpoint's tensors (safetensors only) and its config."""
    from safetensors.torch import load_file

    config = _float_config(src)
    state: dict = {}
    for path in sorted(Path(src).glob("*.safetensors")):
        state.update(load_file(str(path)))
    return state, config


def _reload_agreement(src: Path, dst: Path, gguf_file: str) -> dict:
    """The GGUF as transformers loads it against the float model, on one held-out window."""
    import torch

    from services.common.datasets import corpus

    tokenizer = modelio.load_tokenizer(src)
    ids = tokenizer(corpus.heldout_text()[:4000], return_tensors="pt").input_ids[:, :128]
    # Not while another stage thread exports (onnx_export.EXPORT_LOCK): loading and running models during
    # torch.export failed with KeyError 'custom' (the export's process-wide state).
    with onnx_export.EXPORT_LOCK:
        with modelio.CONSTRUCTION_LOCK:
            reloaded = gguf_export.load_in_transformers(dst, gguf_file, src)
        original = modelio.load_model(src).eval()
        with torch.inference_mode():
            got, want = reloaded(input_ids=ids).logits, original(input_ids=ids).logits
    targets = ids[:, 1:]
    nll = lambda logits: torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten())  # noqa: E731
    return {"tokens": int(ids.numel()), "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
            "nll_float": float(nll(want)), "nll_gguf": float(nll(got)),
            "max_abs_logit_diff": float((got - want).abs().max())}


def _gguf(config: GgufConfig, src: Path, dst: Path, reporter: ProgressReporter, kind: str) -> StageResult:
    require("gguf")
    steps = 3 if config.verify_reload else 2
    reporter.report(0, steps, "reading the float checkpoint")
    state, model_config = _float_state(src)
    if modelio.model_kind(model_config) != "causal-lm":
        raise NotPossibleHere("GGUF holds decoder LLMs for llama.cpp; this model is an encoder (use onnx or openvino)")
    try:
        tokenizer = gguf_export.read_tokenizer(src)
        dst.mkdir(parents=True, exist_ok=True)
        file_name = f"model-{kind}.gguf"
        reporter.report(1, steps, f"writing GGUF ({kind})")
        written = gguf_export.write(state, model_config, tokenizer, dst / file_name, kind, name=Path(src).name)
    except gguf_export.NotConvertible as exc:
        raise NotPossibleHere(str(exc)) from None
    del state
    figures: dict = {"kind": "causal-lm", "gguf_type": kind, "written_types": written,
                     "read_back": gguf_export.read_back(dst / file_name)}
    if config.verify_reload and gguf_export.reads_in_transformers(model_config):
        reporter.report(2, steps, "loading the file in transformers and comparing logits")
        figures["transformers_reload"] = _reload_agreement(src, dst, file_name)
    elif config.verify_reload:  # an architecture transformers' GGUF loader does not read
        reporter.report(2, steps, "checking the file against llama.cpp's layout for its architecture")
        figures["layout_check"] = gguf_export.check_file(dst / file_name, model_config)  # raises on a mismatch
    reporter.report(steps, steps, "saved")
    manifest = {"engine": "gguf", "precision": kind, "kind": "causal-lm", "file": file_name}
    return _result(src, dst, "gguf_model.json", manifest, common_pb2.ARTIFACT_FORMAT_GGUF,
                   {**figures, "gguf_bytes": (dst / file_name).stat().st_size})


# GGUF files hold decoder LLMs for llama.cpp (gguf_layouts: the architectures gguf_export lays out).
@method(O, "gguf-f16", config=GgufConfig, produces=(GGUF,), model_kinds=(CAUSAL_LM,),
        summary="GGUF for llama.cpp, F16 weights (norms F32)")
def run_gguf_f16(config: GgufConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    return _gguf(config, src, dst, reporter, "f16")


@method(O, "gguf-q8_0", config=GgufConfig, produces=(GGUF,), model_kinds=(CAUSAL_LM,),
        summary="GGUF for llama.cpp, Q8_0 weights (blocks of 32, f16 scale)")
def run_gguf_q8_0(config: GgufConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    return _gguf(config, src, dst, reporter, "q8_0")


@method(O, "gguf-q4", config=GgufQ4Config, produces=(GGUF,), model_kinds=(CAUSAL_LM,),
        summary="GGUF for llama.cpp, Q4_0 or Q4_1 weights (blocks of 32)")
def run_gguf_q4(config: GgufQ4Config, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    return _gguf(config, src, dst, reporter, config.type)


@method(O, "tensorrt-fp16", config=TensorRtConfig, produces=(TENSORRT,), model_kinds=MODEL_KINDS,
        summary="ONNX export built into a TensorRT FP16 engine (NVIDIA GPU workers only)")
def run_tensorrt_fp16(config: TensorRtConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    require("tensorrt")  # FAILED_PRECONDITION on a worker without an NVIDIA GPU and tensorrt
    from services.optimizer import tensorrt_build

    # Plain ONNX: TensorRT parses standard operators, not ONNX Runtime's fused contrib ones.
    current, figures = _export(OnnxConfig(fuse=False), src, dst, reporter, steps=3)
    reporter.report(2, 3, "building the TensorRT engine (FP16)")
    dst.mkdir(parents=True, exist_ok=True)
    figures["tensorrt"] = tensorrt_build.build_engine(
        current, dst / tensorrt_build.ENGINE_FILE, fp16=True, opt_batch=config.opt_batch, max_batch=config.max_batch,
        opt_sequence=config.opt_sequence, max_sequence=config.max_sequence, workspace_mb=config.workspace_mb)
    shutil.rmtree(dst / "_work", ignore_errors=True)
    reporter.report(3, 3, "saved")
    manifest = {"engine": "tensorrt", "precision": "fp16", "kind": figures["kind"],
                "file": tensorrt_build.ENGINE_FILE}
    return _result(src, dst, "tensorrt_model.json", manifest, common_pb2.ARTIFACT_FORMAT_TENSORRT, figures)


# What it runs is one ONNX Runtime or OpenVINO recipe (ENGINE_CHOICES): the gateway passes the one its search
# measured fastest on the worker's CPU class; called without one, the bench table's prior (fastest_prior.py).
@method(O, "fastest-cpu", config=FastestCpuConfig, produces=(ONNX, OPENVINO_IR), model_kinds=MODEL_KINDS,
        summary="The engine precision measured fastest at kept quality for the model's kind on this worker's CPU "
                "class (the gateway measures it by a short search the first time; else the bench table's prior)")
def run_fastest_cpu(config: FastestCpuConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    isa = this_cpu().isa_class if config.isa_class == "auto" else config.isa_class
    kind = modelio.model_kind(_float_config(src))
    if config.choice:
        stage = RECIPES[config.choice].stages[0]
        choice = fastest_prior.Choice(config.choice, stage.method, dict(stage.config))
        note = (f"fastest-cpu ran {choice.recipe} for a {kind} on an {isa} CPU: the choice given to the stage (the "
                "gateway gives the one the gateway's search measured fastest at kept quality on that class)")
    else:
        choice, note = fastest_prior.resolve(isa, kind)
    method = METHODS[choice.method]
    reporter.report(0, 1, note)
    chosen = dict(choice.config)
    if choice.method == "onnx-int8":  # the weight type of the CPU class asked for, not of this worker
        chosen.setdefault("weights", "s8" if support("int8", class_flags(isa)).accelerated else "u8")
    result = method.run(method.config_cls(**chosen), src, dst, reporter)
    result.compression["resolved"] = {"from": "fastest-cpu", "recipe": choice.recipe, "method": choice.method,
                                      "config": chosen, "isa_class": isa, "given": bool(config.choice)}
    result.notes.insert(0, note)
    return result


METHODS = registry(O)
