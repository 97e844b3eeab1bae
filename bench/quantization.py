"""Every quantizer recipe on the built-in models: size on disk, quality, wall time, peak RSS.

    python bench/quantization.py [--models smollm2-135m,minilm-l6,mpnet-base] [--recipes w4a16-gptq,...]
                                 [--quality-windows 16] [--work DIR] [--set FIELD=VALUE ...]

Writes bench/results/quantization.json and prints the table. Quality is perplexity on
held-out pydoc text (512-token windows) for SmolLM2 and mean cosine of sentence
embeddings to the FP32 model on held-out pydoc sentences for the encoders (MiniLM, MPNet). Each quantization
runs in a fresh process so its wall time and peak RSS are its own; latency is the
evaluator's p50 of a 1×128 forward pass, measured in the same run as the FP32 baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from machine_record import machine_record  # bench/ (this folder is on sys.path)
from services.common.models import modelio
from services.common.models.stored_bits import stored_bits_per_weight
from services.common.store import packaging
from services.common.models.builtin_models import builtin_folder, get_builtin
from services.common.runtime.settings import default_cache
from services.evaluator import quality
from services.evaluator.engine import EvaluationConfig, compare_folders, evaluate_folder
from services.common.contract.recipes import RECIPES

RESULTS = Path(__file__).resolve().parent / "results"
HERE = Path(__file__).resolve().parent
DEFAULT_RECIPES = {
    "smollm2-135m": ["fp16", "bf16", "int8-weight-only", "w8a8-dynamic", "w8a8-static", "w8a8-smoothquant",
                     "w4a16-rtn", "w4a16-gptq", "w4a16-gptq@128", "w4a16-awq", "w4a16-awq@128", "w4a16-qat",
                     "w4a16-autoround", "w4a16-kd-qat", "w4a16-kd-qat+compact4", "w4a16-mixed"],
    "minilm-l6": ["int8-weight-only", "w8a8-dynamic", "w8a8-smoothquant", "w4a16-rtn", "w4a16-gptq", "w4a16-awq",
                  "w4a16-qat", "w4a16-mixed"],
    "mpnet-base": ["fp16", "int8-weight-only", "w8a8-dynamic", "w4a16-rtn", "w4a16-gptq"],
}
CALIBRATED = ("gptq", "awq", "qat", "autoround", "mixed-precision", "w8a8", "smoothquant")
# Recipe variants: "name@N" runs the recipe with N calibration windows; "name+compact" with INT8
# embeddings and head (the smaller layout transformers loads and vLLM does not); "name+compact4" with
# them at 4 bits in the body's groups (the head rounded on its inputs by the calibrated methods).
COMPACT = {"embedding_bits": 8, "head_bits": 8}
COMPACT4 = {"embedding_bits": 4, "head_bits": 4}
# Sentence encoders see short inputs: many short windows calibrate them best (measured:
# MiniLM INT4 cosine 0.972 with 16 x 128 tokens, 0.981 with 256 x 128).
ENCODER_CALIBRATION = {"calibration_sequence_length": 128, "calibration_samples": 256}


def stage_of(recipe: str, model: str) -> tuple[str, dict]:
    name, _, samples = recipe.partition("@")
    name, compact, width = name.partition("+compact")
    (stage,) = RECIPES[name].stages
    config = {**stage.config, **({"4": COMPACT4, "": COMPACT}[width] if compact else {})}
    if stage.method in CALIBRATED:
        if get_builtin(model).kind == "encoder":
            config.update(ENCODER_CALIBRATION)
        if samples:
            config["calibration_samples"] = int(samples)
    return stage.method, config


def run_method(service: str, method: str, config: dict, src: Path, dst: Path) -> dict:
    """One engine method in a fresh process (its wall time and peak RSS are its own)."""
    run = subprocess.run([sys.executable, str(HERE / "method_once.py"), service, method, json.dumps(config),
                          str(src), str(dst)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{method} failed: {run.stderr.strip().splitlines()[-1]}")
    # Its figures are the last line: an engine's libraries (OpenVINO, NNCF) may print before it.
    return json.loads(run.stdout.strip().splitlines()[-1])


def quantize(method: str, config: dict, src: Path, dst: Path) -> dict:
    return run_method("quantizer", method, config, src, dst)


def bits_of(recipe: str, config: dict) -> tuple[int, int]:
    if recipe in ("fp16", "bf16"):
        return 16, 0
    if recipe.startswith("w8a8"):
        return 8, 0
    return int(config.get("bits", 8)), int(config.get("group_size", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="smollm2-135m,minilm-l6,mpnet-base")
    parser.add_argument("--recipes", default="", help="comma-separated; default: every recipe for the model")
    parser.add_argument("--quality-windows", type=int, default=16)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--work", type=Path, default=None, help="keep artifacts here (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of every recipe run (a JSON value); the row's recipe names it")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    suffix = "".join(f"[{item}]" for item in args.set)
    work = args.work or Path(tempfile.mkdtemp(prefix="mp-bench-quant-"))
    cache = default_cache()
    rows = []
    eval_config = EvaluationConfig(latency_iterations=5, quality_windows=args.quality_windows, decode_tokens=0)
    for model in args.models.split(","):
        src = builtin_folder(model, cache)
        fp16_dir = work / model / "fp16-reference"
        if not fp16_dir.exists():
            quantize("fp16", {}, src, fp16_dir)
        fp16_size = packaging.folder_size_bytes(fp16_dir)
        fp32_size = packaging.folder_size_bytes(src)
        encoder = modelio.model_kind(modelio.read_config(src)) == "encoder"
        base = evaluate_folder(src, eval_config if not encoder else eval_config.model_copy(update={"quality_windows": 0}))
        if encoder:
            tokenizer = modelio.load_tokenizer(src)
            sentences = quality.heldout_sentences(args.sentences)
            reference = quality.sentence_embeddings(modelio.load_model(src), tokenizer, sentences)
        recipes = args.recipes.split(",") if args.recipes else DEFAULT_RECIPES[model]
        for named in recipes:
            method, config = stage_of(named, model)
            config.update(overrides)
            recipe = named + suffix
            out = work / model / recipe
            shutil.rmtree(out, ignore_errors=True)
            run = quantize(method, config, src, out)
            # Latency of the FP32 model and this one in one process, interleaved (never two probes).
            both, _ = compare_folders([src, out], 0, eval_config if not encoder else eval_config.model_copy(
                update={"quality_windows": 0}))
            figures, speed = both[1], both[1]["speed"][0]
            if encoder:
                got = quality.sentence_embeddings(modelio.load_model(out), tokenizer, sentences)
                value, base_value, metric = float((got * reference).sum(-1).mean()), 1.0, "cosine"
            else:
                value, base_value, metric = figures["perplexity"], base["perplexity"], "ppl"
            bits, group = bits_of(named, config)
            size = packaging.folder_size_bytes(out)
            rows.append({
                "model": model, "recipe": recipe, "bits": bits, "group_size": group,
                "effective_bits": round(run["metrics"].get("linear_effective_bits", bits), 3),
                # Every bit stored over every weight (embedding, head, norms and scales included).
                "stored_bits_per_weight": round(stored_bits_per_weight(out), 3),
                "size_bytes": size, "fp16_size_bytes": fp16_size, "fp32_size_bytes": fp32_size,
                "size_vs_fp16": round(size / fp16_size, 4), "size_vs_fp32": round(size / fp32_size, 4),
                "metric": metric, "value": round(value, 5), "base_value": round(base_value, 5),
                "delta": round((value - base_value) / base_value, 5),
                "wall_s": round(run["wall_s"], 1), "peak_rss_mb": round(run["peak_rss_mb"]),
                "layout": run["compression"].get("layout", ""),
                "latency_p50_ms": round(figures["latency"]["p50_ms"], 1),
                "fp32_latency_p50_ms": round(both[0]["latency"]["p50_ms"], 1),
                "speedup": round(speed["speedup"], 3), "speedup_ci95": [round(speed["ci95_low"], 3),
                                                                        round(speed["ci95_high"], 3)],
                "speedup_unreliable": speed["unreliable"],
                "group_fallbacks": len(run["compression"].get("group_fallbacks", {}) or {}),
                "artifact_dir": str(out),
            })
            print_row(rows[-1], header=len(rows) == 1)
            save(rows)
    save(rows)


def save(rows: list[dict]) -> None:
    """Merges into the existing table: a (model, recipe) measured again replaces its old row."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "quantization.json"
    previous = json.loads(path.read_text())["rows"] if path.exists() else []
    fresh = {(r["model"], r["recipe"]) for r in rows}
    machine = machine_record()
    # Each row keeps the machine of its own run: older rows without one take the file's, before it is replaced.
    earlier_machine = json.loads(path.read_text()).get("machine") if path.exists() else None
    kept = [r if "machine" in r or earlier_machine is None else {**r, "machine": earlier_machine}
            for r in previous if (r["model"], r["recipe"]) not in fresh]
    merged = kept + [{**r, "machine": r.get("machine") or machine} for r in rows]
    path.write_text(json.dumps({"machine": machine, "threads": torch.get_num_threads(), "rows": merged}, indent=2))


def print_row(row: dict, header: bool) -> None:
    columns = ["model", "recipe", "layout", "effective_bits", "stored_bits_per_weight", "size_vs_fp16", "size_vs_fp32",
               "metric", "value", "base_value", "delta", "wall_s", "peak_rss_mb", "latency_p50_ms", "fp32_latency_p50_ms",
               "speedup"]
    if header:
        print(" | ".join(columns))
    print(" | ".join(str(row[c]) for c in columns), flush=True)


if __name__ == "__main__":
    main()
