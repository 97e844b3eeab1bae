"""The quantizer's methods: each a typed config and a function, registered where it is defined
(`@method`); METHODS is the registry the servicer and the in-process API read.

Engine code only: folders in, folder out, progress through a ProgressReporter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from modelpress.v1 import common_pb2
from services.common.calibration.config import CalibrationConfig
from services.common.calibration.sequential import FloatTargets, rewrite_sequential
from services.common.calibration.streaming import StreamingModel
from services.common.calibration.walk_checkpoint import stage_walk_checkpoints
from services.common.contract.config import MethodConfig
from services.common.contract.engine_api import MODEL_KINDS, ProgressMetric, ProgressReporter, StageResult
from services.common.contract.registry import method, registry
from services.common.measure.isa import support
from services.common.measure.machine import this_cpu
from services.common.models import families, modelio, packed
from services.common.models.carried_files import carry_beside_weights
from services.common.models.float_checkpoint import refuse_quantized, write_float_model
from services.quantizer.autoround import autoround_block_step
from services.quantizer.awq import awq_block_step
from services.quantizer.configs import (
    AutoRoundConfig,
    AwqConfig,
    AwqTransformConfig,
    CastConfig,
    GptqConfig,
    GptqSettings,
    Int8WeightOnlyConfig,
    MixedPrecisionConfig,
    QatConfig,
    SmoothQuantConfig,
    SmoothQuantTransformConfig,
    W8A8Config,
    WeightOnlyConfig,
)
from services.quantizer.end_to_end import EndToEndPhase
from services.quantizer.gptq import HEAD_DAMPING, gptq_block_step, gptq_head_rounding
from services.quantizer.int8 import quantize_int8_weight_only
from services.quantizer.mixed import allocate, sensitivity_step
from services.quantizer.qat import qat_block_step
from services.quantizer.rtn import quantize_rtn
from services.quantizer.sequential import QUANTIZED_WEIGHT_CODEC, BlockStep, HeadRounding, quantize_sequential
from services.quantizer.smoothquant import w8a8_block_step
from services.quantizer.spilled_codes import CodeSpill
from services.quantizer.targets import Target, linear_weight, weight_targets
from services.quantizer.transforms import awq_transform_step, smoothquant_transform_step
from services.quantizer.weight_only import WEIGHT_ERROR, architecture_of, save_weight_only, stream_float

Q = common_pb2.TECHNIQUE_QUANTIZER
FLOAT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
COMPRESSED = common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS
PACKED = common_pb2.ARTIFACT_FORMAT_PACKED_SAFETENSORS

# What each method's progress events carry (the job report plots these by name).
LOSS = ProgressMetric("loss", "per-layer", "Relative output error of the layer on its calibration inputs")
SAMPLE_ERROR = ProgressMetric("sample_error", "per-layer", "W8A8 relative output error on sampled input rows "
                                                           "after smoothing")
SCALE_GAIN = ProgressMetric("loss_vs_unscaled", "per-layer", "Output error with the chosen scales over without")
BLOCK_CURVES = (ProgressMetric("block_loss_before", "curve", "Block output error before training"),
                ProgressMetric("block_loss_after", "curve", "Block output error after training"))
END_TO_END_CURVES = (
    ProgressMetric("end_to_end_kl", "curve", "End-to-end phase: KL to the float model on a training batch"),
    ProgressMetric("end_to_end_validation_kl", "curve",
                   "End-to-end phase: KL to the float model on the held-back calibration windows"))
QAT_CURVES = (*BLOCK_CURVES, *END_TO_END_CURVES)


def _grid(**fields) -> WeightOnlyConfig:
    """The weight grid a method derives from its own config, already validated: built without a
    second validation (one validation site per request)."""
    return WeightOnlyConfig.model_construct(**fields)


def _cast(dtype: torch.dtype) -> Callable[[MethodConfig, Path, Path, ProgressReporter], StageResult]:
    def run(_config: MethodConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
        reporter.report(0, 2, "loading model")
        refuse_quantized(src)
        model = modelio.load_model(src)
        reporter.report(1, 2, f"casting to {dtype}")
        model = model.to(dtype)
        model.config.dtype = dtype
        model.save_pretrained(dst, safe_serialization=True)
        carry_beside_weights(src, dst)
        reporter.report(2, 2, "saved")
        name = str(dtype).removeprefix("torch.")
        # PyTorch computes in the weights' dtype on the CPU that loads them: say so where this
        # worker's CPU would emulate it (the evaluator, timing it, may run elsewhere).
        cpu = this_cpu()
        here = support(name, cpu.isa_features)
        note = f"PyTorch computes these weights in {here.precision}; on this worker's {cpu.isa_class} CPU: {here.note}"
        notes = [note] if here.emulated else []
        return StageResult(
            format=common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS,
            architecture=architecture_of(model),
            compression={"method": "cast", "dtype": name},
            metrics={"compute_precision": {"isa_class": cpu.isa_class, **here.as_dict()}},
            notes=notes,
        )

    return run


method(Q, "fp16", config=CastConfig, summary="Cast every floating tensor to float16", produces=(FLOAT,),
       model_kinds=MODEL_KINDS)(_cast(torch.float16))
method(Q, "bf16", config=CastConfig, summary="Cast every floating tensor to bfloat16", produces=(FLOAT,),
       model_kinds=MODEL_KINDS)(_cast(torch.bfloat16))


@method(Q, "int8-weight-only", config=Int8WeightOnlyConfig, produces=(PACKED,), model_kinds=MODEL_KINDS,
        summary="INT8 weights (symmetric, per output channel) with FP32 activations; embeddings too",
        metrics=(WEIGHT_ERROR,))
def _int8_weight_only(config: Int8WeightOnlyConfig, src: Path, dst: Path, reporter: ProgressReporter
                      ) -> StageResult:
    reporter.report(0, 1, "loading model")
    refuse_quantized(src)
    model = modelio.load_model(src)

    def on_layer(i: int, n: int, name: str, error: float) -> None:
        reporter.report(i, n + 1, f"quantized {name} ({i}/{n})", layer=name, relative_weight_error=error)

    with torch.no_grad():
        figures = quantize_int8_weight_only(model, config, on_layer)
    packed.save_packed(model, dst, scheme="int8-weight-only")
    carry_beside_weights(src, dst)
    reporter.report(figures["quantized_modules"] + 1, figures["quantized_modules"] + 1, "saved packed int8 model")
    return StageResult(
        format=common_pb2.ARTIFACT_FORMAT_PACKED_SAFETENSORS,
        architecture=architecture_of(model),
        compression={"method": "int8-weight-only", "bits": 8, "granularity": "per-output-channel",
                     "symmetric": True, **config.model_dump()},
        metrics=figures,
    )


@method(Q, "rtn", config=WeightOnlyConfig, produces=(COMPRESSED,), model_kinds=MODEL_KINDS,
        summary="Round-to-nearest integer weights (per channel or group), compressed-tensors output",
        metrics=(WEIGHT_ERROR,))
def _rtn(config: WeightOnlyConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    source = stream_float(src, reporter)
    targets = weight_targets(source.model, config, conv1d=True)

    def on_layer(i: int, total: int, name: str, error: float) -> None:
        reporter.report(i, total + 1, f"quantized {name} ({i}/{total})", layer=name, relative_weight_error=error)

    quantized = quantize_rtn(lambda t: linear_weight(t, source.reader.get(source.key(f"{t.name}.weight"))), targets,
                             on_layer)
    return save_weight_only(source, quantized, targets, config, dst, reporter, "rtn")


def _layer_reporter(reporter: ProgressReporter, losses: list[float]) -> Callable[[int, int, str, dict], None]:
    def on_layer(i: int, total: int, name: str, figures: dict) -> None:
        if "loss" in figures:
            losses.append(figures["loss"])
        reporter.report(i, total + 1, f"{figures['method']} {name} ({i}/{total})", layer=name, **figures)

    return on_layer


def _run_calibrated(config: CalibrationConfig, source: StreamingModel, targets: list[Target], dst: Path,
                    reporter: ProgressReporter, method: str, step: BlockStep, *, propagate_quantized: bool = True,
                    sample_every: int = 0, float_targets: FloatTargets = "none",
                    extra_metrics: dict | None = None, batches: torch.Tensor | None = None,
                    head_rounding: HeadRounding | None = None, end_to_end: EndToEndPhase | None = None
                    ) -> StageResult:
    batches = config.batches(source.reader.folder) if batches is None else batches
    losses: list[float] = []
    walk = stage_walk_checkpoints(reporter, QUANTIZED_WEIGHT_CODEC)
    # Finished codes wait beside the output (same disk, same work budget) until it is written.
    spill = CodeSpill(dst.parent)
    tuned: dict = {}
    try:
        # A stage stopped in its end-to-end phase goes on from that phase's checkpoint, without the walk.
        result = end_to_end.restore() if end_to_end is not None else None
        if result is None:
            result = quantize_sequential(source, targets, batches, step, _layer_reporter(reporter, losses),
                                         propagate_quantized=propagate_quantized, sample_every=sample_every,
                                         float_targets=float_targets, check_cancelled=reporter.check_cancelled,
                                         checkpoints=walk, spill=spill, head_rounding=head_rounding)
        if end_to_end is not None:
            result, tuned = end_to_end.run(result)
    except BaseException:
        spill.close()
        raise
    extra = {"mean_layer_loss": sum(losses) / len(losses) if losses else 0.0,
             "calibration_tokens": int(batches.numel()), "resumed_from_block": walk.restored_block,
             **tuned, **(extra_metrics or {})}
    try:
        return save_weight_only(source, result.quantized, targets, config, dst, reporter, method, extra,
                                result.rewritten, result.uncalibrated, spill=spill)
    finally:
        spill.close()


def _end_to_end(config: QatConfig | GptqConfig, src: Path, reporter: ProgressReporter, source: StreamingModel
                ) -> EndToEndPhase | None:
    """The stage's end-to-end phase when it asks for one (refused before any walk for a model it cannot train)."""
    return EndToEndPhase(config, src, reporter, source.model) if config.end_to_end_tokens else None


