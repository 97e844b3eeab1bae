#!/usr/bin/env python3
"""Regenerates the parts of docs/ that come from data. A generated part sits between markers, each on a
line of its own:

    <!-- generated: NAME (docs/generate.py) -->
    ...
    <!-- end generated -->

NAME picks a renderer in SECTIONS: `recipes` and `thresholds` read the registries in
services/common/contract/; every `bench-*` reads one of bench/results/*.json and states the machine that
file records beside its table. The prose around the markers is hand-written and left alone.

    python docs/generate.py           # rewrite the pages whose generated parts are stale (`make docs`)
    python docs/generate.py --check   # exit 1 naming each stale page (tests/unit/docs runs the same check)

Nothing here imports torch: the registries and the ISA classifier are torch-free, so a run takes well
under a second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # run as `python docs/generate.py`: the project's packages sit one level up
    sys.path.insert(0, str(ROOT))

BEGIN = "<!-- generated: {name} (docs/generate.py) -->"
END = "<!-- end generated -->"
# A marker is a line of its own, so prose may quote one inside backticks.
BLOCK = re.compile(r"^<!-- generated: (?P<name>\S+) \(docs/generate\.py\) -->\n.*?^<!-- end generated -->$",
                   re.S | re.M)
OPENINGS = re.compile(r"^<!-- generated:", re.M)
CLOSINGS = re.compile(r"^<!-- end generated -->$", re.M)
MINUS = "\u2212"
DASH = "\u2013"  # an absent figure, and the separator inside an interval


class GenerationError(Exception):
    """A page's markers or a results file cannot be rendered; the message names the page or file."""


# ----------------------------------------------------------------------------------------------
# Formatting: one place for how a figure is written, so every table reads alike.

def percent_change(fraction: float | None) -> str:
    """A relative change (Δppl, ...): two decimals under 1 %, one under 1000 %, none past."""
    if fraction is None:
        return DASH
    value = fraction * 100
    if abs(value) < 0.005:  # a float's noise (ONNX FP32 against PyTorch FP32), not a change
        return "0.00 %"
    digits = 2 if abs(value) < 1 else 1 if abs(value) < 1000 else 0
    return f"{value:+.{digits}f} %".replace("-", MINUS)


def percent(fraction: float | None, digits: int = 1) -> str:
    return DASH if fraction is None else f"{fraction * 100:.{digits}f} %"


def megabytes(size_bytes: float | int | str | None) -> str:
    return DASH if size_bytes in (None, "") else f"{int(size_bytes) / 1e6:.1f}"


def speed(ratio: float | None, ci: Iterable[float] | None = None) -> str:
    """A speedup with its 95 % interval where one was measured (a baseline's [1, 1] is not)."""
    if ratio is None:
        return DASH
    bounds = list(ci or [])[:2]
    if len(bounds) < 2 or bounds == [1.0, 1.0]:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} [{bounds[0]:.2f}{DASH}{bounds[1]:.2f}]"


def ci_speed(entry: Mapping) -> str:
    """{speedup, ci95} as the benches nest it per phase."""
    return speed(entry["speedup"], entry.get("ci95"))


def cell(value: Any) -> str:
    text = DASH if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def config_text(config: Mapping) -> str:
    """A config as `--set` takes it: field=value, JSON spelling for numbers and booleans."""
    return ", ".join(f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                     for key, value in config.items())


def field(record: Mapping, snake: str) -> Any:
    """A machine record's field in either spelling: the benches write snake_case, the gateway's JSON
    (evaluation.json) camelCase."""
    if snake in record:
        return record[snake]
    head, *rest = snake.split("_")
    return record.get(head + "".join(part.title() for part in rest))


def machine_line(machine: Mapping | None) -> str:
    """The machine a results file records, in one italic line beside its table."""
    if not machine:
        return "*Machine: not recorded in the results file.*\n"
    if machine.get("recorded") is False:
        stated = machine.get("as_stated", "?")
        return note(f"Machine: not recorded by the bench; as stated when it ran: {stated}.")
    from services.common.measure.isa import isa_class

    flags = field(machine, "isa_features") or []
    klass = field(machine, "isa_class") or f"{isa_class(flags)} (classified from the recorded flags)"
    parts = [str(field(machine, "cpu_model") or "CPU not named")]
    if field(machine, "logical_cores"):
        parts.append(f"{field(machine, 'logical_cores')} logical cores")
    if machine.get("threads"):
        parts.append(f"{machine['threads']} threads")
    parts.append(f"ISA class {klass}")
    if flags:
        parts.append("flags " + " ".join(flags))
    if field(machine, "torch_version"):
        parts.append(f"torch {field(machine, 'torch_version')}")
    if field(machine, "recorded_at"):
        parts.append(f"recorded {str(field(machine, 'recorded_at'))[:10]}")
    return f"*Machine: {', '.join(parts)}.*\n"


def load_line(load: Mapping | None) -> str:
    """What else the machine did while the rows were timed (the evaluator's load record)."""
    if not load:
        return ""
    parts = []
    if load.get("load_average_1m") is not None:
        parts.append(f"load average {load['load_average_1m']:.2f}")
    if load.get("others_cpu_share") is not None:
        parts.append(f"other processes' CPU share {percent(load['others_cpu_share'])}")
    if load.get("steal_share"):
        parts.append(f"steal {percent(load['steal_share'])}")
    return f"*While timing: {', '.join(parts)}.*\n" if parts else ""


def note(text: str) -> str:
    return f"*{text}*\n"


def results(name: str) -> dict:
    path = RESULTS / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GenerationError(f"bench/results/{name}: missing; its bench writes it") from None
    except json.JSONDecodeError as exc:
        raise GenerationError(f"bench/results/{name}: not JSON ({exc})") from None


def section(file: str, headers: list[str], rows: Iterable[Iterable[Any]], *footer: str) -> str:
    """A bench table: where it comes from, the table, then its notes and machine lines."""
    return f"*From `bench/results/{file}`.*\n\n" + table(headers, rows) + "\n" + "".join(footer)


# ----------------------------------------------------------------------------------------------
# The registries: recipes and threshold sets.

TECHNIQUE_HEADINGS = {"quantizer": "Quantizer", "pruner": "Pruner", "distiller": "Distiller",
                      "optimizer": "Optimizer (inference engines)",
                      "composite": "Several services (composites)"}


def technique_name(value: Any) -> str:
    """A stage's technique as pipeline files spell it (quantizer, ...), from an enum number, an enum
    member or a name."""
    if isinstance(value, str):
        return value.lower().removeprefix("technique_")
    if isinstance(getattr(value, "name", None), str):
        return value.name.lower().removeprefix("technique_")
    from modelpress.v1 import common_pb2

    try:
        return common_pb2.Technique.Name(int(value)).lower().removeprefix("technique_")
    except (ValueError, TypeError):
        return str(value)


def stage_text(stage: Any, several: bool) -> str:
    method = getattr(stage, "method", "")
    text = f"{technique_name(getattr(stage, 'technique', ''))}/{method}"
    config = getattr(stage, "config", None) or {}
    if config:
        text += f" ({config_text(config)})"
    if getattr(stage, "gate", ""):
        text += f" gate `{stage.gate}`"
    label = getattr(stage, "name", "") or method
    return f"{label}: {text}" if several else text


