"""Strategies (the seed's CompressionStrategy): one per built-in recipe, with what it suits and where
it runs as the recipe declares them (recipes.builtin requires both); the expected figures are filled
in from measured job outcomes, never typed in."""

from __future__ import annotations

import statistics

from modelpress.v1 import common_pb2, gateway_pb2
from services.common.measure.isa import class_flags, isa_class
from modelpress.quality_kept import quality_retention
from services.common.contract.recipes import RECIPES


def techniques_of(recipe: str) -> list[int]:
    return sorted({s.technique for s in RECIPES[recipe].stages})


def measured_on(job: common_pb2.Job) -> str:
    """The ISA class of the machine a job's figures were measured on ("unknown": not recorded)."""
    features = job.result.compressed.machine.isa_features
    return isa_class(features) if features else "unknown"


def strategy(recipe: str, outcomes: list[common_pb2.Job], isa: str = "") -> gateway_pb2.CompressionStrategy:
    """The strategy of built-in `recipe`, with expected figures as medians over its measured outcomes, those
    measured on an `isa`-class CPU where there are any."""
    declared = RECIPES[recipe]
    message = gateway_pb2.CompressionStrategy(
        name=recipe, description=declared.summary, target_scenario=declared.scenario,
        techniques=techniques_of(recipe), hardware_compatibility=declared.hardware, recipe=recipe,
        compute_precision=declared.compute)
    if isa:
        message.emulated_on_isa = declared.emulated_on(class_flags(isa))
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
