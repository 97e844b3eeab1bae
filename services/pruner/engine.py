"""The pruner's methods: each a typed config and a function, registered where it is defined
(`@method`); METHODS is the registry the servicer and the in-process API read.

Engine code only: folders in, folder out, progress through a ProgressReporter.

Unstructured and N:M outputs are stored as dense zeros in a plain float checkpoint, not in a
bitmask layout: every next stage (a quantizer, an engine exporter, a distiller) and every loader
takes them unchanged, and no CPU engine here computes faster from a sparse layout (the metrics
say what a bitmask layout would weigh). Structured outputs are smaller models of the same class.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from modelpress.v1 import common_pb2
from services.common.models import modelio
from services.common.calibration.blocks import named_blocks
from services.common.calibration.streaming import StreamingModel
from services.common.calibration.walk_checkpoint import stage_walk_checkpoints
from services.common.measure.curves import thin
from services.common.contract.engine_api import (CAUSAL_LM, MODEL_KINDS, ProgressMetric, ProgressReporter,
                                                 StageResult)
from services.common.contract.registry import method, registry
from services.common.models.float_checkpoint import refuse_quantized, write_float_model
from services.common.measure.flops import forward_flops, parameter_counts
from services.common.runtime.memory import return_large_frees_to_os
from services.common.models.reload import reload_difference
from services.common.models.carried_files import carry_beside_weights
from services.pruner.configs import (FlopsConfig, HeadsConfig, LayersConfig, MagnitudeConfig, MlpNeuronsConfig,
                                     PruneBase, SparseGptConfig, SparsityConfig, StructuredConfig, WandaConfig)
from services.pruner.importance import score_units
from services.pruner.recovery import recover, zero_masks
from services.pruner.structured import current_shape, cut_to, schedule_shapes, target_shape
from services.pruner.unstructured import (LayerPrune, block_linears, calibrated_step, check_nm,
                                          owl_block_sparsities, prune_calibrated, prune_magnitude, sparsegpt_layer,
                                          wanda_layer)

P = common_pb2.TECHNIQUE_PRUNER
FLOAT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
RECOVERY_CURVE_POINTS = 50

# What each method's progress events carry (the job report plots these by name).
SPARSITY = ProgressMetric("sparsity", "per-layer", "Share of the layer's weights that are zero")
LOSS = ProgressMetric("loss", "per-layer", "Relative output error of the pruned layer on its calibration inputs")
MLP_KEPT = ProgressMetric("mlp_importance_kept", "per-layer", "Share of the block's MLP-neuron importance kept")
RECOVERY = ProgressMetric("recovery_loss", "curve", "Recovery fine-tune loss against the unpruned teacher")


def _architecture(model) -> str:
    return (model.config.architectures or [type(model).__name__])[0]


def cubic_sparsities(final: float, steps: int) -> list[float]:
    """Gradual pruning's targets (Zhu & Gupta, 2017): s_t = s·(1 − (1 − t/N)³), ending at s."""
    return [final * (1.0 - (1.0 - t / steps) ** 3) for t in range(1, steps + 1)]


def _recovery_reporter(reporter: ProgressReporter, label: str, curve: list[float]) -> Callable[[int, float, float], None]:
    def on_step(step: int, loss: float, seconds: float) -> None:
        curve.append(loss)
        reporter.report(0, 1, f"{label}: recovery step {step} ({seconds:.0f} s)", recovery_loss=loss)

    return on_step


def _teacher(src: Path, config: PruneBase):
    """The unpruned input, loaded once per stage for every recovery it runs (None without recovery)."""
    return modelio.load_model(src) if config.recovery_minutes > 0 else None


def _recover(student, teacher, src: Path, config: PruneBase, reporter: ProgressReporter, label: str,
             minutes: float, masks: dict | None, curve: list[float]) -> dict:
    outcome = recover(student, teacher, modelio.load_tokenizer(src), config.text(), config,
                      _recovery_reporter(reporter, label, curve), masks=masks, minutes=minutes)
    return dataclasses.asdict(outcome)


def _flops_figures(before: int, after: int, sequence_length: int) -> dict:
    return {"flops_before": before, "flops_after": after, "flops_ratio": after / before if before else 1.0,
            "flops_shape": f"1x{sequence_length}"}


def _sparse_figures(model, names: list[str]) -> dict:
    """Sparsity of the pruned Linears, and what their weights weigh dense against a bitmask layout
    (the kept values plus one bit per weight)."""
    total = zeros = dense_bytes = bitmask_bytes = 0
    for name in names:
        weight = model.get_submodule(name).weight.detach()
        count, kept = weight.numel(), int(torch.count_nonzero(weight))
        total += count
        zeros += count - kept
        dense_bytes += count * weight.element_size()
        bitmask_bytes += kept * weight.element_size() + (count + 7) // 8
    return {"sparsity": zeros / total if total else 0.0, "pruned_linears": len(names),
            "pruned_linear_bytes_dense": dense_bytes, "pruned_linear_bytes_bitmask": bitmask_bytes}