def recipes_section(_: str = "") -> str:
    """The built-in recipes, grouped by the service(s) their stages run on. Reads only the public
    fields of a RecipeDef (name -> stages, summary, compute) and of its stages."""
    from services.common.contract import recipes as registry

    groups: dict[str, list[list[str]]] = {}
    for name, recipe in registry.RECIPES.items():
        stages = tuple(getattr(recipe, "stages", ()) or ())
        techniques = {technique_name(getattr(s, "technique", "")) for s in stages} - {"evaluator"}
        group = techniques.pop() if len(techniques) == 1 else "composite"
        summary = getattr(recipe, "summary", "") or getattr(recipe, "description", "")
        stages_text = " → ".join(stage_text(s, len(stages) > 1) for s in stages)
        compute = getattr(recipe, "compute", "")
        groups.setdefault(group, []).append([f"`{name}`", stages_text, compute, summary])
    order = list(TECHNIQUE_HEADINGS)
    out = [f"{len(registry.RECIPES)} built-in recipes, read from `{registry.__name__}.RECIPES`.\n"]
    for group in sorted(groups, key=lambda g: order.index(g) if g in order else len(order)):
        out.append(f"\n### {TECHNIQUE_HEADINGS.get(group, group.title())}\n\n")
        headers = ["recipe", "stages (service/method, config)", "compute", "what it does"]
        out.append(table(headers, groups[group]))
    return "".join(out)


def thresholds_section(_: str = "") -> str:
    from services.common.contract import thresholds as registry

    rows = [[f"`{name}`", getattr(spec, "description", ""),
             "; ".join(f"{check.metric} {check.comparison} {check.threshold:g}" for check in spec.checks)]
            for name, spec in registry.THRESHOLD_SETS.items()]
    return (f"{len(rows)} threshold sets, read from `{registry.__name__}.THRESHOLD_SETS`.\n\n"
            + table(["set", "what it stands for", "checks"], rows))


# ----------------------------------------------------------------------------------------------
# bench/results/quantization.json and anchors.json

MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M", "minilm-l6": "MiniLM-L6", "mpnet-base": "MPNet-base"}


# Models whose quantization rows get a table of their own (bench-quantization-model:NAME); the layouts and
# earlier tables keep SmolLM2's and MiniLM's.
QUANTIZATION_OWN_TABLES = ("mpnet-base",)


def _quality(row: Mapping) -> str:
    return f"Δppl {percent_change(row['delta'])}" if row["metric"] == "ppl" else f"cosine {row['value']:.5f}"


def quantization_layouts(_: str = "") -> str:
    data = results("quantization.json")
    # Rows that count every stored bit are the INT4 table's (quantization_int4).
    picked = [r for r in data["rows"] if r.get("layout") and r["model"] not in QUANTIZATION_OWN_TABLES
              and "stored_bits_per_weight" not in r]
    rows = [[r["model"], f"`{r['recipe']}`", r["layout"], f"{r['size_vs_fp16']:.3f}",
             f"{r['size_vs_fp32']:.3f}", _quality(r), speed(r.get("speedup"), r.get("speedup_ci95")),
             f"{r['wall_s']:.1f} s", r.get("peak_rss_mb")] for r in picked]
    headers = ["model", "recipe", "layout", "size × FP16", "size × FP32", "quality", "speedup vs FP32 [95 %]",
               "wall", "peak RSS MB"]
    # A row records its run's machine; rows from before rows did use the file's.
    machines = dict.fromkeys(machine_line(r.get("machine") or data.get("machine")) for r in picked)
    return section("quantization.json", headers, rows, *machines)


def quantization_int4(_: str = "") -> str:
    """The rows that give bits per weight over everything stored (embedding, head, norms, scales)."""
    data = results("quantization.json")
    picked = [r for r in data["rows"] if "stored_bits_per_weight" in r]
    rows = [[r["model"], f"`{r['recipe']}`", r["layout"], r.get("effective_bits"), r["stored_bits_per_weight"],
             f"{r['size_vs_fp32']:.3f}", _quality(r), f"{r['wall_s']:.1f} s", r.get("peak_rss_mb")] for r in picked]
    headers = ["model", "recipe", "layout", "bits per rounded weight", "bits per weight, all stored", "size × FP32",
               "quality", "wall", "peak RSS MB"]
    machines = dict.fromkeys(machine_line(r.get("machine") or data.get("machine")) for r in picked)
    return section("quantization.json", headers, rows, *machines)


def int4_engine(_: str = "") -> str:
    """An INT4 checkpoint against FP32 eager before and after onnx-int4 (bench/int4_engine.py)."""
    data = results("int4_engine.json")
    rows = [[r["model"], f"{r['perplexity']:.3f}", f"Δppl {percent_change(r['delta'])}",
             speed(r.get("decode_speedup"), r.get("decode_ci95")), speed(r.get("prefill_speedup"), r.get("prefill_ci95")),
             r["peak_rss_mb"], f"{r['memory_ratio']:.3f}", f"{r['size_bytes'] / 1e6:.1f}", r["serving_runtime"]]
            for r in data["rows"]]
    headers = ["model", "perplexity", "quality", "decode × FP32 [95 %]", "prefill × FP32 [95 %]", "peak RSS MB",
               "memory × FP32", "size MB", "runtime"]
    source = f"`{data['recipe']}`" if data.get("recipe") else f"`{Path(data['rows'][1]['folder']).name}`"
    return section("int4_engine.json", headers, rows,
                   note(f"Checkpoint: {source}, {data['stored_bits_per_weight']} bits per weight, everything stored "
                        f"counted; MatMulNBits accuracy level {data['accuracy_level']}."), machine_line(data["machine"]))


def quantization_earlier(_: str = "") -> str:
    data = results("quantization.json")
    earlier = [r for r in data["rows"] if not r.get("layout") and r["model"] not in QUANTIZATION_OWN_TABLES]
    rows = [[r["model"], f"`{r['recipe']}`", f"{r['bits']} / {r['group_size'] or 'channel'}",
             r.get("effective_bits"), f"{r['size_vs_fp16']:.3f}", f"{r['size_vs_fp32']:.3f}", _quality(r),
             f"{r['wall_s']:.1f} s", r.get("peak_rss_mb"), r.get("note", "")] for r in earlier]
    headers = ["model", "recipe", "bits / group", "effective bits", "size × FP16", "size × FP32", "quality",
               "wall", "peak RSS MB", "note"]
    machines = sorted({str(r["machine"]) for r in earlier if r.get("machine")})
    notes = [note(f"Machine: {machine}.") for machine in machines]
    return section("quantization.json", headers, rows, *notes)


def quantization_model(model: str) -> str:
    """One model's rows, each run's machine below (a row records its own; older rows the file's)."""
    data = results("quantization.json")
    picked = [r for r in data["rows"] if r["model"] == model]
    if not picked:
        raise GenerationError(f"bench/results/quantization.json: no rows for {model!r}")
    rows = [[f"`{r['recipe']}`", r.get("layout") or DASH,
             f"{r['bits']} / {r['group_size'] or ('channel' if r['bits'] < 16 else DASH)}",
             r.get("effective_bits"), f"{r['size_vs_fp16']:.3f}", f"{r['size_vs_fp32']:.3f}", _quality(r),
             speed(r.get("speedup"), r.get("speedup_ci95")), f"{r['wall_s']:.1f} s", r.get("peak_rss_mb")]
            for r in picked]
    headers = ["recipe", "layout", "bits / group", "effective bits", "size × FP16", "size × FP32", "quality",
               "speedup vs FP32 [95 %]", "wall", "peak RSS MB"]
    machines = dict.fromkeys(machine_line(r.get("machine") or data.get("machine")) for r in picked)
    return section("quantization.json", headers, rows, *machines)


