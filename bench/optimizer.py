"""Inference engines against PyTorch FP32 eager on the real models, every ratio from one run.

    python bench/optimizer.py [--models minilm-l6,smollm2-135m] [--recipes onnx,openvino-bf16,...]

For each model the recipes write engine artifacts (ONNX Runtime, OpenVINO in fp32, bf16 and f16
compute, the PyTorch bf16 cast); then the
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

from services.common.models import modelio
from services.common.contract.engine_api import ProgressReporter
from services.common.models.builtin_models import builtin_folder
from services.common.runtime.settings import default_cache
from services.evaluator.engine import EvaluationConfig, compare_folders
from modelpress.v1 import common_pb2
from services.common.contract.recipes import RECIPES
from services.optimizer.engine import METHODS as OPTIMIZER_METHODS
from services.quantizer.engine import METHODS as QUANTIZER_METHODS

from machine_record import machine_record  # bench/, beside this script
from serving import run as run_serving  # bench/serving.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"minilm-l6": [(1, 128), (32, 128)], "smollm2-135m": [(1, 128)]}
# Recipes, as a client names them; each is one stage (optimizer, or the quantizer's cast for the
# PyTorch bf16 baseline).
RECIPES_RUN = ("onnx,onnx-int8,onnx-int4,openvino,openvino-int8,openvino-int4,openvino-bf16,openvino-int8-bf16,"
               "openvino-f16,bf16")
COSINE_BAR, PPL_BAR = 0.99, 0.01
TECHNIQUE_METHODS = {common_pb2.TECHNIQUE_OPTIMIZER: OPTIMIZER_METHODS, common_pb2.TECHNIQUE_QUANTIZER: QUANTIZER_METHODS}


def quality(figures: dict, base: dict) -> tuple[str, float, bool]:
    if figures["kind"] == "encoder":
        cosine = figures["encoder"]["mean_reference_cosine"]
        return "cosine", cosine, cosine >= COSINE_BAR
    delta = figures["perplexity"] / base["perplexity"] - 1
    return "delta_ppl", delta, delta <= PPL_BAR


def run_recipe(name: str, src: Path, dst: Path):
    """The recipe's one stage, run in this process as its service would run it."""
    (stage,) = RECIPES[name].stages
    method = TECHNIQUE_METHODS[stage.technique][stage.method]
    return method.run(method.config_cls(**stage.config), src, dst, ProgressReporter())


def engine_precision(result) -> tuple[str, str]:
    if "engine" in result.compression:
        return result.compression["engine"], result.compression["precision"]
    return "pytorch", {"bfloat16": "bf16", "float16": "f16"}[result.compression["dtype"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="minilm-l6,smollm2-135m")
    parser.add_argument("--recipes", default=RECIPES_RUN)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--skip-serving", action="store_true", help="no batching / KV-cache measurements")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "optimizer.json")
    args = parser.parse_args()
    machine = machine_record()
    work = Path(tempfile.mkdtemp(prefix="mp-bench-opt-"))
    rows, exports, serving_sources = [], {}, {}
    for name in args.models.split(","):
        src = builtin_folder(name, default_cache())
        kind = modelio.model_kind(modelio.read_config(src))
        folders = {}
        for recipe in args.recipes.split(","):
            dst = work / f"{name}-{recipe}"
            start = time.perf_counter()
            result = run_recipe(recipe, src, dst)
            exports[f"{name}/{recipe}"] = {"seconds": round(time.perf_counter() - start, 1), "notes": result.notes,
                                           **result.metrics}
            folders[(recipe, *engine_precision(result))] = dst
        if kind == "encoder":
            serving_sources["encoder"] = next((f for (r, *_), f in folders.items() if r == "onnx-int8"), None)
        else:
            serving_sources["causal"] = src
        for batch, length in SHAPES[name]:
            config = EvaluationConfig(batch_size=batch, sequence_length=length, latency_iterations=args.iterations,
                                      quality_windows=8, quality_sentences=200,
                                      decode_tokens=args.decode_tokens if kind == "causal-lm" else 0)
            figures, run = compare_folders([src, *folders.values()], 0, config)
            base = figures[0]
            for (recipe, engine, precision), f in zip([("-", "pytorch", "fp32"), *folders], figures):
                metric, value, ok = quality(f, base) if recipe != "-" else ("-", 0.0, True)
                phases = [("prefill" if kind == "causal-lm" else "forward", "latency")]
                if "decode" in f and "decode" in base:
                    phases.append(("decode", "decode"))
                for (phase, key), speed in zip(phases, f["speed"]):
                    rows.append({"model": name, "recipe": recipe, "engine": engine, "precision": precision,
                                 "phase": phase, "batch": batch, "seq": length, "size_bytes": f["size_on_disk_bytes"],
                                 "latency_p50_ms": f[key]["p50_ms"], "latency_stdev_ms": f[key]["stdev_ms"],
                                 # Median of per-round ratios, with its 95 % interval and reliability.
                                 "speedup": speed["speedup"], "speedup_ci95": [speed["ci95_low"], speed["ci95_high"]],
                                 "unreliable": speed["unreliable"],
                                 "peak_rss_mb": f["peak_rss_mb"], "memory_ratio": f["peak_rss_mb"] / base["peak_rss_mb"],
                                 "metric": metric, "value": value, "quality_ok": ok, "rounds": speed["rounds"],
                                 # Encoders: topic k-NN accuracy on held-out sentences, against FP32's.
                                 "knn_ratio": (f["encoder"]["knn_topic_accuracy"] / base["encoder"]["knn_topic_accuracy"]
                                               if kind == "encoder" else None),
                                 "load": run["load"], "isa_class": machine["isa_class"],
                                 "cpu_model": machine["cpu_model"],
                                 "serving_runtime": f.get("serving_runtime", "torch")})
    # Rows of models not run this time are kept (each model's ratios come from its own run).
    # and so are rows of other machines: each row names its ISA class and CPU.
    previous = json.loads(args.out.read_text()) if args.out.exists() else {"rows": [], "exports": {}}
    ran = {(r["model"], r["isa_class"]) for r in rows}
    rows = [r for r in previous["rows"] if (r["model"], r["isa_class"]) not in ran] + rows
    exports = {**{k: v for k, v in previous["exports"].items()
                  if (k.split("/")[0], machine["isa_class"]) not in ran}, **exports}
    machines = {**previous.get("machines", {}), machine["isa_class"]: machine}
    header = ["isa", "model", "engine", "precision", "phase", "batch", "seq", "size MB", "p50 ms", "speedup", "RSS MB", "mem ×",
              "metric", "value", "ok"]
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([r["isa_class"], r["model"], r["engine"], r["precision"], r.get("phase", "-"), str(r["batch"]), str(r["seq"]),
                          f"{r['size_bytes'] / 1e6:.1f}", f"{r['latency_p50_ms']:.1f} ± {r['latency_stdev_ms']:.1f}",
                          f"{r['speedup']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['memory_ratio']:.2f}", r["metric"],
                          f"{r['value']:.5f}", "yes" if r["quality_ok"] else "NO"]))
    serving = {key: previous.get(key, []) for key in ("batching", "kv_cache")}
    if not args.skip_serving:
        fresh = run_serving(serving_sources.get("encoder"), serving_sources.get("causal"))
        serving.update({key: value for key, value in fresh.items() if value})
    args.out.write_text(json.dumps({"machines": machines, "rows": rows, "exports": exports, **serving}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
