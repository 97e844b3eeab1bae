"""What every weight-only quantizer method shares: the float input streamed in, the rounded weights
written out as compressed-tensors with the stage's figures. A method module (engine.py, or one of its
own) rounds the weights in between."""

from __future__ import annotations

from pathlib import Path

import torch

from modelpress.v1 import common_pb2
from services.common.calibration.streaming import ExpertLinear, StreamingModel
from services.common.models import families
from services.common.contract.engine_api import ProgressMetric, ProgressReporter, StageResult
from services.common.models.carried_files import carry_beside_weights
from services.common.models.float_checkpoint import refuse_quantized
from services.common.models.stored_bits import stored_bits_per_weight
from services.common.runtime.memory import return_large_frees_to_os
from services.quantizer.ct_format import is_standard_layout, write_compressed_tensors
from services.quantizer.sequential import describe_uncalibrated
from services.quantizer.targets import fallback_report

# The per-layer figure of every method that rounds weights without data (RTN and its kin).
WEIGHT_ERROR = ProgressMetric("relative_weight_error", "per-layer", "Relative error of the rounded weights")


def architecture_of(model) -> str:
    return (model.config.architectures or [type(model).__name__])[0]


def stream_float(src: Path, reporter: ProgressReporter) -> StreamingModel:
    """The float input, streamed block by block (a quantized input is refused)."""
    reporter.report(0, 1, "reading model layout")
    refuse_quantized(src)
    return_large_frees_to_os()
    return StreamingModel(src)


def check_experts_reload(source: StreamingModel, quantized) -> None:
    """Refuses, naming the family, routed experts in a layout stock transformers does not reload: its
    conversion mapping dequantizes packed per-expert codes (symmetric, weight-only), all with one
    scheme, while merging them into its fused expert tensors, and fails on unpacked ones (asymmetric
    codes, W8A8's int8 `weight`) and on float experts beside quantized Linears."""
    routed = {name: qw for name, qw in quantized.items()
              if isinstance(source.model.get_submodule(name), ExpertLinear)}
    schemes = {qw.scheme for qw in routed.values()}
    if len(schemes) > 1:
        # Its expert converter decompresses every expert with one config group's scheme.
        raise families.refuse(source.model.config, "quantization of routed experts",
                              f"reloads its experts with one scheme for all of them; this run gives them "
                              f"{len(schemes)} ({', '.join(sorted(str(s) for s in schemes))})")
    for name, qw in routed.items():
        if not qw.scheme.symmetric or qw.activations is not None:
            kind = "asymmetric" if not qw.scheme.symmetric else "activation-quantized"
            raise families.refuse(source.model.config, "quantization of routed experts",
                                  f"reloads its experts only from packed symmetric weight-only codes ({name} "
                                  f"has {kind} ones): transformers dequantizes packed per-expert codes while "
                                  "merging them into its fused expert tensors; use a symmetric grid")


def experts_report(source: StreamingModel, uncalibrated: list[str] | None) -> tuple[dict, list[str]]:
    """What a run over routed experts says in its result: how they reload, and which got no tokens."""
    family = families.family_of(source.model.config)
    if not source.split_experts:
        return {}, []
    compression = {"experts": family.experts.reload if family and family.experts else "per-expert Linears"}
    notes = []
    if uncalibrated:
        notes.append(f"{len(uncalibrated)} expert Linears got no calibration tokens (the router sent them none "
                     "of the calibration samples' tokens) and were rounded to nearest instead: "
                     f"{describe_uncalibrated(uncalibrated)}")
    return compression, notes


def save_weight_only(source: StreamingModel, quantized, targets, config, dst: Path, reporter: ProgressReporter,
                     method: str, extra_metrics: dict | None = None,
                     rewritten: dict[str, torch.Tensor] | None = None,
                     uncalibrated: list[str] | None = None, spill=None) -> StageResult:
    """Writes the rounded weights as compressed-tensors (the tokenizer beside them) and the stage's
    result: the config, group fallbacks, layout and effective bits; for routed experts, how they
    reload and which got no calibration tokens (`uncalibrated`, rounded to nearest). `spill` holds the
    codes on disk where the walk put them there (spilled_codes)."""
    check_experts_reload(source, quantized)
    experts, notes = experts_report(source, uncalibrated)
    reporter.report(len(targets), len(targets) + 1, "writing compressed-tensors model")
    write_compressed_tensors(source, quantized, dst, source.tied_head, rewritten, spill)
    carry_beside_weights(source.reader.folder, dst)
    n = len(targets)
    layout = "vllm" if is_standard_layout(dst) else "transformers-only"
    reporter.report(n + 1, n + 1, "saved compressed-tensors model")
    return StageResult(
        format=common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS,
        architecture=architecture_of(source.model),
        compression={"method": method, **config.model_dump(), "group_fallbacks": fallback_report(targets),
                     "layout": layout, **experts},
        metrics={"quantized_modules": n, "effective_bits": effective_bits(targets),
                 "stored_bits_per_weight": stored_bits_per_weight(dst),
                 "linear_effective_bits": effective_bits(targets, ("linear",)), **(extra_metrics or {}),
                 **({"uncalibrated_layers": list(uncalibrated)} if uncalibrated else {})},
        notes=notes,
    )


def effective_bits(targets, roles: tuple[str, ...] = ("linear", "embedding", "head")) -> float:
    """Average stored bits per quantized weight of `roles`, scales and zero-points included (the
    float tensors left out: stored_bits_per_weight counts those too)."""
    bits = weights = 0.0
    seen: set[int] = set()
    for t in (t for t in targets if t.role in roles):
        if id(t.module.weight) in seen:
            continue
        seen.add(id(t.module.weight))
        count = t.module.weight.numel()
        width = t.scheme.group_width(t.module.weight.shape[1])
        per_group = 16 + (0 if t.scheme.symmetric else t.scheme.bits)
        bits += count * (t.scheme.bits + per_group / width)
        weights += count
    return bits / weights if weights else 0.0