def anchors_quantization(_: str = "") -> str:
    data = results("anchors.json")
    anchors = [r for r in data["rows"] if r["method"] in ("gptq", "awq", "autoround", "kd-qat")]
    names = {"autoround": "AutoRound", "kd-qat": "distillation QAT"}
    rows = [[names.get(r["method"], r["method"].upper()), r["tool"], r["calibration"],
             f"{r['ppl']:.3f} ({r['base_ppl']:.3f})", percent_change(r["delta"]),
             f"{megabytes(r['size_bytes'])} ({r['stored']})" if r.get("stored") else megabytes(r["size_bytes"]), f"{r['wall_s']:.1f} s", r["peak_rss_mb"]]
            for r in anchors]
    machines = list(dict.fromkeys(machine_line(r.get("machine")) for r in anchors))
    headers = ["method", "tool", "calibration", "ppl (FP32)", "Δppl", "size on disk MB", "wall",
               "peak RSS MB"]
    return section("anchors.json", headers, rows, *machines)


# ----------------------------------------------------------------------------------------------
# bench/results/evaluation.json (the gateway's JSON: camelCase)

def _comparison_label(row: Mapping, recipes_by_artifact: Mapping[str, str]) -> str:
    if row.get("baseline"):
        return f"{row['model']} (baseline)"
    artifact = row["model"].split()[0].removeprefix("artifact:")
    return f"`{recipes_by_artifact[artifact]}`" if artifact in recipes_by_artifact else row["model"]


def _verdict(row: Mapping) -> str:
    if row.get("baseline"):
        return DASH
    failed = [c["metric"].replace("_retention", "").replace("_ratio", "")
              for c in row.get("checks", []) if not c.get("passed")]
    return "pass" if row.get("passed") and not failed else f"fail ({', '.join(failed)})"


def _comparison_row(row: Mapping, by_artifact: Mapping[str, str]) -> list[str]:
    metrics, latency = row["metrics"], row["metrics"]["latency"]
    out = [_comparison_label(row, by_artifact), megabytes(metrics["sizeOnDiskBytes"]),
           f"{row['sizeRatio']:.3f}",
           f"{latency['p50Ms']:.1f} ± {latency['stdevMs']:.1f}", f"{row['speedup']:.2f}",
           f"{row['memoryRatio']:.2f}"]
    if metrics.get("kind") == "encoder":
        encoder = metrics.get("encoder", {})
        out += [f"{encoder.get('knnTopicAccuracy', 0):.3f}", f"{encoder.get('meanReferenceCosine', 0):.5f}",
                f"{encoder.get('neighbourAgreement', 0):.2f}"]
    else:
        out.append(f"{metrics.get('perplexity', 0):.3f}")
    return out + [percent(row["qualityRetention"], 2), _verdict(row)]


def evaluation_comparison(model: str) -> str:
    data = results("evaluation.json")
    if model not in data["models"]:
        raise GenerationError(f"bench/results/evaluation.json: no model {model!r}; it has "
                              f"{', '.join(data['models'])}")
    entry = data["models"][model]
    comparison = entry["comparison"]
    by_artifact = {artifact: recipe for recipe, artifact in entry.get("recipes", {}).items()}
    latency = comparison["rows"][0]["metrics"]["latency"]
    encoder = comparison["rows"][0]["metrics"].get("kind") == "encoder"
    quality = ["topic k-NN acc.", "mean cosine", "NN agreement"] if encoder else ["perplexity"]
    shape = f"{latency['batchSize']}×{latency['sequenceLength']}, {latency.get('phase', '')}"
    verdict = comparison.get("thresholdSet") or "threshold set"
    headers = (["model", "size MB", "size ×", f"p50 ms ± sd ({shape})", "speedup", "RSS ×"] + quality
               + ["quality kept", verdict])
    rows = [_comparison_row(row, by_artifact) for row in comparison["rows"]]
    made = note(f"Comparison {comparison.get('comparisonId', '')}, {comparison.get('interleavedRounds')} "
                f"interleaved rounds, {str(comparison.get('createdAt', ''))[:10]}.")
    return section("evaluation.json", headers, rows, made, machine_line(comparison.get("machine")))


def evaluation_recommendations(_: str = "") -> str:
    data = results("evaluation.json")
    rows = [[MODEL_NAMES.get(model, model), rec["rank"], f"`{rec['strategy']['name']}`",
             "yes" if rec.get("feasible") else "no", rec.get("reason", "")]
            for model, entry in data["models"].items()
            for rec in entry.get("recommendation", {}).get("recommendations", [])]
    headers = ["model", "rank", "strategy", "feasible", "why (the recommender's own words)"]
    return section("evaluation.json", headers, rows, machine_line(data.get("machine")))


def evaluation_hardware(_: str = "") -> str:
    data = results("evaluation.json")
    benches = [b for entry in data["models"].values() for b in entry.get("benchmarks", [])]
    rows = [[b["model"], b.get("phase", ""), f"{b['batchSize']} × {b['sequenceLength']}",
             f"{b['latencyP50Ms']:.1f}", f"{b['latencyP95Ms']:.1f}", f"{b['throughput']:.1f}",
             f"{b['memoryUsageMb']:.0f}"] for b in benches]
    headers = ["model", "phase", "batch × seq", "p50 ms", "p95 ms", "tokens/s", "memory MB"]
    machine = benches[0].get("machine") if benches else None
    return section("evaluation.json", headers, rows, machine_line(machine))


# ----------------------------------------------------------------------------------------------
# bench/results/optimizer.json

def _engine_quality(row: Mapping) -> str:
    metric = row.get("metric")
    if metric in (None, "-"):
        return DASH
    mark = " ✓" if row.get("quality_ok") else " ✗"
    if metric == "cosine":
        knn = f", k-NN {row['knn_ratio']:.3f}" if row.get("knn_ratio") is not None else ""
        return f"cosine {row['value']:.5f}{knn}{mark}"
    if metric == "delta_ppl":
        return f"Δppl {percent_change(row['value'])}{mark}"
    return f"{metric} {row['value']}{mark}"


def _ran_as(row: Mapping, exports: Mapping) -> str:
    """The precision asked, and what the engine reported it ran where that differs (OpenVINO's f16
    request runs bf16 on an AVX512-BF16 CPU). Read only from an export made on the row's ISA class."""
    compute = exports.get(f"{row['model']}/{row.get('recipe')}", {}).get("compute_precision") or {}
    if compute.get("isa_class") != row.get("isa_class") or not compute.get("applied"):
        return row["precision"]
    applied = {"f32": "fp32"}.get(compute["applied"], compute["applied"])
    if applied == compute.get("precision", row["precision"]):
        return row["precision"]
    return f"{row['precision']} (ran {applied})"


def _engine_row(row: Mapping, exports: Mapping) -> list[str]:
    recipe = DASH if row.get("recipe") in (None, "-") else f"`{row['recipe']}`"
    timing = speed(row["speedup"], row.get("speedup_ci95")) + (" unreliable" if row.get("unreliable") else "")
    return [MODEL_NAMES.get(row["model"], row["model"]), recipe, row["engine"], _ran_as(row, exports),
            row["phase"], f"{row['batch']} × {row['seq']}", megabytes(row["size_bytes"]),
            f"{row['latency_p50_ms']:.1f} ± {row.get('latency_stdev_ms', 0):.1f}", timing,
            f"{row['peak_rss_mb']:.0f}", f"{row['memory_ratio']:.2f}", _engine_quality(row)]


def optimizer_classes() -> list[str]:
    return list(results("optimizer.json").get("machines", {}))


