"""JSON and self-contained HTML reports of a job or a comparison, plots embedded as PNG.

Input is the Job / Comparison message (read through modelpress.results' one schema: snake_case
names, None for what was not measured) and the job's events as plain data; output is two strings.
A reader should get the outcome from the headline in ten seconds, then find the evidence below it:
figures with their spread, the plots, every stage. A figure that was not measured reads "n/a".
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render straight to PNG
import matplotlib.pyplot as plt  # noqa: E402

from modelpress.results import job_document, message_document  # noqa: E402
from modelpress.v1 import common_pb2  # noqa: E402

MB = 1e6  # sizes on disk in SI megabytes, as the CLI prints them
NOT_MEASURED = "n/a"


@dataclass
class Report:
    title: str
    headline: str
    verdict: str  # "pass" (green), "warn" (amber: something got worse or is unreliable), "fail" or "info"
    data: dict[str, Any]
    plots: dict[str, str] = field(default_factory=dict)  # caption -> base64 PNG
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    # Captions of plots shown at the page's full width (per-layer bars).
    wide_plots: set[str] = field(default_factory=set)
    # Under the headline: what was measured, when, on which machine.
    context: str = ""

    def json(self) -> str:
        return json.dumps({"title": self.title, "headline": self.headline, "verdict": self.verdict,
                           "context": self.context,
                           "plots": list(self.plots), **self.data}, indent=2, sort_keys=False)

    def html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>",
                 f'<p class="headline {self.verdict}">{html.escape(self.headline)}</p>']
        if self.context:
            parts.append(f'<p class="context">{html.escape(self.context)}</p>')
        for caption, rows_header, rows in self.tables:
            parts.append(f"<h2>{html.escape(caption)}</h2>" + _table(rows_header, rows))
        for caption, png in self.plots.items():
            wide = ' class="wide"' if caption in self.wide_plots else ""
            parts.append(f'<figure{wide}><img alt="{html.escape(caption)}" src="data:image/png;base64,{png}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        body = "\n".join(parts)
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #1d1d1f; }}
.headline {{ font-size: 1.35rem; padding: .8rem 1rem; border-radius: 6px; background: #eef2f7; }}
.headline.pass {{ background: #e3f5e8; border-left: 6px solid #2e9d4f; }}
.headline.fail {{ background: #fbe7e6; border-left: 6px solid #c9372c; }}
.headline.warn {{ background: #fdf3dc; border-left: 6px solid #d89a14; }}
.context {{ color: #555; font-size: .9rem; }}
table {{ border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }}
th, td {{ border: 1px solid #d0d4da; padding: .3rem .6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f4f5f7; }}
td.ok {{ color: #1f7a3a; font-weight: 600; }} td.bad {{ color: #b3261e; font-weight: 600; }}
figure {{ display: inline-block; margin: 0 1rem 1rem 0; }} img {{ max-width: 520px; }}
figure.wide {{ display: block; }} figure.wide img {{ max-width: 100%; }}
figcaption {{ font-size: .85rem; color: #555; }}
</style></head><body>
{body}
</body></html>
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            css = ' class="ok"' if cell == "pass" else ' class="bad"' if cell.startswith("FAIL") else ""
            cells.append(f"<td{css}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _num(value: float | None, digits: int = 3) -> str:
    """A figure as a table shows it; "n/a" for one that was not measured (never a 0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_MEASURED
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"


def _share(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.2%}"


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def _part(data: dict | None, key: str) -> dict:
    """A sub-message of a document, {} where it is None (not measured)."""
    return (data or {}).get(key) or {}


def _quality_of(metrics: dict) -> tuple[str, float | None]:
    """The headline quality number of one model: perplexity (LMs) or topic k-NN accuracy (encoders)."""
    if metrics.get("kind") == "encoder":
        return "topic k-NN accuracy", _part(metrics, "encoder").get("knn_topic_accuracy")
    return "perplexity", metrics.get("perplexity")


def to_plain(message) -> dict:
    """A message as JSON-ready data (camelCase keys) with int64 fields as numbers, not the
    strings protobuf's JSON mapping gives them."""
    from google.protobuf import json_format

    def fix(value):
        if isinstance(value, dict):
            return {k: (int(v) if isinstance(v, str) and k in _INT64_KEYS else fix(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return fix(json_format.MessageToDict(message))


_INT64_KEYS = {"sizeOnDiskBytes", "parameters", "parameterBytes", "flops", "qualityTokens", "sizeBytes",
               "originalModelSizeBytes", "compressedModelSizeBytes", "originalParams", "compressedParams",
               "sequence"}


# ---- plots --------------------------------------------------------------------------------

def size_quality_plot(points: list[tuple[str, float, float, bool]], quality_name: str, front: list[int]) -> str:
    """Size (MB) against quality, one point per model; the Pareto front joined by a line."""
    points = [p for p in points if p[2] is not None]  # a model whose quality was not measured has no point
    fig, ax = plt.subplots(figsize=(5.6, 4))
    for label, size_mb, value, passed in points:
        ax.scatter(size_mb, value, s=60, color="#2e9d4f" if passed else "#c9372c", zorder=3)
        ax.annotate(label, (size_mb, value), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if len(front) > 1:
        ordered = sorted(front, key=lambda i: points[i][1])
        ax.plot([points[i][1] for i in ordered], [points[i][2] for i in ordered], "--", color="#888", zorder=2,
                label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel(quality_name + (" (lower is better)" if quality_name == "perplexity" else ""))
    # Show the quality axis at a human scale: a band of at least ±2 % around the values, so
    # equal-looking models look equal instead of being stretched over the whole plot.
    values = [p[2] for p in points] or [0.0]
    centre, spread = (max(values) + min(values)) / 2, max(values) - min(values)
    half = max(spread * 0.6, abs(centre) * 0.02, 1e-6)
    ax.set_ylim(centre - half, centre + half)
    ax.set_xlim(0, max((p[1] for p in points), default=1.0) * 1.15)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=.3)
    return _png(fig)


def search_front_plot(points: list[tuple[str, float, float, float | None, bool]], front: list[int], phase: str,
                      floor: float) -> str:
    """A search's candidates: size ratio against speed-up, coloured by whether quality kept met the floor;
    the Pareto front of those that met it (smaller and faster) joined by a line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, size, speed, kept, met in points:
        ax.scatter(size, speed, s=60, color="#2e9d4f" if met else "#c9372c", zorder=3)
        kept_text = "" if kept is None else f" ({kept:.1%})"
        ax.annotate(label + kept_text, (size, speed), textcoords="offset points", xytext=(6, 4), fontsize=7)
    if len(front) > 1:
        ordered = sorted(front, key=lambda i: points[i][1])
        ax.plot([points[i][1] for i in ordered], [points[i][2] for i in ordered], "--", color="#888", zorder=2,
                label=f"Pareto front (quality kept ≥ {floor:.0%})")
        ax.legend(fontsize=8)
    ax.axhline(1.0, color="#bbb", linewidth=1, zorder=1)
    ax.set_xlabel("size on disk (compressed ÷ original)")
    ax.set_ylabel(f"{phase} speed-up (×, higher is better)")
    ax.set_xlim(0, max((p[1] for p in points), default=1.0) * 1.2)
    ax.set_ylim(0, max((p[2] for p in points), default=1.0) * 1.15)
    ax.grid(alpha=.3)
    return _png(fig)


def latency_plot(samples: list[tuple[str, list[float]]], shape: str) -> str:
    fig, ax = plt.subplots(figsize=(5.6, 4))
    ax.boxplot([s for _, s in samples], showfliers=True)
    ax.set_xticks(range(1, len(samples) + 1), [label for label, _ in samples], rotation=20, fontsize=8)
    ax.set_ylabel("ms per pass")
    ax.set_title(f"latency per pass, {shape}", fontsize=10)
    ax.grid(alpha=.3, axis="y")
    return _png(fig)


def layer_error_plot(layers: list[tuple[str, float]], key: str) -> str:
    fig, ax = plt.subplots(figsize=(12, 3.4))
    ax.bar(range(len(layers)), [v for _, v in layers], color="#4a78b5")
    ax.set_xlabel("layer (in quantization order)")
    ax.set_ylabel(key)
    worst = sorted(range(len(layers)), key=lambda i: layers[i][1], reverse=True)[:3]
    # Neighbouring bars are often the worst together: each label sits at its own height.
    for rank, i in enumerate(sorted(worst)):
        ax.annotate(layers[i][0].replace("model.layers.", "L"), (i, layers[i][1]), textcoords="offset points",
                    xytext=(0, 4 + 11 * rank), ha="center", fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6})
    ax.set_ylim(0, max(v for _, v in layers) * 1.35 if layers else 1)
    ax.grid(alpha=.3, axis="y")
    return _png(fig)


def loss_curve_plot(curves: dict[str, list[tuple[float, float]]], ylabel: str = "loss", log: bool = True) -> str:
    """Each curve against its own x (a training step, or the order of blocks), so a validation
    taken every N steps lines up with the training loss of those steps."""
    fig, ax = plt.subplots(figsize=(5.6, 4))
    for name, points in curves.items():
        dense = len(points) > 60
        ax.plot([x for x, _ in points], [v for _, v in points], marker="" if dense else "o", markersize=3,
                label=name)
    ax.set_xlabel("block / step")
    ax.set_ylabel(ylabel)
    if log and all(v > 0 for points in curves.values() for _, v in points):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=.3)
    return _png(fig)


# ---- job reports ---------------------------------------------------------------------------

def declared(methods: list[dict], kind: str) -> list[str]:
    """Names of the progress metrics of `kind` the job's methods declare (Describe), in order."""
    names: list[str] = []
    for method in methods:
        for metric in method.get("progressMetrics", []):
            if metric.get("kind") == kind and metric.get("name") not in names:
                names.append(metric["name"])
    return names


def layer_series(events: list[dict], keys: list[str]) -> list[tuple[str, list[tuple[str, float]]]]:
    """Per-layer values of each declared key the stages reported, in the order layers were done."""
    found = []
    for key in keys:
        layers = [(e["metrics"]["layer"], float(e["metrics"][key])) for e in events
                  if isinstance(e.get("metrics"), dict) and "layer" in e["metrics"]
                  and isinstance(e["metrics"].get(key), (int, float))]
        if layers:
            found.append((key, layers))
    return found


def _latency_cell(figures: dict | None) -> str:
    if not figures:
        return NOT_MEASURED
    cell = (f"{_num(figures['p50_ms'])} / {_num(figures['p95_ms'])} / {_num(figures['p99_ms'])}"
            f" ± {_num(figures['stdev_ms'], 2)}")
    return cell + (" (unreliable)" if figures.get("unreliable") else "")


def _ratio_cell(speed: dict | None) -> str:
    """compressed ÷ original time, with the interval from the interleaved rounds (< 1 is faster)."""
    if not speed or not speed.get("speedup"):
        return NOT_MEASURED
    cell = (f"{1 / speed['speedup']:.3f} [{1 / speed['ci95_high']:.3f}–{1 / speed['ci95_low']:.3f}]"
            if speed.get("ci95_low") and speed.get("ci95_high") else f"{1 / speed['speedup']:.3f}")
    return cell + (" unreliable" if speed.get("unreliable") else "")


def loss_curves(events: list[dict], keys: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Series (x, value) from progress events, one point per distinct layer/block that reported it;
    x is the event's training step where it has one and names no layer, else the point's rank."""
    curves: dict[str, list[tuple[float, float]]] = {}
    seen: dict[str, set] = {}
    for event in events:
        metrics = event.get("metrics") or {}
        # QAT repeats its block loss on every Linear of the block: one point per block.
        block = re.match(r"(.*?\.(?:layers|layer|h)\.\d+)", str(metrics.get("layer", "")))
        marker = block.group(1) if block else (metrics.get("layer") or event.get("sequence"))
        step = int(event.get("step") or 0) if "layer" not in metrics else 0
        for key in keys:
            if isinstance(metrics.get(key), (int, float)):
                if marker in seen.setdefault(key, set()):
                    continue
                seen[key].add(marker)
                points = curves.setdefault(key, [])
                points.append((step or len(points) + 1, float(metrics[key])))
    return curves


VERDICT_OF_COLOUR = {"green": "pass", "amber": "warn", "red": "fail"}


def machine_text(machine: dict, load: dict | None = None) -> str:
    """CPU model, ISA and threads (and the load while timing) as one line."""
    if not machine:
        return ""
    isa = ", ".join(machine.get("isa_features", [])[-4:]) or "unknown ISA"
    if machine.get("isa_class"):
        isa = f"ISA class {machine['isa_class']}: {isa}"
    text = f"{machine.get('cpu_model') or '?'} ({machine.get('logical_cores', 0)} threads; {isa})"
    if load:
        text += (f", load while timing: other processes {load.get('others_cpu_share', 0.0):.0%} of the CPU, "
                 f"load average {load.get('load_average_1m', 0.0):.2f}")
    return text


def _model_name(job: dict) -> str:
    model = job.get("model") or {}
    if model.get("builtin"):
        return model["builtin"]
    if model.get("path"):
        return model["path"].rstrip("/").rsplit("/", 1)[-1]
    return f"artifact {model.get('artifact_id') or '?'}"


def _short_digest(digest: str) -> str:
    return digest[:19] + "…" if digest.startswith("sha256:") else digest


# (label, ModelMetrics field, scale, digits, better); the kind's own quality rows follow them.
_FIGURE_ROWS = (("size on disk (MB)", "size_on_disk_bytes", 1 / MB, 4, "lower"),
                ("parameters", "parameters", 1, 6, "lower"),
                ("stored parameter bytes (MB)", "parameter_bytes", 1 / MB, 4, "lower"),
                ("FLOPs per pass (G)", "flops", 1e-9, 4, "lower"),
                ("peak RSS (MB)", "peak_rss_mb", 1, 4, "lower"))
_CAUSAL_ROWS = (("perplexity", "perplexity", 1, 5, "lower"),
                ("top-1 accuracy", "top1_accuracy", 1, 4, "higher"))


def _figure_row(label: str, a: float | None, b: float | None, digits: int, better: str) -> list[str]:
    return [label, _num(a, digits), _num(b, digits), _num(b / a, 4) if a and b is not None else NOT_MEASURED,
            better]


def _before_after_rows(result: dict, original: dict, compressed: dict) -> list[list[str]]:
    """Every figure that applies to the model's kind, "n/a" where it was not measured."""
    encoder = original.get("kind") == "encoder"
    rows = [_figure_row(label, _scaled(original.get(key), scale), _scaled(compressed.get(key), scale), digits,
                        better)
            for label, key, scale, digits, better in _FIGURE_ROWS + (() if encoder else _CAUSAL_ROWS)]
    phase = _part(original, "latency").get("phase") or "forward"
    for label, section, ratio_key in ((f"{phase} p50 / p95 / p99 (ms)", "latency", "prefill_speedup"),
                                      ("decode p50 / p95 / p99 (ms)", "decode", "decode_speedup")):
        a, b = original.get(section), compressed.get(section)
        if a or b:
            rows.append([label, _latency_cell(a), _latency_cell(b), _ratio_cell(result.get(ratio_key)),
                         "lower"])
    if encoder:
        mine = _part(compressed, "encoder")
        rows.append(_figure_row("topic k-NN accuracy", _part(original, "encoder").get("knn_topic_accuracy"),
                                mine.get("knn_topic_accuracy"), 4, "higher"))
        # The original is the reference of these two: shown as such, not as a zero.
        for label, key in (("mean cosine to the original", "mean_reference_cosine"),
                           ("nearest-neighbour agreement", "neighbour_agreement")):
            rows.append([label, "reference", _num(mine.get(key), 4), "-", "higher"])
    return rows


def job_report(job: common_pb2.Job, events: list[dict], methods: list[dict] = (), lineage: list[dict] = ()
               ) -> Report:
    """`methods`: the job's MethodDescriptions (as plain dicts): their declared progress metrics are
    what gets plotted. `lineage`: the output artifact's chain (its manifest's), shown as a table.
    The report's data holds the job as modelpress.results.job_document writes it."""
    document = job_document(job)
    job_data = document
    result = document["result"] or {}
    original, compressed = result.get("original") or {}, result.get("compressed") or {}
    model_name = _model_name(job_data)
    quality_name, before_q = _quality_of(original)
    _, after_q = _quality_of(compressed)
    state = job_data["state"]
    if not original:
        headline = f"{job_data['recipe']}: {state}; no before/after measurement was made"
        verdict = "info"
    else:
        told = result["headline"]
        headline, verdict = told["text"], VERDICT_OF_COLOUR[told["colour"]]
    finished = job_data["finished_at"] or job_data["created_at"] or ""
    context = f"job {job_data['job_id']} on {model_name}"
    if finished:
        context += f", {str(finished)[:19].replace('T', ' ')} UTC"
    if original.get("machine"):
        context += f"; measured on {machine_text(original['machine'], result.get('timing_load'))}"
    report = Report(title=f"modelpress report: {job_data['recipe']} of {model_name}", headline=headline,
                    verdict=verdict, data={"kind": "job", "job": job_data}, context=context)
    if original:
        header = ["figure", "original", "compressed", "compressed ÷ original", "better"]
        report.tables.append(("Before and after", header, _before_after_rows(result, original, compressed)))
        sizes = [m["size_on_disk_bytes"] / MB for m in (original, compressed)]
        report.plots["size against quality"] = size_quality_plot(
            [("original", sizes[0], before_q, True), ("compressed", sizes[1], after_q, verdict != "fail")],
            quality_name, front=[])
        lat_a, lat_b = _part(original, "latency"), _part(compressed, "latency")
        if lat_a.get("samples_ms") and lat_b.get("samples_ms"):
            report.plots["latency distribution (forward, same inputs)"] = latency_plot(
                [("original", lat_a["samples_ms"]), ("compressed", lat_b["samples_ms"])],
                f"batch {lat_a.get('batch_size', 1)} × {lat_a.get('sequence_length', 0)} tokens, "
                f"{lat_a.get('threads', 0)} threads")
    if (job_data.get("search_result") or {}).get("candidates"):
        _search_sections(report, job_data)
    stage_rows = []
    for stage in job_data["stages"]:
        metrics = {k: v for k, v in (stage.get("metrics") or {}).items() if k != "not_measured"}
        shown = ", ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in list(metrics.items())[:6])
        stage_rows.append([str(stage["index"]), _part(stage, "spec").get("method", ""),
                           stage["state"].replace("JOB_STATE_", "").lower(), stage["worker"], shown])
    report.tables.append(("Stages", ["#", "method", "state", "worker", "figures"], stage_rows))
    if lineage:
        report.tables.append(("Lineage (every stage that made the output, by content)",
                              ["#", "method", "input", "input digest", "config", "versions", "key"],
                              [[str(i), f"{link.get('technique', '')}:{link.get('method', '')}", link.get("input", ""),
                                _short_digest(link.get("input_digest", "")), json.dumps(link.get("config", {}), sort_keys=True),
                                ", ".join(f"{k} {v}" for k, v in sorted(link.get("versions", {}).items())),
                                link.get("key", "")[:16]] for i, link in enumerate(lineage)]))
        report.data["lineage"] = list(lineage)
    # One plot per declared figure (the pruner's sparsity and layer loss, a quantizer's error); the
    # data holds a row per layer with every figure it reported.
    by_layer: dict[str, dict] = {}
    for key, layers in layer_series(events, declared(methods, "per-layer")):
        report.plots[f"per-layer {key}"] = layer_error_plot(layers, key)
        report.wide_plots.add(f"per-layer {key}")
        for name, value in layers:
            by_layer.setdefault(name, {"layer": name})[key] = value
    if by_layer:
        report.data["layers"] = list(by_layer.values())
    curves = loss_curves(events, declared(methods, "curve"))
    if curves:
        report.plots["training loss"] = loss_curve_plot(curves)
        report.data["loss_curves"] = {k: [v for _, v in points] for k, points in curves.items()}
        report.data["loss_curve_steps"] = {k: [x for x, _ in points] for k, points in curves.items()}
    schedules = loss_curves(events, declared(methods, "schedule"))
    if schedules:
        report.plots["training schedule"] = loss_curve_plot(schedules, ylabel="value", log=False)
        report.data["schedules"] = {k: [[x, v] for x, v in points] for k, points in schedules.items()}
    return report


FIDELITY_ORDER = ("screen", "full", "heldout")


def _search_sections(report: Report, job_data: dict) -> None:
    """A search job's front: every trial as a row with why its candidate lost, and each candidate's most
    thorough measurement as a point (size × speed-up, coloured by quality kept against the floor)."""
    found, spec = job_data["search_result"], job_data.get("search") or {}
    floor = spec.get("min_quality_kept") or 0.99
    phase = spec.get("phase") or "prefill"
    dropped = {c["name"]: c.get("dropped", "") for c in found["candidates"]}
    rows, best = [], {}
    for trial in found["trials"]:
        if trial.get("pending"):
            continue
        speed = trial.get("speedup") or {}
        kept = trial.get("quality_kept")
        outcome = "winner" if trial["candidate"] == found.get("winner") else trial.get("error") or dropped.get(
            trial["candidate"], "")
        rows.append([trial["candidate"], trial["fidelity"] + (" (stored)" if trial.get("reused") else ""),
                     "-" if trial.get("error") else f"{speed.get('speedup', 0):.2f} [{speed.get('ci95_low', 0):.2f}–"
                                                    f"{speed.get('ci95_high', 0):.2f}]",
                     "-" if kept is None else f"{kept:.2%}", _num(trial.get("size_ratio"), 3),
                     _num(trial.get("memory_ratio"), 3), outcome])
        if not trial.get("error"):
            earlier = best.get(trial["candidate"])
            rank = FIDELITY_ORDER.index(trial["fidelity"]) if trial["fidelity"] in FIDELITY_ORDER else 0
            if earlier is None or rank >= earlier[0]:
                best[trial["candidate"]] = (rank, trial)
    report.tables.append((f"Search on {_a_class(found.get('isa_class', ''))}: validation split for choices, "
                          "held-out for the winner",
                          ["candidate", "effort", f"{phase} speed-up [95 %]", "quality kept", "size ×", "memory ×",
                           "outcome"], rows))
    points = [(name, t["size_ratio"], (t.get("speedup") or {}).get("speedup", 0.0), t.get("quality_kept"),
               t.get("quality_kept") is not None and t["quality_kept"] >= floor) for name, (_, t) in best.items()]
    met = [i for i, p in enumerate(points) if p[4]]
    front = [met[i] for i in pareto_front([(points[i][1], -points[i][2]) for i in met], lower_quality_is_better=True)]
    if points:
        report.plots["search: size against speed-up"] = search_front_plot(points, front, phase, floor)
    report.data["search_front"] = [points[i][0] for i in front]


def _a_class(isa: str) -> str:
    return f"an {isa} CPU" if isa[:1] in "aeiou" else f"a {isa or 'measuring'} CPU"


# ---- comparison reports ------------------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]], lower_quality_is_better: bool) -> list[int]:
    """Indices of points no other point beats on size and quality at once (smaller size is better)."""
    def better_or_equal(a, b):
        quality_ok = a[1] <= b[1] if lower_quality_is_better else a[1] >= b[1]
        return a[0] <= b[0] and quality_ok

    front = []
    for i, p in enumerate(points):
        if not any(better_or_equal(q, p) and q != p for j, q in enumerate(points) if j != i):
            front.append(i)
    return front


def _speedup_cell(row: dict) -> str:
    """Speedup over the baseline with its interval; 'unreliable' when the rounds disagreed."""
    speed = (row.get("speed") or [{}])[0]
    cell = _num(row.get("speedup"), 3)
    if speed.get("ci95_low") and speed.get("ci95_high") and not row.get("baseline"):
        cell += f" [{speed['ci95_low']:.2f}–{speed['ci95_high']:.2f}]"
    return cell + (" unreliable" if speed.get("unreliable") else "")


def _check_cell(check: dict) -> str:
    if check.get("not_measured"):
        return "FAIL (n/a)"
    return "pass" if check.get("passed") else "FAIL"


def _outline(row: dict) -> str:
    """Size, quality kept and speed of a row, for a headline ("n/a" for what was not measured)."""
    size, kept, speed = row.get("size_ratio"), row.get("quality_retention"), row.get("speedup")
    return (f"{NOT_MEASURED if size is None else f'{size:.1%}'} of the size, "
            f"quality kept {NOT_MEASURED if kept is None else f'{kept:.1%}'}, "
            f"{NOT_MEASURED if speed is None else f'{speed:.2f}×'} speed")


def comparison_report(comparison: common_pb2.Comparison) -> Report:
    """The report's data holds the comparison under modelpress.results' schema."""
    data = message_document(comparison)
    rows = data["rows"]
    baseline = next((r for r in rows if r["baseline"]), rows[0] if rows else {})
    threshold_set = data["threshold_set"]
    others = [r for r in rows if not r["baseline"]]
    passing = [r for r in others if r["passed"]]
    if threshold_set:
        verdict = "pass" if others and len(passing) == len(others) else "fail"
        best = max(passing, key=lambda r: r.get("quality_retention") or 0, default=None)
        headline = (f"{len(passing)} of {len(others)} models pass {threshold_set} against {baseline.get('model')}"
                    + (f"; best quality kept: {best['model']} ({_outline(best)})" if best else ""))
    else:
        verdict = "info"
        smallest = min(others, key=lambda r: r.get("size_ratio") or 1, default=None)
        headline = (f"{len(rows)} models against {baseline.get('model')}"
                    + (f"; smallest: {smallest['model']} ({_outline(smallest)})" if smallest else ""))
    report = Report(title="modelpress comparison", headline=headline, verdict=verdict,
                    data={"kind": "comparison", "comparison": data})
    header = ["model", "size (MB)", "size ratio", "params ratio", "FLOPs ratio", "p50 (ms)", "speedup",
              "RSS ratio", "quality kept"]
    checks = [c["metric"] for c in (others[0]["checks"] if others else [])]
    header += checks + (["verdict"] if checks else [])
    table = []
    for r in rows:
        m = r.get("metrics") or {}
        line = [r["model"] + (" (baseline)" if r["baseline"] else ""),
                _num(_scaled(m.get("size_on_disk_bytes"), 1 / MB), 4), _num(r.get("size_ratio"), 3),
                _num(r.get("parameter_ratio"), 3), _num(r.get("flops_ratio"), 3),
                _num(_part(m, "latency").get("p50_ms"), 4), _speedup_cell(r),
                _num(r.get("memory_ratio"), 3), _share(r.get("quality_retention"))]
        if checks:
            by_metric = {c["metric"]: c for c in r["checks"]}
            line += [_check_cell(by_metric.get(c, {})) for c in checks]
            line.append("-" if r["baseline"] else ("pass" if r["passed"] else "FAIL"))
        table.append(line)
    report.tables.append(("Against the baseline", header, table))
    if rows:
        # The verdict's own measure (quality kept), and a front through models that passed only.
        quality_name = "quality kept"
        points = [(r["model"], (r.get("metrics") or {}).get("size_on_disk_bytes", 0) / MB,
                   1.0 if r["baseline"] else r.get("quality_retention"), bool(r["passed"] or r["baseline"]))
                  for r in rows]
        eligible = [i for i, p in enumerate(points) if p[3] and p[2] is not None]
        front = [eligible[k] for k in pareto_front([(points[i][1], points[i][2]) for i in eligible],
                                                   lower_quality_is_better=False)]
        report.plots["size against quality kept (Pareto front of passing models dashed)"] = size_quality_plot(
            points, quality_name, front)
        report.data["pareto_front"] = [rows[i].get("model") for i in front]
        samples = [(r["model"], _part(r.get("metrics"), "latency").get("samples_ms", [])) for r in rows]
        if all(s for _, s in samples):
            lat = _part(baseline.get("metrics"), "latency")
            report.plots["latency distribution (interleaved rounds)"] = latency_plot(
                samples, f"batch {lat.get('batch_size', 1)} × {lat.get('sequence_length', 0)} tokens, "
                         f"{lat.get('threads', 0)} threads")
    return report
