"""The pruner's bars on both built-in models, each reached by a built-in recipe with its defaults.

    python bench/pruning.py [--parts minilm,unstructured,smollm2-structured,openvino-sparse,methods]
                            [--iterations 20] [--work DIR] [--print]

- minilm: `prune-structured-50` on MiniLM-L6, then the original and the output in one interleaved
  comparison (PyTorch FP32 eager, 1x128): speed, k-NN topic accuracy on held-out sentences,
  FLOPs (torch.utils.flop_counter), parameters, and whether the output reloads in stock transformers.
- unstructured: SparseGPT and Wanda at 50 % and 2:4 on SmolLM2, modelpress and llm-compressor side
  by side on the same calibration windows (bench/anchors.py, its rows also land in anchors.json),
  plus magnitude (no data), so 2:4 has a row per importance; perplexity on held-out windows.
- smollm2-structured: `prune-structured-25` on SmolLM2, with and without its in-stage recovery,
  against the original in one interleaved run: prefill and decode speed, perplexity.
- openvino-sparse: OpenVINO INT8 of SmolLM2 dense and 50 %-sparse (SparseGPT), each compiled with
  and without CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE, prefill timed in interleaved rounds. The
  plugin decompresses sparse weights only on CPUs with AMX; elsewhere the figure says so.
- methods: every pruner method on both models with a short calibration and no recovery: that it
  runs (or the reason it refuses), its wall time and what it removed.

Writes bench/results/pruning.json (each part replaces its own rows) and prints the tables.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import modelpress
from anchors import ANCHOR_PYTHON, check_anchor_python, side_by_side
from parts import run_parts  # bench/ (this folder is on sys.path)
from quantization import run_method
from services.common.models.builtin_models import builtin_folder
from services.common.runtime.settings import default_cache
from services.evaluator.engine import EvaluationConfig, compare_folders, evaluate_folder

RESULTS = Path(__file__).resolve().parent / "results" / "pruning.json"
# SmolLM2's unstructured and 2:4 rows: calibration windows (the pruner's default) and held-out windows.
SAMPLES, SEQUENCE_LENGTH, QUALITY_WINDOWS = 64, 256, 16
ANCHORED = ["sparsegpt-50", "wanda-50", "sparsegpt-2of4", "wanda-2of4"]
# Importances llm-compressor has no modifier for, run by modelpress alone.
OURS_ONLY = {"magnitude-50": ("magnitude", {"sparsity": 0.5}, "prune-magnitude-50"),
             "magnitude-2of4": ("magnitude", {"structure": "2:4"}, "prune-2of4 with method magnitude")}


def speed_of(figures: dict) -> dict:
    """phase -> speedup and its 95 % interval against the baseline of the comparison."""
    return {s["phase"]: {"speedup": round(s["speedup"], 3), "ci95": [round(s["ci95_low"], 3), round(s["ci95_high"], 3)]}
            for s in figures["speed"]}


def reloads(folder: Path) -> bool:
    """The output loads with stock transformers' Auto classes, no custom code."""
    from transformers import AutoModel

    AutoModel.from_pretrained(folder)  # raises if it does not
    return True


def stage_figures(run) -> dict:
    metrics = run.stages[0].result.metrics
    keep = ("flops_before", "flops_after", "flops_ratio", "flops_shape", "parameters_before", "parameters",
            "parameters_ratio", "shape_before", "shape_after", "reload_max_abs_difference", "calibration_tokens")
    figures = {k: metrics[k] for k in keep if k in metrics}
    figures["recovery"] = [{k: r[k] for k in ("steps", "seconds", "first_loss", "last_loss") if k in r}
                           for r in metrics.get("recovery", [])]
    return figures