def optimizer_class(isa: str) -> str:
    data = results("optimizer.json")
    machines = data.get("machines", {})
    if isa not in machines:
        raise GenerationError(f"bench/results/optimizer.json: no machine of ISA class {isa!r}; it has "
                              f"{', '.join(machines)}")
    rows = [r for r in data["rows"] if r.get("isa_class") == isa]
    headers = ["model", "recipe", "engine", "precision", "phase", "batch × seq", "size MB", "p50 ms ± sd",
               "speedup [95 %]", "peak RSS MB", "memory ×", "quality"]
    # The evaluator adds rounds (up to three times those asked) while a ratio's interval is too wide.
    rounds = sorted({r["rounds"] for r in rows if r.get("rounds")})
    counted = f"{rounds[0]} to {rounds[-1]}" if len(rounds) > 1 else f"{rounds[0]}" if rounds else "?"
    shares = [r["load"]["others_cpu_share"] for r in rows
              if (r.get("load") or {}).get("others_cpu_share") is not None]
    busy = f"; other processes' CPU share while timing at most {percent(max(shares))}" if shares else ""
    return section("optimizer.json", headers, [_engine_row(r, data.get("exports", {})) for r in rows],
                   note(f"{counted} interleaved rounds per shape{busy}."), machine_line(machines[isa]))


def _serving_machine(data: Mapping) -> str:
    return note("Machine: not recorded with these rows (the file records machines per ISA class for the "
                f"engine rows: {', '.join(data.get('machines', {}))}).")


def optimizer_batching(_: str = "") -> str:
    data = results("optimizer.json")
    modes = data.get("batching", [])
    base = modes[0]["requests_per_s"] if modes else 1.0
    rows = [[r["mode"], f"{r['requests_per_s']:.1f}", f"{r['requests_per_s'] / base:.2f}",
             f"{r['latency_p50_ms']:.1f}", f"{r['latency_p95_ms']:.1f}", f"{r['mean_batch_size']:.1f}",
             f"{r['requests']} × {r['clients']}", f"{r['mean_tokens']:.1f}"] for r in modes]
    headers = ["mode", "req/s", "×", "p50 ms", "p95 ms", "mean batch", "requests × clients", "mean tokens"]
    return section("optimizer.json", headers, rows, _serving_machine(data))


def optimizer_kv_cache(_: str = "") -> str:
    data = results("optimizer.json")
    rows = [[r["kind"], f"{r['decode_ms_p50']:.1f}", f"{r['decode_speedup']:.2f}",
             f"{r['cache_bytes'] / 1024:.0f}", f"{r['cache_ratio']:.2f}", f"{r['perplexity']:.3f}",
             DASH if r["kind"] == "dynamic" else percent_change(r["delta_ppl"]),
             f"{r['same_tokens_as_default']} of {r['new_tokens']}"] for r in data.get("kv_cache", [])]
    headers = ["cache", "decode ms/token", "×", "cache KB", "×", "ppl", "Δppl", "greedy tokens as default's"]
    return section("optimizer.json", headers, rows, _serving_machine(data))


# ----------------------------------------------------------------------------------------------
# bench/results/gguf_llamacpp.json

def gguf_llamacpp(_: str = "") -> str:
    data = results("gguf_llamacpp.json")
    rows = [[f"`{r['type']}`", f"{r['file_mb']:.1f}", "yes" if r.get("loaded") else "no", r.get("pre"),
             r.get("quantization_version"), "yes" if r.get("tokens_match") else "no",
             f"{r['tokens_per_s']:.0f}", r.get("chat_reply", "")] for r in data["rows"]]
    headers = ["recipe", "file MB", "loads", "tokenizer.ggml.pre", "quantization version",
               "token ids as transformers'", "tokens/s", "chat reply"]
    prompt = note(f"Generation prompt: “{data['prompt']}”.") if data.get("prompt") else ""
    return section("gguf_llamacpp.json", headers, rows, prompt, machine_line(data.get("machine")))


def gguf_llamacpp_families(_: str = "") -> str:
    data = results("gguf_llamacpp.json")
    rows = [[f"`{r['family']}`", f"`{r['type']}`", r.get("architecture"), "yes" if r.get("loaded") else "no",
             "yes" if r.get("tokens_match") else "no", r.get("generated_tokens"), f"{r['logits_cosine']:.4f}"]
            for r in data.get("families", [])]
    headers = ["family", "recipe", "llama.cpp architecture", "loads", "token ids as transformers'",
               "tokens generated", "logits cosine vs float"]
    return section("gguf_llamacpp.json", headers, rows, machine_line(data.get("machine")))


# ----------------------------------------------------------------------------------------------
# bench/results/pipelines.json, pipelines_awq_clipped.json

def pipelines(file: str) -> str:
    data = results(file)
    rows = []
    for r in data["rows"]:
        beside = f" alone (beside `{r['composite_of']}`)" if r.get("composite_of") else ""
        rows.append([f"`{r['pipeline']}`{beside}", megabytes(r["size_bytes"]), f"{r['size_ratio']:.3f}",
                     percent_change(r["delta_ppl"]), f"{r['top1']:.3f}",
                     speed(r["prefill_speedup"], r.get("prefill_ci95")), f"{r['decode_speedup']:.2f}",
                     f"{r['memory_ratio']:.2f}", r.get("serving_runtime", "")])
    headers = ["pipeline", "size MB", "size ×", "Δppl", "top-1", "prefill × [95 %]", "decode ×", "memory ×",
               "served by"]
    spec = data.get("evaluation", {})
    shape = note(f"Batch {spec.get('batch')} × {spec.get('seq')}, {spec.get('decode_tokens')} decoded "
                 f"tokens, perplexity on {spec.get('quality_windows')} held-out 512-token windows, "
                 f"{data.get('rounds')} interleaved rounds.")
    return section(file, headers, rows, shape, load_line(data.get("load")), machine_line(data.get("machine")))


# ----------------------------------------------------------------------------------------------
# bench/results/pruning.json

def _shape(shape: Mapping | None) -> str:
    if not shape:
        return DASH
    text = f"{shape['layers']} layers, MLP {shape['mlp_width']}"
    return text + (f", {shape['head_units']} KV groups" if shape.get("head_units") else "")


def _steps(recovery: Iterable[Mapping]) -> int:
    return sum(r["steps"] for r in recovery)


def pruning_minilm(_: str = "") -> str:
    data = results("pruning.json")["minilm"]
    reloads = f"yes (max |Δ| {data['reload_max_abs_difference']})" if data.get("reloads") else "no"
    rows = [[f"`{data['recipe']}`", f"{data['flops_ratio']:.3f}", f"{data['parameters_ratio']:.3f}",
             f"{_shape(data['shape_before'])} → {_shape(data['shape_after'])}",
             _steps(data.get("recovery", [])),
             ci_speed(data["speed"]["forward"]),
             f"{data['knn_topic_accuracy']:.3f} ({data['base_knn_topic_accuracy']:.3f})",
             percent(data["accuracy_kept"]), reloads]]
    headers = ["recipe", "FLOPs ×", "params ×", "shape before → after", "recovery steps", "speedup [95 %]",
               "k-NN accuracy (FP32)", "kept", "reloads in stock transformers"]
    setting = note(f"{data.get('sentences')} held-out sentences; {data.get('rounds')} interleaved rounds; "
                   f"FLOPs at {data.get('flops_shape')}.")
    return section("pruning.json", headers, rows, setting, load_line(data.get("load")),
                   machine_line(data.get("machine")))