def _head_gptq(config: GptqSettings):
    """A quantized LM head (or tied embedding) is rounded by GPTQ on its inputs in every calibrated
    weight-only method (AWQ's scales have no Linear before the head to fold into), with the head's own
    damping (gptq.HEAD_DAMPING) unless the job asks for more."""
    return gptq_head_rounding(max(config.damping, HEAD_DAMPING), config.lazy_batch_columns, config.act_order)


@method(Q, "gptq", config=GptqConfig, produces=(COMPRESSED,), model_kinds=MODEL_KINDS,
        summary="GPTQ: Hessian-aware rounding from calibration text, block by block (and with end_to_end_tokens, "
                "the whole model's scales tuned against the float model)", metrics=(LOSS, *END_TO_END_CURVES))
def _gptq(config: GptqConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    source = stream_float(src, reporter)
    step = gptq_block_step(config.damping, config.lazy_batch_columns, config.act_order, clip=config)
    targets = weight_targets(source.model, config, conv1d=True)
    return _run_calibrated(config, source, targets, dst, reporter, "gptq", step,
                           propagate_quantized=config.propagate_quantized, head_rounding=_head_gptq(config),
                           end_to_end=_end_to_end(config, src, reporter, source))


@method(Q, "awq", config=AwqConfig, produces=(COMPRESSED,), model_kinds=MODEL_KINDS,
        summary="AWQ: activation-aware per-channel scales and clipping search, block by block", metrics=(LOSS,))
def _awq(config: AwqConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    source = stream_float(src, reporter)
    return _run_calibrated(config, source, weight_targets(source.model, config, conv1d=True), dst, reporter, "awq",
                           awq_block_step(config), sample_every=_awq_sampling(config),
                           head_rounding=gptq_head_rounding())


@method(Q, "qat", config=QatConfig, produces=(COMPRESSED,), model_kinds=MODEL_KINDS,
        summary="Quantization-aware training: AWQ grid, then STE fine-tuning of each block on calibration text "
                "(and with end_to_end_tokens, the whole model's scales tuned against the float model)",
        metrics=(LOSS, *QAT_CURVES))
def _qat(config: QatConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    source = stream_float(src, reporter)
    return _run_calibrated(config, source, weight_targets(source.model, config, conv1d=True), dst, reporter, "qat",
                           qat_block_step(config), sample_every=_awq_sampling(config),
                           float_targets=config.targets if config.steps_per_block else "none",
                           head_rounding=gptq_head_rounding(),
                           end_to_end=_end_to_end(config, src, reporter, source))


@method(Q, "autoround", config=AutoRoundConfig, produces=(COMPRESSED,), model_kinds=MODEL_KINDS,
        summary="Learned rounding (AutoRound): rounding offsets and scale gains trained by signed gradient descent "
                "towards the float outputs, block by block, on AWQ's grid", metrics=(LOSS, *BLOCK_CURVES))
def _autoround(config: AutoRoundConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    source = stream_float(src, reporter)
    return _run_calibrated(config, source, weight_targets(source.model, config, conv1d=True), dst, reporter,
                           "autoround", autoround_block_step(config), sample_every=_awq_sampling(config),
                           float_targets=config.targets, head_rounding=gptq_head_rounding())


@method(Q, "mixed-precision", config=MixedPrecisionConfig, produces=(COMPRESSED,), model_kinds=MODEL_KINDS,
        summary="GPTQ with the most sensitive Linears kept at 8 bits under an average-bits budget",
        metrics=(LOSS, *END_TO_END_CURVES))
def _mixed(config: MixedPrecisionConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    source = stream_float(src, reporter)
    if source.tied_head and 0 < config.embedding_bits < 8:
        # Found before the calibration, not when the checkpoint is written (ct_format.dequantized_on_load).
        raise families.refuse(source.model.config, "mixed precision with a 4-bit tied embedding/head",
                              "ties its LM head to the embedding: stored packed, transformers reloads that table only "
                              "by dequantizing the whole checkpoint at load, with one scheme for every module, and "
                              "mixed precision has two; use embedding_bits 8 or 0 with it, or 4 with gptq, awq or qat")
    end_to_end = _end_to_end(config, src, reporter, source)
    targets = weight_targets(source.model, config)
    sensitivity: dict[str, float] = {}

    def on_measured(i: int, total: int, name: str, _figures: dict) -> None:
        reporter.report(0, 1, f"sensitivity pass: {name} ({i}/{total})", layer=name)

    # The sensitivity pass needs only the float model's Hessians: no propagation, no rounding.
    batches = config.batches(src)
    quantize_sequential(source, targets, batches, sensitivity_step(sensitivity), on_measured,
                        propagate_quantized=False, finish_rest=False)
    targets, promoted = allocate(targets, sensitivity, config.average_bits)
    reporter.report(0, 1, f"kept {len(promoted)} layers at 8 bits: {', '.join(promoted)}")
    source = StreamingModel(src)
    targets = _retarget(targets, source.model)
    step = gptq_block_step(config.damping, config.lazy_batch_columns, config.act_order, clip=config)
    return _run_calibrated(config, source, targets, dst, reporter, "mixed-precision", step,
                           propagate_quantized=config.propagate_quantized, batches=batches,
                           head_rounding=_head_gptq(config), end_to_end=end_to_end,
                           extra_metrics={"layers_at_8_bits": promoted,
                                          "sensitivity": {n: sensitivity[n] for n in promoted}})


def _retarget(targets: list[Target], model: torch.nn.Module) -> list[Target]:
    """The same targets bound to the modules of a fresh model skeleton."""
    return [dataclasses.replace(t, module=model.get_submodule(t.name)) for t in targets]


@method(Q, "smoothquant", config=SmoothQuantConfig, produces=(COMPRESSED,), model_kinds=MODEL_KINDS,
        summary="SmoothQuant (alpha searched per layer group), then W8A8", metrics=(LOSS, SAMPLE_ERROR))
@method(Q, "w8a8", config=W8A8Config, produces=(COMPRESSED,), model_kinds=MODEL_KINDS,
        summary="INT8 weights (per channel) and INT8 activations, dynamic per token or static per tensor",
        metrics=(LOSS,))
def _w8a8(config: W8A8Config, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    source = stream_float(src, reporter)
    targets = weight_targets(source.model, _grid(bits=8, group_size=0, embedding_bits=config.embedding_bits,
                                                 head_bits=config.head_bits), conv1d=True)
    sample_every = _every(config, SMOOTHING_SAMPLE_ROWS) if config.smoothing else 0
    return _run_calibrated(config, source, targets, dst, reporter, "smoothquant" if config.smoothing else "w8a8",
                           w8a8_block_step(config), sample_every=sample_every)


def _transform(config: CalibrationConfig, grid: WeightOnlyConfig, src: Path, dst: Path, reporter: ProgressReporter,
               method: str, step, sample_every: int) -> StageResult:
    """A float model out: the step's folded scales (and clamps) in, nothing rounded."""
    source = stream_float(src, reporter)
    targets = {t.name: t for t in weight_targets(source.model, grid) if t.role == "linear"}
    batches = config.batches(src)
    figures: list[dict] = []

    def on_layer(i: int, total: int, name: str, layer_figures: dict) -> None:
        figures.append(layer_figures)
        reporter.report(i, total + 1, f"{method} {name} ({i}/{total})", layer=name, **layer_figures)

    walk = stage_walk_checkpoints(reporter)
    changed = rewrite_sequential(source, targets, batches, step, on_layer, sample_every=sample_every,
                                 check_cancelled=reporter.check_cancelled, checkpoints=walk)
    reporter.report(len(targets), len(targets) + 1, "writing the float model")
    replaced = write_float_model(source, changed, dst)
    carry_beside_weights(src, dst)
    reporter.report(len(targets) + 1, len(targets) + 1, "saved float model")
    scaled = sum(1 for f in figures if f.get("scale_form", "none") != "none" or f.get("alpha") is not None)
    metrics = {"transformed_modules": len(figures), "scaled_modules": scaled, "rewritten_tensors": replaced,
               "calibration_tokens": int(batches.numel()), "resumed_from_block": walk.restored_block}
    if any("clamped_share" in f for f in figures):
        metrics["mean_clamped_share"] = sum(f.get("clamped_share", 0.0) for f in figures) / len(figures)
    return StageResult(format=common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, architecture=architecture_of(source.model),
                       compression={"method": method, "rounded": False, **config.model_dump()}, metrics=metrics)


@method(Q, "awq-transform", config=AwqTransformConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS,
        summary="AWQ scales searched for an engine's grid and folded in (clipping, as a clamp, on request); the "
                "float model out, for that engine's quantizer to round", metrics=(SCALE_GAIN,))
def _awq_transform(config: AwqTransformConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    grid = _grid(bits=config.bits, group_size=config.group_size, symmetric=config.symmetric)
    return _transform(config, grid, src, dst, reporter, "awq-transform", awq_transform_step(config),
                      _awq_sampling(config))


@method(Q, "smoothquant-transform", config=SmoothQuantTransformConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS,
        summary="SmoothQuant scales searched for an engine's INT8 activations and folded in; the float model out",
        metrics=(SAMPLE_ERROR,))
def _smoothquant_transform(config: SmoothQuantTransformConfig, src: Path, dst: Path, reporter: ProgressReporter
                           ) -> StageResult:
    return _transform(config, _grid(bits=8, group_size=0), src, dst, reporter, "smoothquant-transform",
                      smoothquant_transform_step(config), _every(config, SMOOTHING_SAMPLE_ROWS))


# Searches whose loss is not quadratic score candidates on a sample of each layer's real
# input rows: SmoothQuant's alpha (W8A8 error), AWQ's scales (the MLP's output).
SMOOTHING_SAMPLE_ROWS = 2048
AWQ_SAMPLE_ROWS = 512


def _every(config: CalibrationConfig, rows: int) -> int:
    return max(1, config.calibration_samples * config.calibration_sequence_length // rows)


def _awq_sampling(config: AwqConfig | AwqTransformConfig) -> int:
    return _every(config, AWQ_SAMPLE_ROWS) if config.loss == "module" else 0


# Every quantizer method: those above, and those declared in modules of their own, which register
# when imported here (one line each).
METHODS = registry(Q)
