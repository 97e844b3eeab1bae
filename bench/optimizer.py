"""Inference engines against PyTorch FP32 eager on the real models, every ratio from one run.

    python bench/optimizer.py [--models minilm-l6,smollm2-135m] [--methods onnx,onnx-int8,...]

For each model the optimizer's methods write engine artifacts (ONNX Runtime, OpenVINO); then the
evaluator compares them with the PyTorch original at each shape: per-model probes (quality on
held-out text; peak RSS of the engine's runtime alone, without torch), and one process timing
all of them in interleaved rounds — the forward/prefill pass and, for causal LMs, per-token
decode through each engine's KV cache. Writes bench/results/optimizer.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from services.common import modelio
from services.common.engine_api import ProgressReporter
from services.common.registry import builtin_folder
from services.common.settings import default_cache
from services.evaluator.engine import EvaluationConfig, compare_folders
from services.optimizer.engine import METHODS

from machine_record import machine_record  # bench/, beside this script
from serving import run as run_serving  # bench/serving.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"minilm-l6": [(1, 128), (32, 128)], "smollm2-135m": [(1, 128)]}
METHODS_RUN = "onnx,onnx-int8,onnx-int4,openvino,openvino-int8,openvino-int4"
# Methods that do not apply to a kind.
SKIP = {"causal-lm": set(), "encoder": set()}
COSINE_BAR, PPL_BAR = 0.99, 0.01


def quality(figures: dict, base: dict) -> tuple[str, float, bool]:
    if figures["kind"] == "encoder":
        cosine = figures["encoder"]["mean_reference_cosine"]
        return "cosine", cosine, cosine >= COSINE_BAR
    delta = figures["perplexity"] / base["perplexity"] - 1
    return "delta_ppl", delta, delta <= PPL_BAR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="minilm-l6,smollm2-135m")
    parser.add_argument("--methods", default=METHODS_RUN)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--skip-serving", action="store_true", help="no batching / KV-cache measurements")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "optimizer.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mp-bench-opt-"))
    rows, exports, serving_sources = [], {}, {}
    for name in args.models.split(","):
        src = builtin_folder(name, default_cache())
        kind = modelio.model_kind(modelio.read_config(src))
        folders = {}
        for method_name in args.methods.split(","):
            if method_name in SKIP[kind]:
                continue
            method = METHODS[method_name]
            dst = work / f"{name}-{method_name}"
            start = time.perf_counter()
            result = method.run(method.config_cls(), src, dst, ProgressReporter())
            exports[f"{name}/{method_name}"] = {"seconds": round(time.perf_counter() - start, 1), **result.metrics}
            folders[(result.compression["engine"], result.compression["precision"])] = dst
        if kind == "encoder":
            serving_sources["encoder"] = folders.get(("onnxruntime", "int8"))
        else:
            serving_sources["causal"] = src
        for batch, length in SHAPES[name]:
            config = EvaluationConfig(batch_size=batch, sequence_length=length, latency_iterations=args.iterations,
                                      quality_windows=8, quality_sentences=200,
                                      decode_tokens=args.decode_tokens if kind == "causal-lm" else 0)
            figures, run = compare_folders([src, *folders.values()], 0, config)
            base = figures[0]
            for (engine, precision), f in zip([("pytorch", "fp32"), *folders], figures):
                metric, value, ok = quality(f, base) if engine != "pytorch" else ("-", 0.0, True)
                phases = [("prefill" if kind == "causal-lm" else "forward", "latency")]
                if "decode" in f and "decode" in base:
                    phases.append(("decode", "decode"))
                for (phase, key), speed in zip(phases, f["speed"]):
                    rows.append({"model": name, "engine": engine, "precision": precision, "phase": phase,
                                 "batch": batch, "seq": length, "size_bytes": f["size_on_disk_bytes"],
                                 "latency_p50_ms": f[key]["p50_ms"], "latency_stdev_ms": f[key]["stdev_ms"],
                                 # Median of per-round ratios, with its 95 % interval and reliability.
                                 "speedup": speed["speedup"], "speedup_ci95": [speed["ci95_low"], speed["ci95_high"]],
                                 "unreliable": speed["unreliable"],
                                 "peak_rss_mb": f["peak_rss_mb"], "memory_ratio": f["peak_rss_mb"] / base["peak_rss_mb"],
                                 "metric": metric, "value": value, "quality_ok": ok, "rounds": speed["rounds"],
                                 "load": run["load"],
                                 "serving_runtime": f.get("serving_runtime", "torch")})
    # Rows of models not run this time are kept (each model's ratios come from its own run).
    previous = json.loads(args.out.read_text()) if args.out.exists() else {"rows": [], "exports": {}}
    ran = {r["model"] for r in rows}
    rows = [r for r in previous["rows"] if r["model"] not in ran] + rows
    exports = {**{k: v for k, v in previous["exports"].items() if k.split("/")[0] not in ran}, **exports}
    header = ["model", "engine", "precision", "phase", "batch", "seq", "size MB", "p50 ms", "speedup", "RSS MB", "mem ×",
              "metric", "value", "ok"]
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([r["model"], r["engine"], r["precision"], r.get("phase", "-"), str(r["batch"]), str(r["seq"]),
                          f"{r['size_bytes'] / 1e6:.1f}", f"{r['latency_p50_ms']:.1f} ± {r['latency_stdev_ms']:.1f}",
                          f"{r['speedup']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['memory_ratio']:.2f}", r["metric"],
                          f"{r['value']:.5f}", "yes" if r["quality_ok"] else "NO"]))
    serving = {key: previous.get(key, []) for key in ("batching", "kv_cache")}
    if not args.skip_serving:
        fresh = run_serving(serving_sources.get("encoder"), serving_sources.get("causal"))
        serving.update({key: value for key, value in fresh.items() if value})
    args.out.write_text(json.dumps({"machine": machine_record(), "rows": rows, "exports": exports, **serving}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
