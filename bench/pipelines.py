"""Composite recipes (a float transform on the quantizer, then an engine's own quantizer) against
that engine's quantizer alone, on the same model and held-out text.

    python bench/pipelines.py [--model smollm2-135m] [--pairs awq-onnx-int4,...] [--iterations 10]

Each pipeline runs in this process through `modelpress.compress` (the stages the mesh would
dispatch, validated the same way); then the evaluator measures the original and every output
in one comparison: perplexity and top-1 on the held-out windows (never the calibration split),
size, peak RSS, and prefill and decode latency in interleaved rounds. Writes
bench/results/pipelines.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import modelpress
from services.common.contract.recipes import RECIPES
from services.common.models.builtin_models import builtin_folder
from services.common.runtime.settings import default_cache
from services.evaluator.engine import EvaluationConfig, compare_folders

from machine_record import machine_record  # bench/, beside this script

ROOT = Path(__file__).resolve().parent.parent
# composite recipe -> the engine's quantizer alone, as the composite's last stage runs it
# (plus, for OpenVINO, NNCF's own data-aware INT4: the built-in openvino-int4 recipe).
BASELINES = {
    "awq-onnx-int4": ["onnx-int4"],
    "awq-gguf-q4": ["gguf-q4"],
    "awq-openvino-int4": ["openvino-int4@data-free", "openvino-int4"],
    "smoothquant-onnx-int8": ["onnx-int8@dynamic-int8", "onnx-int8"],
}


def alone(name: str) -> dict:
    """A baseline's pipeline: a built-in recipe, or (NAME@variant) the composite's last stage alone,
    config included."""
    if "@" not in name:
        return RECIPES[name].data()
    composite = next(c for c, bases in BASELINES.items() if name in bases)
    return {"name": name, "stages": [{**RECIPES[composite].stages[-1].data(), "name": "export"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", default=",".join(BASELINES))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipelines.json")
    args = parser.parse_args()
    machine = machine_record()
    src = builtin_folder(args.model, default_cache())
    work = Path(tempfile.mkdtemp(prefix="mp-bench-pipelines-"))
    runs: dict[str, dict] = {}
    folders: dict[str, Path] = {}
    for composite in args.pairs.split(","):
        for name in [composite, *BASELINES[composite]]:
            if name in folders:
                continue
            start = time.perf_counter()
            run = modelpress.compress(src, name if name in RECIPES else alone(name), work / name.replace("@", "-"))
            runs[name] = {"seconds": round(time.perf_counter() - start, 1),
                          "stages": [{"name": s.name, "method": s.method, "config": s.config, "seconds": s.seconds,
                                      "metrics": s.result.metrics} for s in run.stages]}
            folders[name] = run.output
            print(f"{name}: {runs[name]['seconds']} s", flush=True)
    config = EvaluationConfig(batch_size=1, sequence_length=128, latency_iterations=args.iterations,
                              quality_windows=8, decode_tokens=args.decode_tokens)
    figures, timing = compare_folders([src, *folders.values()], 0, config)
    base = figures[0]
    rows = []
    for name, f in zip(["fp32", *folders], figures):
        speed = {s_phase: s for s_phase, s in zip(("prefill", "decode"), f["speed"])}
        rows.append({
            "model": args.model, "pipeline": name,
            "composite_of": next((c for c, bases in BASELINES.items() if name in bases), None),
            "stages": runs.get(name, {}).get("stages", []), "seconds": runs.get(name, {}).get("seconds"),
            "size_bytes": f["size_on_disk_bytes"], "size_ratio": f["size_on_disk_bytes"] / base["size_on_disk_bytes"],
            "perplexity": f["perplexity"], "delta_ppl": f["perplexity"] / base["perplexity"] - 1,
            "top1": f.get("top1_accuracy"), "peak_rss_mb": f["peak_rss_mb"],
            "memory_ratio": f["peak_rss_mb"] / base["peak_rss_mb"],
            "prefill_speedup": speed["prefill"]["speedup"] if "prefill" in speed else None,
            "prefill_ci95": [speed["prefill"]["ci95_low"], speed["prefill"]["ci95_high"]] if "prefill" in speed else None,
            "decode_speedup": speed["decode"]["speedup"] if "decode" in speed else None,
            "serving_runtime": f.get("serving_runtime", "torch"),
        })
    result = {"machine": machine, "load": timing["load"], "rounds": timing["rounds"],
              "evaluation": {"batch": 1, "seq": 128, "quality_windows": 8, "decode_tokens": args.decode_tokens},
              "rows": rows}
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"machine: {machine['cpu_model']} ({machine['isa_class']}); load {timing['load']}")
    print(" | ".join(["pipeline", "vs", "size MB", "ppl", "Δppl", "top-1", "prefill ×", "decode ×", "mem ×", "runtime"]))
    for r in rows:
        print(" | ".join([r["pipeline"], r["composite_of"] or "-", f"{r['size_bytes'] / 1e6:.1f}",
                          f"{r['perplexity']:.3f}", f"{r['delta_ppl']:+.2%}", f"{r['top1'] or 0:.3f}",
                          f"{r['prefill_speedup'] or 0:.2f}", f"{r['decode_speedup'] or 0:.2f}",
                          f"{r['memory_ratio']:.2f}", r["serving_runtime"]]))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
