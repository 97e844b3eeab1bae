"""An INT4 checkpoint in an engine: quality before and after export, decode and prefill speed, memory.

    python bench/int4_engine.py [--recipe w4a16-gptq+compact4] [--artifact DIR] [--accuracy-level 4]
                                [--work DIR]

Quantizes SmolLM2-135M with the recipe (bench/quantization.py's names and variants) or takes an
existing compressed-tensors `--artifact`, exports it with `onnx-int4` (which keeps the checkpoint's
codes, services/optimizer/nbits_codes.py), then measures the FP32 model, the checkpoint in
transformers and the ONNX graph in one comparison: held-out perplexity of each (so an export that
loses what the calibration won shows), and prefill and per-token decode latency interleaved against
PyTorch FP32 eager on this machine, peak RSS of each runtime. Writes bench/results/int4_engine.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from machine_record import machine_record  # bench/ (this folder is on sys.path)
from quantization import quantize, run_method, stage_of

from services.common.models.builtin_models import builtin_folder
from services.common.models.stored_bits import stored_bits_per_weight
from services.common.runtime.settings import default_cache
from services.common.store import packaging
from services.evaluator.engine import EvaluationConfig, compare_folders

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--recipe", default="w4a16-gptq+compact4")
    parser.add_argument("--artifact", type=Path, default=None, help="a compressed-tensors INT4 checkpoint to export")
    parser.add_argument("--accuracy-level", type=int, default=4)
    parser.add_argument("--quality-windows", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mp-bench-int4-"))
    src = builtin_folder(args.model, default_cache())
    checkpoint = args.artifact
    quantized = None
    if checkpoint is None:
        method, config = stage_of(args.recipe, args.model)
        checkpoint = work / args.recipe
        shutil.rmtree(checkpoint, ignore_errors=True)
        quantized = quantize(method, config, src, checkpoint)
    onnx_dir = work / f"{checkpoint.name}-onnx-int4"
    shutil.rmtree(onnx_dir, ignore_errors=True)
    exported = run_method("optimizer", "onnx-int4", {"accuracy_level": args.accuracy_level}, checkpoint, onnx_dir)
    config = EvaluationConfig(quality_windows=args.quality_windows, decode_tokens=16, latency_iterations=10)
    figures, _ = compare_folders([src, checkpoint, onnx_dir], 0, config)
    base = figures[0]["perplexity"]
    rows = []
    for name, folder, f in zip(("pytorch-fp32", "compressed-tensors (transformers)", "onnx-int4 (the codes)"),
                               (src, checkpoint, onnx_dir), figures):
        speed = {phase: s for phase, s in zip(("prefill", "decode"), f["speed"])}
        rows.append({
            "model": name, "folder": str(folder), "perplexity": round(f["perplexity"], 4),
            "delta": round(f["perplexity"] / base - 1, 5),
            **{f"{phase}_speedup": round(s["speedup"], 3) for phase, s in speed.items()},
            **{f"{phase}_ci95": [round(s["ci95_low"], 3), round(s["ci95_high"], 3)] for phase, s in speed.items()},
            "peak_rss_mb": round(f["peak_rss_mb"]), "memory_ratio": round(f["peak_rss_mb"] / figures[0]["peak_rss_mb"], 3),
            "size_bytes": packaging.folder_size_bytes(folder), "serving_runtime": f.get("serving_runtime", "torch"),
        })
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int4_engine.json").write_text(json.dumps({
        "machine": machine_record(), "threads": torch.get_num_threads(), "model": args.model,
        "recipe": None if args.artifact else args.recipe, "accuracy_level": args.accuracy_level,
        "stored_bits_per_weight": round(stored_bits_per_weight(checkpoint), 3),
        "quantize": {k: quantized[k] for k in ("wall_s", "peak_rss_mb")} if quantized else None,
        "export": {k: exported.get(k) for k in ("wall_s", "peak_rss_mb", "metrics")}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
