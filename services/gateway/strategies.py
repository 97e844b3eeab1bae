"""Strategy templates (the seed's CompressionStrategy): one per recipe, with what it suits and
where it runs; the expected figures are filled in from measured job outcomes, never typed in."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from modelpress.v1 import common_pb2, gateway_pb2
from services.common.measure.isa import class_flags, isa_class
from modelpress.quality_kept import quality_retention
from services.common.contract.recipes import RECIPES


@dataclass(frozen=True)
class StrategyTemplate:
    recipe: str
    target_scenario: str
    hardware: tuple[str, ...]


TEMPLATES = {t.recipe: t for t in (
    StrategyTemplate("fp16", "cloud", ("cuda", "cpu with avx512_fp16 or amx", "apple mps")),
    StrategyTemplate("bf16", "cloud", ("cuda (ampere and newer)", "cpu with avx512_bf16 or amx")),
    StrategyTemplate("int8-weight-only", "edge", ("cpu", "cuda", "vllm (compressed-tensors)")),
    StrategyTemplate("int8-compact", "edge", ("cpu", "transformers (compressed-tensors)")),
    StrategyTemplate("w4a16-gptq-compact", "mobile", ("transformers (compressed-tensors)", "cpu after export")),
    StrategyTemplate("w8a8-dynamic", "cloud", ("cuda with int8 tensor cores (vllm)", "cpu with vnni via onnx/openvino")),
    StrategyTemplate("w8a8-static", "edge", ("cuda with int8 tensor cores (vllm)", "npu / int8 accelerators")),
    StrategyTemplate("w8a8-smoothquant", "cloud", ("cuda with int8 tensor cores (vllm)",)),
    StrategyTemplate("w4a16-rtn", "mobile", ("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)")),
    StrategyTemplate("w4a16-gptq", "edge", ("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)")),
    StrategyTemplate("w4a16-awq", "edge", ("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)")),
    StrategyTemplate("w4a16-qat", "mobile", ("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)")),
    StrategyTemplate("w4a16-mixed", "edge", ("cuda (vllm)", "cpu after export")),
    StrategyTemplate("w8a16-gptq", "cloud", ("cuda (vllm)", "cpu")),
    StrategyTemplate("openvino-bf16", "cloud", ("cpu with amx_bf16 or avx512_bf16 (openvino)",)),
    StrategyTemplate("openvino-int8-bf16", "edge", ("cpu with amx_bf16 or avx512_bf16 (openvino)",)),
    StrategyTemplate("openvino-f16", "cloud", ("cpu with avx512_fp16 or amx_fp16 (openvino)",)),
    StrategyTemplate("onnx-int8", "edge", ("cpu, fastest with vnni (onnxruntime)",)),
    StrategyTemplate("openvino-int8", "edge", ("cpu (openvino)",)),
)}


def techniques_of(recipe: str) -> list[int]:
    return sorted({s.technique for s in RECIPES[recipe].stages})


def measured_on(job: common_pb2.Job) -> str:
    """The ISA class of the machine a job's figures were measured on ("unknown": not recorded)."""
    features = job.result.compressed.machine.isa_features
    return isa_class(features) if features else "unknown"


def strategy(recipe: str, outcomes: list[common_pb2.Job], isa: str = "") -> gateway_pb2.CompressionStrategy:
    """The template of `recipe` with expected figures as medians over its measured outcomes, those
    measured on an `isa`-class CPU where there are any."""
    template = TEMPLATES.get(recipe, StrategyTemplate(recipe, "cloud", ()))
    compute = RECIPES[recipe].compute
    message = gateway_pb2.CompressionStrategy(
        name=recipe, description=RECIPES[recipe].summary, target_scenario=template.target_scenario,
        techniques=techniques_of(recipe), hardware_compatibility=template.hardware, recipe=recipe,
        compute_precision=compute)
    if isa:
        message.emulated_on_isa = RECIPES[recipe].emulated_on(class_flags(isa))
    mine = [j for j in outcomes if j.recipe == recipe and j.result.compressed_model_size_bytes]
    if not mine:
        message.evidence = ("no measurement yet: run a job with this recipe or `modelpress recommend` "
                            "and the figures appear here")
        return message
    preface = ""
    if isa:
        same = [j for j in mine if measured_on(j) == isa]
        if not same:
            preface = (f"no measurement on an {isa} CPU; figures from "
                       f"{', '.join(sorted({measured_on(j) for j in mine}))}: ")
        mine = same or mine
    message.measured_isa_class = ", ".join(sorted({measured_on(j) for j in mine}))
    by_kind: dict[str, list[common_pb2.Job]] = {}
    for job in mine:
        by_kind.setdefault(job.result.original.kind or "unknown", []).append(job)
    # A median across model kinds (an LM's speedup with an encoder's) describes neither: the
    # expected figures are the most-measured kind's, the others are named in the evidence.
    kind, chosen = max(by_kind.items(), key=lambda item: (len(item[1]), item[0]))
    message.expected_compression_ratio = statistics.median(j.result.compression_ratio for j in chosen)
    message.expected_speedup = statistics.median(j.result.latency_improvement for j in chosen)
    message.expected_accuracy_retention = statistics.median(
        quality_retention(j.result.compressed, j.result.original)[0] for j in chosen)
    models = sorted({j.result.original.architecture or j.model.WhichOneof("source") for j in chosen})
    devices = sorted({j.result.compressed.device for j in chosen})
    message.evidence = preface + (f"{kind}: median of {len(chosen)} measured job(s) ({', '.join(j.job_id for j in chosen[:5])}"
                        f"{', ...' if len(chosen) > 5 else ''}) on {', '.join(models)}; device {', '.join(devices)}")
    for other, jobs in sorted(by_kind.items()):
        if other != kind:
            message.evidence += (f"; {other} ({len(jobs)} job(s), not in these figures): compression "
                                 f"{statistics.median(j.result.compression_ratio for j in jobs):.2f}x, speedup "
                                 f"{statistics.median(j.result.latency_improvement for j in jobs):.2f}x")
    return message


def all_strategies(outcomes: list[common_pb2.Job], isa: str = "") -> list[gateway_pb2.CompressionStrategy]:
    return [strategy(name, outcomes, isa) for name in RECIPES]
