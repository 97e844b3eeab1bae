"""Strategies (the seed's CompressionStrategy): one per built-in recipe, with what it suits and where
it runs as the recipe declares them (recipes.builtin requires both); the expected figures are filled
in from measured job outcomes, never typed in."""

from __future__ import annotations

import statistics

from modelpress.v1 import common_pb2, gateway_pb2
from services.common.measure.isa import class_flags, isa_class
from modelpress.quality_kept import measured_retention
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
    # Medians of what was measured: a job that did not measure a figure does not count as a 0 in it.
    for name, values in (("expected_compression_ratio", _measured(chosen, "compression_ratio")),
                         ("expected_speedup", _measured(chosen, "latency_improvement")),
                         ("expected_accuracy_retention",
                          [kept for j in chosen
                           if (kept := measured_retention(j.result.compressed, j.result.original)[0]) is not None])):
        if values:
            setattr(message, name, statistics.median(values))
    models = sorted({j.result.original.architecture or j.model.WhichOneof("source") for j in chosen})
    devices = sorted({j.result.compressed.device for j in chosen})
    message.evidence = preface + (f"{kind}: median of {len(chosen)} measured job(s) ({', '.join(j.job_id for j in chosen[:5])}"
                        f"{', ...' if len(chosen) > 5 else ''}) on {', '.join(models)}; device {', '.join(devices)}")
    for other, jobs in sorted(by_kind.items()):
        if other != kind:
            message.evidence += (f"; {other} ({len(jobs)} job(s), not in these figures): compression "
                                 f"{_median_text(_measured(jobs, 'compression_ratio'))}, speedup "
                                 f"{_median_text(_measured(jobs, 'latency_improvement'))}")
    return message


def _measured(jobs: list[common_pb2.Job], figure: str) -> list[float]:
    return [getattr(j.result, figure) for j in jobs if j.result.HasField(figure)]


def _median_text(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x" if values else "n/a"


def all_strategies(outcomes: list[common_pb2.Job], isa: str = "") -> list[gateway_pb2.CompressionStrategy]:
    return [strategy(name, outcomes, isa) for name in RECIPES]