# How a calibrated method prunes one Linear, from its config; None: magnitude, which needs no data.
LayerPruneOf = Callable[[SparsityConfig], LayerPrune] | None


def _unstructured(method: str, layer_prune: LayerPruneOf
                  ) -> Callable[[SparsityConfig, Path, Path, ProgressReporter], StageResult]:
    def run(config: SparsityConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
        reporter.report(0, 1, "reading model layout")
        refuse_quantized(src)
        return_large_frees_to_os()
        check_nm(StreamingModel(src).model, config.nm)
        steps = cubic_sparsities(config.target_sparsity, config.schedule_steps)
        curve: list[float] = []
        figures: dict = {"schedule": steps, "recovery": []}
        teacher = _teacher(src, config)
        with tempfile.TemporaryDirectory(dir=dst.parent) as scratch:
            current = src
            for t, sparsity in enumerate(steps, start=1):
                out = dst if t == len(steps) else Path(scratch) / f"step{t}"
                label = f"step {t}/{len(steps)}" if len(steps) > 1 else method
                figures.update(_prune_once(method, layer_prune, config, sparsity, current, src, out, reporter,
                                           label))
                if teacher is not None:
                    student = modelio.load_model(out)
                    masks = zero_masks(student, list(block_linears(student)))
                    figures["recovery"].append(_recover(student, teacher, src, config, reporter, label,
                                                        config.recovery_minutes / len(steps), masks, curve))
                    student.save_pretrained(out, safe_serialization=True)
                current = out
        model = modelio.load_model(dst)
        flops, _ = forward_flops(model, 128)
        figures.update(_sparse_figures(model, list(block_linears(model))), **parameter_counts(model))
        figures.update(_flops_figures(flops, flops, 128))
        figures["recovery_curve"] = thin(curve, RECOVERY_CURVE_POINTS)
        reporter.report(1, 1, "saved pruned model (dense zeros)")
        compression = {"method": method, "storage": "dense-zeros", **config.model_dump()}
        return StageResult(format=FLOAT, architecture=_architecture(model), compression=compression,
                           metrics=figures)

    return run


def _prune_once(method: str, layer_prune: LayerPruneOf, config: SparsityConfig, sparsity: float, current: Path,
                src: Path, out: Path, reporter: ProgressReporter, label: str) -> dict:
    source = StreamingModel(current)
    layer_sparsity: dict[str, float] = {}
    losses: list[float] = []
    uncalibrated: list[str] = []  # Linears no calibration token reached (experts the router never chose)

    def on_layer(i: int, total: int, name: str, layer_figures: dict) -> None:
        layer_sparsity[name] = layer_figures["sparsity"]
        if layer_figures.get("no_calibration_tokens"):
            uncalibrated.append(name)
        if "loss" in layer_figures:
            losses.append(layer_figures["loss"])
        reporter.report(i, total + 1, f"{label}: {layer_figures['method']} {name} ({i}/{total})", layer=name,
                        **layer_figures)

    figures: dict = {}
    if layer_prune is None:
        changed = prune_magnitude(source, sparsity, config.nm, config.scope, on_layer)
    else:
        batches = config.batches(src)
        figures["calibration_tokens"] = int(batches.numel())
        block_sparsity = None
        if config.owl:
            def on_block(i: int, n: int, ratio: float) -> None:
                reporter.report(0, 1, f"{label}: OWL outlier ratio of block {i} = {ratio:.4f}", outlier_ratio=ratio)
            block_sparsity = owl_block_sparsities(source, batches, sparsity, config.owl_lambda, config.owl_threshold,
                                                  on_block)
            figures["owl_block_sparsity"] = block_sparsity
            source = StreamingModel(current)
        step = calibrated_step(method, (lambda i: block_sparsity[i]) if block_sparsity else (lambda i: sparsity),
                               layer_prune(config))
        walk = stage_walk_checkpoints(reporter, walk=label)
        changed = prune_calibrated(source, batches, step, on_layer, reporter.check_cancelled, walk)
        figures["mean_layer_loss"] = sum(losses) / len(losses) if losses else 0.0
        figures["resumed_from_block"] = walk.restored_block
        if uncalibrated:
            figures["uncalibrated_layers"] = uncalibrated
    write_float_model(source, changed, out)
    carry_beside_weights(src, out)
    figures["layer_sparsity"] = layer_sparsity
    return figures


def _wanda(config: WandaConfig) -> LayerPrune:
    return wanda_layer(config.nm)


def _sparsegpt(config: SparseGptConfig) -> LayerPrune:
    return sparsegpt_layer(config.nm, damping=config.damping, block_size=config.lazy_batch_columns)


method(P, "magnitude", config=MagnitudeConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS, metrics=(SPARSITY, RECOVERY),
       summary="Zero the smallest |w| of every Linear in the blocks (per layer or one global threshold); "
               "unstructured or N:M; no data")(_unstructured("magnitude", None))
method(P, "wanda", config=WandaConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS,
       metrics=(SPARSITY, LOSS, RECOVERY),
       summary="Wanda: zero the lowest |w|·‖x‖ of every row, from calibration activations, block by block; "
               "unstructured (optionally OWL layer sparsities) or N:M")(_unstructured("wanda", _wanda))
method(P, "sparsegpt", config=SparseGptConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS,
       metrics=(SPARSITY, LOSS, RECOVERY),
       summary="SparseGPT: OBS masks from each layer's input Hessian with the remaining weights updated to "
               "compensate, block by block; unstructured or N:M")(_unstructured("sparsegpt", _sparsegpt))


# Stacked: the lowest registers first (the order Describe lists them in).
@method(P, "structured", config=FlopsConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS, metrics=(MLP_KEPT, RECOVERY),
        summary="Reach a FLOPs target by removing layers (half the cut) and MLP neurons (the rest), or remove "
                "explicit amounts of layers, neurons and heads")
# Families that derive the head size from hidden_size / num_attention_heads (BERT, GPT-2, OPT ...):
# fewer heads at the same width do not reload in stock transformers (families.Family.structured_note).
@method(P, "heads", config=HeadsConfig, produces=(FLOAT,), model_kinds=(CAUSAL_LM,), metrics=(RECOVERY,),
        summary="Remove attention heads uniformly (whole KV groups, or query heads per group); decoders whose "
                "config carries head_dim (Llama, Qwen, Gemma, Phi-3 ...)")
@method(P, "layers", config=LayersConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS, metrics=(RECOVERY,),
        summary="Remove whole blocks by block importance (1 − cos(input, output) by default)")
@method(P, "mlp-neurons", config=MlpNeuronsConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS,
        metrics=(MLP_KEPT, RECOVERY),
        summary="Remove the least important MLP neurons of every block (the intermediate size shrinks uniformly); "
                "reloads with stock transformers")
def _structured(config: StructuredConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    reporter.report(0, 1, "loading model")
    refuse_quantized(src)
    model = modelio.load_model(src)
    before_flops, _ = forward_flops(model, config.flops_sequence_length)
    before_params = parameter_counts(model)["parameters"]
    start, end = current_shape(model, config), target_shape(model, config)
    if end == start:
        raise ValueError(f"nothing to prune: the asked shape {end.data()} is the model's own (model family "
                         f"{model.config.model_type!r}; MLP widths round to multiples of width_multiple="
                         f"{config.width_multiple})")
    shapes = schedule_shapes(start, end, config.schedule_steps)
    batches = config.batches(src)
    curve: list[float] = []
    figures: dict = {"shape_before": start.data(), "shape_after": end.data(),
                     "schedule": [s.data() for s in shapes], "recovery": [], "calibration_tokens": int(batches.numel())}
    teacher = _teacher(src, config)
    for t, shape in enumerate(shapes, start=1):
        label = f"step {t}/{len(shapes)}" if len(shapes) > 1 else "structured"

        def on_window(i: int, n: int) -> None:
            reporter.report(i, n + 1, f"{label}: importance pass ({i}/{n} windows)")

        scores = score_units(model, batches, config.importance, config.layer_importance, config.head_unit,
                             want_heads=shape.head_units < current_shape(model, config).head_units,
                             grams=config.reconstruct,
                             check_cancelled=reporter.check_cancelled, on_window=on_window)
        cut = cut_to(model, shape, scores, config)
        for block, layer in zip(_block_names(model), cut["per_layer"]):
            if layer:
                reporter.report(1, 1, f"{label}: cut {block}", layer=block, **{k: v for k, v in layer.items()
                                                                               if not isinstance(v, list)})
        figures.update({k: v for k, v in cut.items() if k != "per_layer"})
        if teacher is not None:
            figures["recovery"].append(_recover(model, teacher, src, config, reporter, label,
                                                config.recovery_minutes / len(shapes), None, curve))
    after_flops, _ = forward_flops(model, config.flops_sequence_length)
    figures.update(_flops_figures(before_flops, after_flops, config.flops_sequence_length))
    after_params = parameter_counts(model)["parameters"]
    figures.update({"parameters_before": before_params, "parameters": after_params,
                    "parameters_ratio": after_params / before_params, "recovery_curve": thin(curve, RECOVERY_CURVE_POINTS)})
    reporter.report(1, 1, "saving the smaller model")
    model.save_pretrained(dst, safe_serialization=True)
    carry_beside_weights(src, dst)
    figures["reload_max_abs_difference"] = reload_difference(model, dst, batches[:1], what="the pruned model")
    return StageResult(format=FLOAT, architecture=_architecture(model),
                       compression={"method": "structured", **config.model_dump()}, metrics=figures)


def _block_names(model) -> list[str]:
    return [name for name, _ in named_blocks(model)]


# Every module that declares pruner methods is imported above; this is their registry.
METHODS = registry(P)