def pruning_unstructured(_: str = "") -> str:
    data = results("pruning.json")["unstructured"]
    rows = [[r["method"], r["tool"], f"`{r['recipe']}`" if r.get("recipe") else DASH, r["calibration"],
             f"{r['ppl']:.2f}", percent_change(r["delta"]), f"{r['wall_s']:.0f} s", r["peak_rss_mb"]]
            for r in data["rows"]]
    base = f"{data['rows'][0]['base_ppl']:.3f}" if data["rows"] else DASH
    setting = note(f"{data.get('model')}: perplexity on {data.get('quality_windows')} held-out 512-token "
                   f"windows (FP32 {base}).")
    headers = ["method", "tool", "recipe", "calibration", "ppl", "Δppl", "wall", "peak RSS MB"]
    return section("pruning.json", headers, rows, setting, machine_line(data.get("machine")))


def pruning_structured_smollm2(_: str = "") -> str:
    data = results("pruning.json")["smollm2-structured"]
    rows = [[r["variant"], _steps(r.get("recovery", [])), f"{r['flops_ratio']:.3f}",
             f"{r['parameters_ratio']:.3f}",
             f"{_shape(r['shape_before'])} → {_shape(r['shape_after'])}", ci_speed(r["speed"]["prefill"]),
             ci_speed(r["speed"]["decode"]), f"{r['ppl']:.2f}", percent_change(r["delta_ppl"]),
             "yes" if r.get("reloads") else "no"] for r in data["rows"]]
    headers = ["variant", "recovery steps", "FLOPs ×", "params ×", "shape", "prefill × [95 %]",
               "decode × [95 %]", "ppl", "Δppl", "reloads"]
    setting = note(f"`{data.get('recipe')}`, {data.get('rounds')} interleaved rounds.")
    return section("pruning.json", headers, rows, setting, load_line(data.get("load")),
                   machine_line(data.get("machine")))


def _method_row(r: Mapping) -> list[Any]:
    if r.get("outcome") != "ran":
        return [MODEL_NAMES.get(r["model"], r["model"]), f"`{r['method']}`", config_text(r.get("config", {})),
                r.get("outcome"), DASH, DASH, DASH, r.get("reason", "")]
    sparsity = f"{r['sparsity']:.3f}" if r.get("sparsity") is not None else DASH
    return [MODEL_NAMES.get(r["model"], r["model"]), f"`{r['method']}`", config_text(r.get("config", {})),
            r["outcome"], f"{r['wall_s']:.1f} s", sparsity, f"{r['flops_ratio']:.3f}",
            _shape(r.get("shape_after"))]


def pruning_methods(_: str = "") -> str:
    data = results("pruning.json")["methods"]
    headers = ["model", "method", "config", "outcome", "wall", "sparsity", "FLOPs ×", "shape after / reason"]
    short = note(f"Short settings: {config_text(data.get('short', {}))}.")
    return section("pruning.json", headers, [_method_row(r) for r in data["rows"]], short,
                   machine_line(data.get("machine")))


def pruning_openvino_sparse(_: str = "") -> str:
    data = results("pruning.json")["openvino-sparse"]
    rows = [[r["weights"], r.get("sparse_decompression_rate"), f"{r['prefill_p50_ms']:.1f}",
             f"{r['speedup_vs_dense']:.3f}"] for r in data["rows"]]
    setting = note(f"`{data.get('engine')}`, {data.get('shape')}, {data.get('rounds')} interleaved rounds, "
                   f"medians; AMX: {'yes' if data.get('amx') else 'no'} ({data.get('note', '')}).")
    headers = ["weights", "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE", "prefill p50 ms", "× dense"]
    return section("pruning.json", headers, rows, setting, machine_line(data.get("machine")))


# ----------------------------------------------------------------------------------------------
# bench/results/distillation.json

def _by_model(shape: Mapping) -> dict[str, Mapping]:
    return {r["model"]: r for r in shape["rows"]}


def _memory_pair(one: Mapping, many: Mapping | None) -> str:
    return f"{one['memory_ratio']:.2f} / {many['memory_ratio']:.2f}" if many else DASH


def _run_setting(data: Mapping, what: str) -> str:
    shapes = data.get("shapes", {})
    rounds = ", ".join(f"{shape['rounds']} ({name})" for name, shape in shapes.items() if shape.get("rounds"))
    return note(f"{what}; interleaved rounds {rounds or data.get('rounds')}.")


def distillation_minilm_small(_: str = "") -> str:
    data = results("distillation.json")["minilm-small"]
    one_shape, many_shape = _by_model(data["shapes"]["1x128"]), _by_model(data["shapes"]["32x128"])
    rows = []
    for model, one in one_shape.items():
        student = model != "teacher"
        params = f"{data['parameters'] / 1e6:.2f} M ({data['parameters_ratio']:.3f})" if student else \
            f"{data['parameters_teacher'] / 1e6:.2f} M"
        many = many_shape.get(model)
        rows.append([model, params, f"{data['flops_ratio']:.3f}" if student else "1",
                     f"{one['knn_topic_accuracy']:.3f}", percent(one["accuracy_kept"]),
                     f"{one['mean_teacher_cosine']:.3f}", one.get("size_mb"),
                     ci_speed(one["speed"]["forward"]), ci_speed(many["speed"]["forward"]) if many else DASH,
                     _memory_pair(one, many)])
    m2v = data.get("model2vec")
    if m2v:
        rows.append([f"{m2v['tool']} ({m2v['method']})", f"{m2v['parameters'] / 1e6:.2f} M", None,
                     f"{m2v['knn_topic_accuracy']:.3f}", percent(m2v["accuracy_kept"])] + [None] * 5)
    headers = ["model", "parameters", "FLOPs ×", "k-NN acc.", "kept", "cosine to teacher", "size MB",
               "1×128 × [95 %]", "32×128 × [95 %]", "peak RSS × (1×128 / 32×128)"]
    vocabulary = (f"every token, the table factorized to rank {data['embedding_rank']}" if data.get("embedding_rank")
                  else f"vocabulary {data.get('vocabulary_size')}")
    what = (f"`{data['recipe']}`: {data['steps']} steps in {data['seconds']:.0f} s of training (stopped by "
            f"{data.get('stopped')}), {data['blocks_teacher']} → {data['blocks']} blocks, {vocabulary}")
    return section("distillation.json", headers, rows, _run_setting(data, what),
                   load_line(data["shapes"]["1x128"].get("load")), machine_line(data.get("machine")))


def _prune_then_distill(data: Mapping) -> str:
    prune, distill = data.get("prune", {}), data.get("distill", {})
    overrides = ", ".join(f"{k}={v}" for k, v in data.get("overrides", {}).items())
    precision = f" ({distill['precision']})" if distill.get("precision") else ""
    return (f"`{data['recipe']}`{' with ' + overrides if overrides else ''}: pruned to FLOPs "
            f"{prune.get('flops_ratio', 0):.3f} ({_shape(prune.get('shape_after'))}), distilled "
            f"{distill.get('steps')} steps{precision} in {distill.get('seconds', 0):.0f} s")


def distillation_minilm_edge(_: str = "") -> str:
    data = results("distillation.json")["minilm-edge"]
    one_shape, many_shape = _by_model(data["shapes"]["1x128"]), _by_model(data["shapes"]["32x128"])
    rows = [[model, f"{one['knn_topic_accuracy']:.3f}", percent(one["accuracy_kept"]),
             f"{one['mean_teacher_cosine']:.3f}", ci_speed(one["speed"]["forward"]),
             ci_speed(many_shape[model]["speed"]["forward"]) if model in many_shape else DASH,
             _memory_pair(one, many_shape.get(model)), one.get("size_mb")]
            for model, one in one_shape.items()]
    headers = ["model", "k-NN acc.", "kept", "cosine to teacher", "1×128 × [95 %]", "32×128 × [95 %]",
               "peak RSS × (1×128 / 32×128)", "size MB"]
    stages = config_text(data.get("stage_seconds", {}))
    what = f"{_prune_then_distill(data)}, then exported; stage seconds {stages}"
    return section("distillation.json", headers, rows, _run_setting(data, what),
                   load_line(data["shapes"]["1x128"].get("load")), machine_line(data.get("machine")))