def minilm(args, work: Path) -> dict:
    src = builtin_folder("minilm-l6", default_cache())
    out = work / "minilm-structured-50"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    run = modelpress.compress(src, "prune-structured-50", out)
    seconds = time.perf_counter() - start
    config = EvaluationConfig(batch_size=1, sequence_length=128, latency_iterations=args.iterations,
                              quality_sentences=222)
    (base, pruned), timing = compare_folders([src, run.output], 0, config)
    accuracy = pruned["encoder"]["knn_topic_accuracy"]
    return {"model": "minilm-l6", "recipe": "prune-structured-50", "seconds": round(seconds, 1),
            **stage_figures(run), "reloads": reloads(run.output),
            "speed": speed_of(pruned), "knn_topic_accuracy": accuracy,
            "base_knn_topic_accuracy": base["encoder"]["knn_topic_accuracy"],
            "accuracy_kept": accuracy / base["encoder"]["knn_topic_accuracy"],
            "mean_reference_cosine": pruned["encoder"]["mean_reference_cosine"],
            "sentences": pruned["encoder"]["sentences"], "rounds": timing["rounds"], "load": timing["load"]}


def unstructured(args, work: Path) -> dict:
    check_anchor_python(args.anchor_python)
    rows = side_by_side(ANCHORED, SAMPLES, SEQUENCE_LENGTH, QUALITY_WINDOWS, args.anchor_python, work)
    src = builtin_folder("smollm2-135m", default_cache())
    evaluation = EvaluationConfig(latency_iterations=3, quality_windows=QUALITY_WINDOWS)
    base = rows[0]["base_ppl"]
    for name, (method, config, recipe) in OURS_ONLY.items():
        out = work / f"modelpress-{name}"
        run = run_method("pruner", method, config, src, out)
        ppl = evaluate_folder(out, evaluation)["perplexity"]
        rows.append({"method": name, "tool": "modelpress", "calibration": "none", "recipe": recipe,
                     "ppl": round(ppl, 4), "base_ppl": base, "delta": round((ppl - base) / base, 4),
                     "wall_s": round(run["wall_s"], 1), "peak_rss_mb": round(run["peak_rss_mb"])})
        print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
    return {"model": "smollm2-135m", "quality_windows": QUALITY_WINDOWS, "rows": rows}


def smollm2_structured(args, work: Path) -> dict:
    src = builtin_folder("smollm2-135m", default_cache())
    outputs, runs = {}, {}
    for label, overrides in (("recovered", {}), ("no-recovery", {"recovery_minutes": 0.0})):
        out = work / f"smollm2-structured-25-{label}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        run = modelpress.compress(src, "prune-structured-25", out, overrides=overrides)
        runs[label] = {"seconds": round(time.perf_counter() - start, 1), **stage_figures(run)}
        outputs[label] = run.output
    config = EvaluationConfig(batch_size=1, sequence_length=128, latency_iterations=args.iterations,
                              quality_windows=QUALITY_WINDOWS, decode_tokens=16)
    figures, timing = compare_folders([src, *outputs.values()], 0, config)
    base = figures[0]
    rows = []
    for label, f in zip(outputs, figures[1:]):
        rows.append({"variant": label, **runs[label], "reloads": reloads(outputs[label]), "speed": speed_of(f),
                     "ppl": f["perplexity"], "base_ppl": base["perplexity"],
                     "delta_ppl": f["perplexity"] / base["perplexity"] - 1, "peak_rss_mb": f["peak_rss_mb"],
                     "base_peak_rss_mb": base["peak_rss_mb"]})
    return {"model": "smollm2-135m", "recipe": "prune-structured-25", "rows": rows, "rounds": timing["rounds"],
            "load": timing["load"]}


def _feeds(compiled, length: int) -> dict:
    """Inputs for one prefill of `length` tokens of an exported LM, whatever its input names."""
    import numpy as np

    feeds = {}
    for port in compiled.inputs:
        name = port.get_any_name()
        if name == "beam_idx":
            feeds[name] = np.zeros(1, dtype=np.int32)
        elif name == "position_ids":
            feeds[name] = np.arange(length, dtype=np.int64)[None]
        else:
            feeds[name] = np.full((1, length), 42 if name == "input_ids" else 1, dtype=np.int64)
    return feeds