def distillation_smollm2(recipe: str = "smollm2-shallow") -> str:
    """A SmolLM2 prune -> distill recipe against its original (argument: the recipe)."""
    data = results("distillation.json")[recipe or "smollm2-shallow"]
    rows = [[r["model"], f"{r['ppl']:.3f}",
             DASH if r["model"] == "teacher" else percent_change(r["delta_ppl"]),
             ci_speed(r["speed"]["prefill"]), ci_speed(r["speed"]["decode"]), f"{r['peak_rss_mb']:.0f}"]
            for r in data["rows"]]
    headers = ["model", "ppl", "Δppl", "prefill × [95 %]", "decode × [95 %]", "peak RSS MB"]
    what = (f"{_prune_then_distill(data)}; gap closed {percent(data.get('gap_closed'))}; perplexity on "
            f"{data.get('quality_windows')} held-out windows")
    sets = data.get("quality_sets", {}).get("sets", {})
    set_line = note("Other held-out sets, Δppl of " + ", ".join(data["quality_sets"]["worst"]) + ": " + "; ".join(
        f"{name} " + ", ".join(percent_change(r["delta_ppl"]) for r in block["rows"].values())
        for name, block in sets.items()) + ".") if sets else ""
    return section("distillation.json", headers, rows, _run_setting(data, what), set_line,
                   load_line(data.get("load")), machine_line(data.get("machine")))


def distillation_curve(recipe: str = "smollm2-small") -> str:
    """Validation perplexity against the tokens a recipe's distillation trained on (argument: the recipe)."""
    data = results("distillation.json")[recipe or "smollm2-small"]
    rows = [[f"{int(tokens):,}", int(step), f"{ppl:.3f}"] for step, ppl, tokens in data["validation_perplexity_curve"]]
    return section("distillation.json", ["tokens trained on", "step", "validation ppl"], rows,
                   note(f"`{recipe}`: perplexity of the calibration split's held-back share (not the evaluator's "
                        f"held-out text) after the steps shown; the stage keeps the weights of the lowest "
                        f"validation loss."),
                   machine_line(data.get("machine")))


def distillation_sets(_: str = "") -> str:
    """Each MiniLM student's k-NN topic accuracy kept on every held-out set (bench/distillation.py QUALITY_SETS)
    and its worst set: a recipe's figure."""
    data = results("distillation.json")
    found = [data[part]["quality_sets"] for part in ("minilm-small", "minilm-small-corpus", "minilm-edge")
             if "quality_sets" in data.get(part, {})]
    names = list(found[0]["sets"])
    rows = []
    for sets in found:
        for label, worst in sets["worst"].items():
            cells = [f"{percent(sets['sets'][name]['rows'][label]['accuracy_kept'])} "
                     f"({sets['sets'][name]['rows'][label]['mean_teacher_cosine']:.3f})" for name in names]
            rows.append([label, *cells, f"**{percent(worst['accuracy_kept'])}** ({worst['set']})"])
    teacher = "; ".join(f"{name}: {block['teacher_knn_topic_accuracy']:.3f} on {block['sentences']} sentences of "
                        f"{block['topics']} topics" for name, block in found[0]["sets"].items())
    return section("distillation.json", ["model", *(f"{name} kept (cosine)" for name in names), "worst (set)"],
                   rows, note(f"Teacher k-NN topic accuracy (k = 5) — {teacher}."),
                   machine_line(data.get("minilm-small", {}).get("machine")))


def distillation_families(_: str = "") -> str:
    data = results("distillation.json")["families"]
    rows = [[f"`{r['method']}`", config_text(r.get("config", {})), r["steps"], f"{r['seconds']:.0f} s",
             f"{r['knn_topic_accuracy']:.3f}", percent(r["accuracy_kept"]), f"{r['mean_teacher_cosine']:.3f}",
             config_text({k: float(f"{v:.3g}") for k, v in r.get("last_terms", {}).items()})]
            for r in data["rows"]]
    headers = ["method", "config", "steps", "trained", "k-NN acc.", "kept", "cosine to teacher",
               "last loss terms"]
    student = note(f"Student: {config_text(data.get('student', {}))}; teacher k-NN accuracy "
                   f"{data.get('teacher_knn_topic_accuracy', 0):.3f}.")
    return section("distillation.json", headers, rows, student, machine_line(data.get("machine")))


# ----------------------------------------------------------------------------------------------
# bench/results/chaos.json, artifact_throughput.json

def chaos(_: str = "") -> str:
    data = results("chaos.json")
    rows = [[r["fault"], r["jobs"], r["succeeded"], r["failed"], r["lost"], f"{r['p50_s']:.1f}",
             f"{r['p95_s']:.1f}", r.get("recovery"), "; ".join(r.get("errors", [])) or "none"]
            for r in data["rows"]]
    headers = ["fault", "jobs", "succeeded", "failed", "lost", "p50 s", "p95 s", "recovery", "errors"]
    return section("chaos.json", headers, rows, note(f"Model: {data.get('model')}."),
                   machine_line(data.get("machine")))


def artifact_throughput(_: str = "") -> str:
    data = results("artifact_throughput.json")
    rows = [[operation, f"{rate:.1f}"] for operation, rate in data["mb_per_s"].items()]
    setting = note(f"{data.get('object_mib')} MiB object, median of {data.get('repeats')}.")
    return section("artifact_throughput.json", ["operation", "MB/s"], rows, setting,
                   machine_line(data.get("machine")))


# ----------------------------------------------------------------------------------------------
# bench/results/compat.json: the family × recipe compatibility matrix (tests/compat, make test-compat)

COMPAT_MARKS = {"works": "works", "refused": "refused", "n/a": DASH, "error": "**error**"}


def compat_matrix(_: str = "") -> str:
    data = results("compat.json")
    cells = {(c["family"], c["recipe"]): c for c in data["cells"]}
    recipes = data["recipes"]
    rows = [[f"`{family}`", *(COMPAT_MARKS[cells[(family, r)]["outcome"]] if (family, r) in cells else "not run"
                              for r in recipes)]
            for family in data["families"]]
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(data["counts"].items()))
    # One line per reason, with the cells it covers: the same refusal of twelve families reads once.
    reasons: dict[tuple[str, str], list[str]] = {}
    for c in data["cells"]:
        if c["outcome"] in ("refused", "error"):
            text = c["detail"].replace(f"'{c['family']}'", "'FAMILY'")
            reasons.setdefault((c["outcome"], text), []).append(f"{c['family']} × {c['recipe']}")
    why = "".join(f"- {outcome} ({', '.join(where)}): {cell(text)}\n"
                  for (outcome, text), where in sorted(reasons.items()))
    setting = note(f"Tiny random-weight models built from each family's config; overrides "
                   f"{config_text(data.get('overrides', {}))}; recorded {str(data.get('recorded_at'))[:10]}; "
                   f"{counts}.")
    return section("compat.json", ["family", *(f"`{r}`" for r in recipes)], rows, setting) + "\n" + why