def openvino_sparse(args, work: Path) -> dict:
    from services.common.measure.isa import isa_class
    from services.common.measure.machine import describe_machine
    from services.common.engines.openvino_runtime import compile_config, read_model

    flags = list(describe_machine().isa_features)
    src = builtin_folder("smollm2-135m", default_cache())
    sparse = work / "smollm2-sparsegpt-50"
    if not sparse.exists():
        run_method("pruner", "sparsegpt", {"sparsity": 0.5}, src, sparse)
    irs = {}
    for label, folder in (("dense", src), ("sparse-50", sparse)):
        out = work / f"openvino-int8-{label}"
        if not out.exists():
            run_method("optimizer", "openvino-int8", {}, folder, out)
        irs[label] = next(out.rglob("*.xml"))
    import openvino as ov

    core = ov.Core()
    compiled = {}
    for label, xml in irs.items():
        for rate in (None, 0.5):
            config = compile_config() | ({"CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": rate} if rate else {})
            compiled[(label, rate)] = core.compile_model(read_model(xml), "CPU", config)
    requests = {key: c.create_infer_request() for key, c in compiled.items()}
    feeds = {key: _feeds(c, 128) for key, c in compiled.items()}
    times = {key: [] for key in compiled}
    for _ in range(3):  # warm-up
        for key, request in requests.items():
            request.reset_state()
            request.infer(feeds[key])
    for _ in range(args.iterations):
        for key, request in requests.items():
            request.reset_state()
            start = time.perf_counter()
            request.infer(feeds[key])
            times[key].append(time.perf_counter() - start)
    base = statistics.median(times[("dense", None)])
    rows = [{"weights": label, "sparse_decompression_rate": rate,
             "prefill_p50_ms": round(statistics.median(t) * 1e3, 2),
             "speedup_vs_dense": round(base / statistics.median(t), 3)} for (label, rate), t in times.items()]
    return {"model": "smollm2-135m", "engine": "openvino-int8", "shape": "1x128 prefill",
            "isa_class": isa_class(flags), "amx": "amx_int8" in flags, "rounds": args.iterations, "rows": rows,
            "note": "" if "amx_int8" in flags else
            "this CPU has no AMX: OpenVINO's CPU plugin decompresses sparse INT8 weights only with AMX, so the "
                    "rate setting is expected to change nothing here"}


# Each method with the config its recipe gives, short calibration, no recovery.
EVERY_METHOD = {"magnitude": {"sparsity": 0.5}, "wanda": {"sparsity": 0.5}, "sparsegpt": {"structure": "2:4"},
                "mlp-neurons": {}, "layers": {}, "heads": {}, "structured": {"target_flops": 0.5}}
SHORT = {"calibration_samples": 8, "calibration_sequence_length": 128, "recovery_minutes": 0.0}


def methods(args, work: Path) -> dict:
    rows = []
    for model in ("smollm2-135m", "minilm-l6"):
        src = builtin_folder(model, default_cache())
        for method, config in EVERY_METHOD.items():
            out = work / f"every-{model}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            try:
                run = run_method("pruner", method, {**config, **SHORT}, src, out)
            except RuntimeError as exc:
                rows.append({"model": model, "method": method, "config": config, "outcome": "refused",
                             "reason": str(exc).split("failed: ", 1)[-1]})
            else:
                m = run["metrics"]
                rows.append({"model": model, "method": method, "config": config, "outcome": "ran",
                             "wall_s": round(run["wall_s"], 1), "sparsity": m.get("sparsity"),
                             "flops_ratio": m.get("flops_ratio"), "parameters_ratio": m.get("parameters_ratio"),
                             "shape_after": m.get("shape_after")})
            print(rows[-1], flush=True)
    return {"rows": rows, "short": SHORT}


PARTS = {"minilm": minilm, "unstructured": unstructured, "smollm2-structured": smollm2_structured,
         "openvino-sparse": openvino_sparse, "methods": methods}