def scale(_: str = "") -> str:
    data = results("scale.json")
    headers = ["shape", "method", "parameters", "checkpoint (bf16)", "calibration", "wall", "s per B params",
               "RSS before", "walk peak (per block: first … last)", "walk growth", "bound", "whole-call peak",
               "load (1 min)"]
    rows = [[r["shape"], r["method"], f"{r['parameters'] / 1e9:.2f} B", f"{r['checkpoint_mb']:,} MB", r["calibration"],
             f"{r['wall_s']:.0f} s", f"{r['wall_s_per_billion']:.0f}", f"{r['rss_before_mb']:,} MB",
             f"{r['walk_peak_rss_mb']:,} MB ({r['walk_rss_by_block_mb'][0]:,} … {r['walk_rss_by_block_mb'][-1]:,})",
             f"{r['walk_growth_mb']:,} MB", f"{r['bound_mb']:,} MB", f"{r['peak_rss_mb']:,} MB",
             r.get("load_average_1m", "")] for r in data["runs"]]
    formula = note("bound = 1.5 × (largest block in FP32 + one block's input and output hidden states in FP32); "
                   "walk growth = peak RSS while the blocks are walked − RSS before the call (libraries loaded). "
                   "GPTQ also keeps one input Hessian per input width (the widest: `hessian_mb` in the file).")
    footer = [formula, machine_line(data.get("machine"))]
    if (RESULTS / "scale_mesh.json").exists():
        mesh = results("scale_mesh.json")
        for r in mesh["runs"]:
            footer.append(note(
                f"Through a local mesh (`bench/scale_mesh.py`, recorded {str(mesh.get('recorded_at'))[:10]}): "
                f"{r['shape']} ({r['checkpoint_mb']:,} MB bf16) uploaded in {r['upload_s']:.0f} s, `{r['recipe']}` "
                f"job {r['job_s']:.0f} s ({r['job_state']}), {r['download_mb']:,} MB downloaded in {r['download_s']:.0f} s, "
                f"{r['check']['packed_linears']} packed Linears in {r['check']['files']} file(s); client peak RSS "
                f"{r['client_peak_rss_mb']:,} MB, quantizer worker peak RSS {r['quantizer_peak_rss_mb']:,} MB; "
                f"load {r['load_average_1m']}."))
    return section("scale.json", headers, rows, *footer)


# ----------------------------------------------------------------------------------------------
# The registry of generated sections, and the pages they live in.

def serving(_: str = "") -> str:
    data = results("serving.json")
    headers = ["part", "mode", "format", "req/s", "tokens/s", "p50 ms", "p95 ms", "TTFT p50 ms", "TTFT p95 ms",
               "mean batch", "peak RSS", "load (1 min)"]

    def cell(value, fmt: str = "{:.1f}") -> str:
        return DASH if value is None else fmt.format(value)

    rows = []
    for part in ("encoder", "lm"):
        for r in (data.get(part) or {}).get("modes", []):
            rows.append([part, r["mode"], r["format"], cell(r.get("requests_per_s")), cell(r.get("tokens_per_s")),
                         cell(r.get("latency_p50_ms")), cell(r.get("latency_p95_ms")), cell(r.get("ttft_p50_ms")),
                         cell(r.get("ttft_p95_ms")), cell((r.get("batching") or {}).get("mean_batch_size"), "{:.2f}"),
                         f"{r['peak_rss_mb']:,.0f} MB", cell(r.get("load_average_1m"))])
    footer = []
    for part in ("encoder", "lm"):
        if data.get(part):
            bars = ", ".join(f"{k} {v}" for k, v in data[part]["bars"].items())
            footer.append(note(f"{part} bars: {bars}."))
            footer.append(note(f"{part} quality: {json.dumps(data[part]['quality'], sort_keys=True)}."))
    footer.append(machine_line(data.get("machine")))
    return section("serving.json", headers, rows, *footer)


def search(file: str) -> str:
    """A search's trials (bench/search.py): screen and full on the validation split, the winner's closing
    measurement on the held-out split, and why each screened candidate was not the winner; then the
    winner beside the original and another built-in in one interleaved comparison per batch size."""
    data = results(file)
    dropped = data.get("dropped", {})
    rows = []
    for t in data.get("trials", []):
        outcome = "winner" if t["candidate"] == data.get("winner") else (t["error"] or dropped.get(t["candidate"], ""))
        rows.append([t["candidate"], t["fidelity"], speed(t["speedup"], t["speedup_ci95"]) if not t["error"] else DASH,
                     percent(t["quality_kept"], 2) if t["quality_kept"] is not None else DASH,
                     f"{t['size_ratio']:.2f}×", f"{t['memory_ratio']:.2f}×" if t["memory_ratio"] is not None else DASH,
                     outcome])
    unscreened = sum("budget ran out" in why for why in dropped.values())
    footer = [note(f"{data['model']}, quality kept ≥ {percent(data['spec']['min_quality_kept'], 0)}, objective "
                   f"{data['spec']['objective']}, budget {data['spec']['budget_minutes']:g} min: {data['candidates']} "
                   f"candidates, {unscreened} not screened within the budget; the search took "
                   f"{data['first_search_s']:,.0f} s. {data.get('stopped_early', '')}."),
              note(f"Closing figures (held-out): {data.get('headline', '')}"),
              machine_line(data.get("machine"))]
    phase = data["spec"].get("phase") or "prefill or forward"
    trials = section(file, ["candidate", "effort", f"speed-up ({phase})", "quality kept", "size", "peak memory",
                            "outcome"], rows, *footer)
    comparisons = [c for c in [data.get("comparison"), *(data.get("comparisons_at") or {}).values()] if c]
    if not comparisons:
        return trials
    compared = []
    for comparison in comparisons:
        for name, row in comparison["rows"].items():
            speeds = ", ".join(f"{p} {speed(v['speedup'], v['ci95'])}" for p, v in row["speed"].items())
            compared.append([name, comparison.get("batch_size", 1), speeds,
                             percent(row["quality_kept"], 2) if row["quality_kept"] is not None else DASH,
                             f"{row['size_ratio']:.2f}×" if row["size_ratio"] is not None else DASH,
                             f"{row['memory_ratio']:.2f}×" if row["memory_ratio"] is not None else DASH])
    return trials + "\n" + table(["model", "batch", "speed-up [95 %]", "quality kept", "size", "peak memory"],
                                  compared) + "\n" + note(
        "The winner beside the original and another built-in in one interleaved comparison per batch size "
        "(held-out split).")


MODEL_KIND = {"smollm2-135m": "causal-lm", "minilm-l6": "encoder", "mpnet-base": "encoder"}
DECISIVE_PHASE = {"causal-lm": "decode", "encoder": "forward"}


def recipe_matrix(_: str = "") -> str:
    """Model kind × CPU class × runtime → the recipe measured fastest at kept quality (bench/results/
    optimizer.json's engine rows at batch 1; decode for causal LMs, the forward pass for encoders)."""
    from services.common.contract.recipes import RECIPES
    from services.common.measure.isa import class_flags

    data = results("optimizer.json")
    runtimes = ("onnxruntime", "openvino", "transformers")
    best: dict[tuple[str, str, str], Mapping] = {}
    for row in data["rows"]:
        kind = MODEL_KIND.get(row["model"])
        recipe = RECIPES.get(row.get("recipe") or "")
        if kind is None or recipe is None or not row.get("quality_ok") or row["batch"] != 1 \
                or row["phase"] != DECISIVE_PHASE[kind] or recipe.emulated_on(class_flags(row["isa_class"])):
            continue  # a compute the class emulates is never its choice (the engine ran another one)
        key = (kind, row["isa_class"], recipe.runtimes[0])
        if key not in best or row["speedup"] > best[key]["speedup"]:
            best[key] = row
    rows = []
    for kind, isa in sorted({(k, i) for k, i, _ in best}):
        cells = []
        for runtime in runtimes:
            row = best.get((kind, isa, runtime))
            cells.append(DASH if row is None else f"`{row['recipe']}` {speed(row['speedup'], row.get('speedup_ci95'))}"
                         f" ({MODEL_NAMES.get(row['model'], row['model'])})")
        overall = max((r for (k, i, _), r in best.items() if (k, i) == (kind, isa)), key=lambda r: r["speedup"])
        rows.append([kind, isa, DECISIVE_PHASE[kind], *cells, f"`{overall['recipe']}`"])
    return section("optimizer.json", ["model kind", "CPU class", "speed that counts", *runtimes, "fastest"], rows,
                   note("Each cell: the recipe of that runtime with the highest speed-up over PyTorch FP32 eager at "
                        "batch 1 among those that kept quality (cosine ≥ 0.99 to the original for encoders, "
                        "perplexity within +1 % for causal LMs) in a compute the class runs natively, with its 95 % interval and the model it was measured on. A class or "
                        "runtime with no row was not benched. `fastest-cpu` measures this on the worker itself "
                        "(search.md); this table is its prior."),
                   *(machine_line(m) for m in data.get("machines", {}).values()))