def print_tables(results: dict) -> None:
    machine = results["machine"]
    print(f"machine: {machine['cpu_model']} ({machine['isa_class']}), load at the end {machine['load_average_1_5_15m']}")
    if m := results.get("minilm"):
        print("\nMiniLM-L6, prune-structured-50 (PyTorch FP32 eager 1x128, interleaved)")
        print("FLOPs × | params × | layers | MLP | speedup [95% CI] | k-NN acc (orig) | kept | reloads | recovery")
        print(" | ".join([f"{m['flops_ratio']:.3f}", f"{m['parameters_ratio']:.3f}",
                          f"{m['shape_before']['layers']}→{m['shape_after']['layers']}",
                          f"{m['shape_before']['mlp_width']}→{m['shape_after']['mlp_width']}",
                          f"{m['speed']['forward']['speedup']:.2f} {m['speed']['forward']['ci95']}",
                          f"{m['knn_topic_accuracy']:.3f} ({m['base_knn_topic_accuracy']:.3f})",
                          f"{m['accuracy_kept']:.1%}", str(m["reloads"]),
                          f"{sum(r.get('steps', 0) for r in m['recovery'])} steps"]))
    if u := results.get("unstructured"):
        print(f"\nSmolLM2-135M, 50 % unstructured and 2:4 (perplexity on {u['quality_windows']} held-out windows)")
        print("method | tool | recipe | calibration | ppl | Δppl | wall s | peak RSS MB")
        for r in u["rows"]:
            print(" | ".join([r["method"], r["tool"], r.get("recipe") or "-", r["calibration"], f"{r['ppl']:.3f}",
                              f"{r['delta']:+.1%}", str(r["wall_s"]), str(r["peak_rss_mb"])]))
    if s := results.get("smollm2-structured"):
        print("\nSmolLM2-135M, prune-structured-25 (PyTorch FP32 eager, 1x128 prefill and 16-token decode, interleaved)")
        print("variant | FLOPs × | params × | layers | MLP | prefill × | decode × | ppl (orig) | Δppl | reloads")
        for r in s["rows"]:
            print(" | ".join([r["variant"], f"{r['flops_ratio']:.3f}", f"{r['parameters_ratio']:.3f}",
                              f"{r['shape_before']['layers']}→{r['shape_after']['layers']}",
                              f"{r['shape_before']['mlp_width']}→{r['shape_after']['mlp_width']}",
                              f"{r['speed']['prefill']['speedup']:.2f}", f"{r['speed']['decode']['speedup']:.2f}",
                              f"{r['ppl']:.3f} ({r['base_ppl']:.3f})", f"{r['delta_ppl']:+.1%}", str(r["reloads"])]))
    if o := results.get("openvino-sparse"):
        print(f"\nOpenVINO INT8 sparse-weight decompression, SmolLM2 {o['shape']} (isa {o['isa_class']}, AMX {o['amx']})")
        print("weights | decompression rate | p50 ms | × vs dense")
        for r in o["rows"]:
            print(" | ".join([r["weights"], str(r["sparse_decompression_rate"]), str(r["prefill_p50_ms"]),
                              str(r["speedup_vs_dense"])]))
        if o["note"]:
            print(o["note"])
    if e := results.get("methods"):
        print(f"\nEvery method on both models ({e['short']})")
        print("model | method | outcome | wall s | sparsity | FLOPs × | params × | shape / reason")
        for r in e["rows"]:
            ran = r["outcome"] == "ran"
            print(" | ".join([r["model"], r["method"], r["outcome"], str(r.get("wall_s", "-")),
                              f"{r['sparsity']:.3f}" if ran and r["sparsity"] is not None else "-",
                              f"{r['flops_ratio']:.3f}" if ran and r["flops_ratio"] is not None else "-",
                              f"{r['parameters_ratio']:.3f}" if ran and r["parameters_ratio"] is not None else "-",
                              str(r.get("shape_after") or r.get("reason", ""))[:120]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--anchor-python", type=Path, default=ANCHOR_PYTHON)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--print", action="store_true", help="print the stored tables and exit")
    args = parser.parse_args()
    run_parts(PARTS, args, RESULTS, print_tables, "mp-bench-prune-")

if __name__ == "__main__":
    main()