SECTIONS: dict[str, Callable[[str], str]] = {
    "recipes": recipes_section,
    "thresholds": thresholds_section,
    "bench-quantization-layouts": quantization_layouts,
    "bench-quantization-int4": quantization_int4,
    "bench-int4-engine": int4_engine,
    "bench-quantization-earlier": quantization_earlier,
    "bench-quantization-model": quantization_model,  # argument: the model (QUANTIZATION_OWN_TABLES)
    "bench-anchors-quantization": anchors_quantization,
    "bench-evaluation-comparison": evaluation_comparison,  # argument: the model (smollm2-135m, minilm-l6)
    "bench-evaluation-recommendations": evaluation_recommendations,
    "bench-evaluation-hardware": evaluation_hardware,
    "bench-optimizer": optimizer_class,  # argument: the ISA class
    "bench-optimizer-batching": optimizer_batching,
    "bench-optimizer-kv-cache": optimizer_kv_cache,
    "bench-gguf-llamacpp": gguf_llamacpp,
    "bench-gguf-llamacpp-families": gguf_llamacpp_families,
    "bench-pipelines": pipelines,  # argument: the results file
    "bench-pruning-minilm": pruning_minilm,
    "bench-pruning-unstructured": pruning_unstructured,
    "bench-pruning-smollm2-structured": pruning_structured_smollm2,
    "bench-pruning-methods": pruning_methods,
    "bench-pruning-openvino-sparse": pruning_openvino_sparse,
    "bench-distillation-minilm-small": distillation_minilm_small,
    "bench-distillation-minilm-edge": distillation_minilm_edge,
    "bench-distillation-smollm2": distillation_smollm2,  # argument: the recipe (smollm2-shallow, smollm2-small)
    "bench-distillation-curve": distillation_curve,  # argument: the recipe
    "bench-distillation-sets": distillation_sets,
    "bench-distillation-families": distillation_families,
    "bench-chaos": chaos,
    "bench-artifact-throughput": artifact_throughput,
    "bench-compat": compat_matrix,
    "bench-scale": scale,
    "bench-serving": serving,
    "bench-search": search,  # argument: the results file
    "recipe-matrix": recipe_matrix,
}
TAKES_ARGUMENT = {"bench-evaluation-comparison", "bench-optimizer", "bench-pipelines", "bench-quantization-model",
                  "bench-search", "bench-distillation-smollm2", "bench-distillation-curve"}
# The SmolLM2 distillation recipes the bench measures, each with its table (and, where recorded, its curve).
SMOLLM2_STUDENTS = ("smollm2-shallow", "smollm2-small", "smollm2-small-half", "smollm2-small-augmented")


def required_sections() -> set[str]:
    """Every section some page must hold: a table nobody placed would silently vanish from the docs. The
    optimizer's file gains an ISA class when its bench runs on a new CPU: that class needs a table too."""
    fixed = {name for name in SECTIONS if name not in TAKES_ARGUMENT}
    per_class = {f"bench-optimizer:{isa}" for isa in optimizer_classes()}
    per_model = {f"bench-evaluation-comparison:{model}" for model in results("evaluation.json")["models"]}
    per_file = {f"bench-pipelines:{path.name}" for path in RESULTS.glob("pipelines*.json")}
    per_file |= {f"bench-search:{path.name}" for path in RESULTS.glob("search*.json")}
    quantized = {r["model"] for r in results("quantization.json")["rows"]}
    per_quantized = {f"bench-quantization-model:{model}" for model in QUANTIZATION_OWN_TABLES if model in quantized}
    distilled = results("distillation.json")
    per_student = {f"bench-distillation-smollm2:{r}" for r in SMOLLM2_STUDENTS if r in distilled}
    per_student |= {f"bench-distillation-curve:{r}" for r in SMOLLM2_STUDENTS
                    if distilled.get(r, {}).get("validation_perplexity_curve")}
    return fixed | per_class | per_model | per_file | per_quantized | per_student


def render_section(name: str, where: str) -> str:
    base, _, argument = name.partition(":")
    if base not in SECTIONS:
        raise GenerationError(f"{where}: unknown generated section {name!r}; known: {', '.join(SECTIONS)}")
    if (base in TAKES_ARGUMENT) != bool(argument):
        wanted = "needs an argument (NAME:ARGUMENT)" if base in TAKES_ARGUMENT else "takes no argument"
        raise GenerationError(f"{where}: generated section {name!r} {wanted}")
    return SECTIONS[base](argument)


def render_page(text: str, where: str) -> tuple[str, list[str]]:
    """The page with every generated part rendered afresh, and the names of those parts."""
    names: list[str] = []

    def fill(match: re.Match) -> str:
        names.append(match["name"])
        # A blank line before the closing marker ends the table above it in every Markdown renderer.
        return f"{BEGIN.format(name=match['name'])}\n{render_section(match['name'], where)}\n{END}"

    rendered = BLOCK.sub(fill, text)
    if len(OPENINGS.findall(text)) != len(names) or len(CLOSINGS.findall(text)) != len(names):
        raise GenerationError(f"{where}: a '{BEGIN.format(name='NAME')}' line without its '{END}' line "
                              "(or the reverse)")
    return rendered, names


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def rendered_pages() -> dict[Path, tuple[str, str]]:
    """page -> (its text on disk, its text as generated now), for every page under docs/. Raises
    GenerationError when a required section is on no page."""
    out, placed = {}, set()
    for page in pages():
        text = page.read_text()
        rendered, names = render_page(text, str(page.relative_to(ROOT)))
        placed.update(names)
        out[page] = (text, rendered)
    missing = sorted(required_sections() - placed)
    if missing:
        raise GenerationError(f"docs/: no page holds the generated section(s) {', '.join(missing)}; add "
                              f"'{BEGIN.format(name=missing[0])}' ... '{END}' where the table belongs")
    return out


def stale_pages() -> list[Path]:
    return [page for page, (text, rendered) in rendered_pages().items() if text != rendered]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the tables in docs/ that come from data.")
    parser.add_argument("--check", action="store_true", help="exit 1 naming the stale pages; write nothing")
    args = parser.parse_args(argv)
    try:
        generated = rendered_pages()
    except GenerationError as exc:
        print(f"docs/generate.py: {exc}", file=sys.stderr)
        return 2
    stale = [page for page, (text, rendered) in generated.items() if text != rendered]
    for page in stale:
        name = page.relative_to(ROOT)
        if args.check:
            print(f"{name}: stale generated section(s); run `make docs`", file=sys.stderr)
        else:
            page.write_text(generated[page][1])
            print(f"{name}: regenerated")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
