"""modelpress against its anchors, side by side on the same model, tokens and machine.

    python bench/anchors.py [--methods gptq,awq,autoround,kd-qat,smoothquant-w8a8,sparsegpt-50,...]
                            [--samples 16] [--anchor-python PATH]

For each method (quantization: gptq, awq, autoround, kd-qat, smoothquant-w8a8; pruning: sparsegpt-50,
wanda-50, sparsegpt-2of4, wanda-2of4) the anchors and the matching modelpress recipe run one after the
other in fresh processes, calibrated on the same token windows (the calibration split of pydoc): llm-compressor
(in its own venv, `make anchors-venv`) for each; for autoround also Intel's auto-round itself (same venv); for
kd-qat NNCF's QAT with absorbable LoRA adapters (in this venv). Every artifact is then measured by the
modelpress evaluator: perplexity on held-out pydoc windows of 512 tokens, size on disk.
Writes bench/results/anchors.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from machine_record import machine_record  # bench/ (this folder is on sys.path)
from quantization import run_method
from services.common.models import modelio
from services.common.store import packaging
from services.common.models.builtin_models import builtin_folder
from services.common.runtime.settings import default_cache
from services.evaluator.engine import EvaluationConfig, evaluate_folder
from services.common.datasets.calibration_text import calibration_batches, calibration_text
from services.common.contract.recipes import KD_QAT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHOR_PYTHON = ROOT / ".venv-anchors" / "bin" / "python"
# llm-compressor's method -> the modelpress service, method and config it is compared with, and
# the built-in recipe that is that config.
OURS = {
    "gptq": ("quantizer", "gptq", {"bits": 4, "group_size": 64}, "w4a16-gptq"),
    "awq": ("quantizer", "awq", {"bits": 4, "group_size": 64}, "w4a16-awq"),
    "autoround": ("quantizer", "autoround", {"bits": 4, "group_size": 64}, "w4a16-autoround"),
    "kd-qat": ("quantizer", "qat", {"bits": 4, "group_size": 64, **KD_QAT}, "w4a16-kd-qat"),
    "smoothquant-w8a8": ("quantizer", "smoothquant", {"activations": "dynamic"}, "w8a8-smoothquant"),
    "sparsegpt-50": ("pruner", "sparsegpt", {"sparsity": 0.5}, "prune-sparsegpt-50"),
    "wanda-50": ("pruner", "wanda", {"sparsity": 0.5}, "prune-wanda-50"),
    "sparsegpt-2of4": ("pruner", "sparsegpt", {"structure": "2:4"}, "prune-2of4"),
    "wanda-2of4": ("pruner", "wanda", {"structure": "2:4"}, "prune-2of4 with method wanda"),
}

# Methods whose anchors are not llm-compressor alone: learned rounding also by Intel's auto-round itself;
# distillation QAT by NNCF's QAT with absorbable LoRA (in this venv: NNCF is a modelpress dependency).
TOOLS = {"autoround": ("modelpress", "llm-compressor", "auto-round"), "kd-qat": ("modelpress", "nncf")}
ANCHOR_SCRIPTS = {"auto-round": "autoround_once.py", "nncf": "nncf_qat_once.py"}


def run_anchor(python: Path, tool: str, method: str, src: Path, windows: Path, dst: Path) -> dict:
    command = ([str(HERE / "anchors" / ANCHOR_SCRIPTS[tool])] if tool in ANCHOR_SCRIPTS else
               [str(HERE / "anchors" / "llmcompressor_once.py"), method])
    python = Path(sys.executable) if tool == "nncf" else python
    run = subprocess.run([str(python), *command, str(src), str(windows), str(dst)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{tool} {method} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def side_by_side(methods: list[str], samples: int, sequence_length: int, quality_windows: int, anchor_python: Path,
                 work: Path, tools: set[str] | None = None) -> list[dict]:
    """Each method by both tools on the same calibration windows, measured on the same held-out
    windows; a row per (method, tool), saved into anchors.json as it is measured."""
    src = builtin_folder("smollm2-135m", default_cache())
    windows = calibration_batches(modelio.load_tokenizer(src), samples, sequence_length, calibration_text())
    windows_path = work / f"windows-{samples}x{sequence_length}.safetensors"
    save_file({"input_ids": windows.contiguous()}, str(windows_path))
    evaluation = EvaluationConfig(latency_iterations=3, quality_windows=quality_windows)
    base = evaluate_folder(src, evaluation)["perplexity"]
    rows = []
    for method in methods:
        for tool in [t for t in TOOLS.get(method, ("llm-compressor", "modelpress")) if tools is None or t in tools]:
            out = work / f"{tool}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            service, ours, config, recipe = OURS[method]
            if tool != "modelpress":
                run = run_anchor(anchor_python, tool, method, src, windows_path, out)
            else:
                run = run_method(service, ours, {**config, "calibration_samples": samples,
                                                 "calibration_sequence_length": sequence_length}, src, out)
            ppl = evaluate_folder(out, evaluation)["perplexity"]
            rows.append({"method": method, "tool": tool, "calibration": f"{samples}x{sequence_length}",
                         "recipe": recipe if tool == "modelpress" else "", "ppl": round(ppl, 4),
                         "base_ppl": round(base, 4), "delta": round((ppl - base) / base, 4),
                         "size_bytes": packaging.folder_size_bytes(out), "wall_s": round(run["wall_s"], 1),
                         "peak_rss_mb": round(run["peak_rss_mb"]),
                         # NNCF's INT4 form is OpenVINO's; what it leaves for transformers is float.
                         **({"stored": "float, weights on the INT4 grid"} if tool == "nncf" else {})})
            print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
            save(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", default="gptq,awq,smoothquant-w8a8")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=512)
    parser.add_argument("--quality-windows", type=int, default=16)
    parser.add_argument("--anchor-python", type=Path, default=ANCHOR_PYTHON)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--tools", default="", help="comma-separated: run only these tools' rows (the others' stay)")
    args = parser.parse_args()
    check_anchor_python(args.anchor_python)
    work = args.work or Path(tempfile.mkdtemp(prefix="mp-anchors-"))
    work.mkdir(parents=True, exist_ok=True)
    side_by_side(args.methods.split(","), args.samples, args.sequence_length, args.quality_windows,
                 args.anchor_python, work, set(args.tools.split(",")) if args.tools else None)


def check_anchor_python(python: Path) -> None:
    if not python.exists():
        raise SystemExit(f"{python} not found: run `make anchors-venv` first")


def save(rows: list[dict]) -> None:
    """Merges into the existing table: a (method, tool, calibration) measured again replaces its row.
    Each row carries the machine it was measured on (rows from earlier runs keep theirs)."""
    results = HERE / "results" / "anchors.json"
    previous = json.loads(results.read_text()) if results.exists() else {"rows": []}
    earlier = previous.get("machine", {})
    kept = [r if "machine" in r else {**r, "machine": earlier} for r in previous["rows"]]
    machine = machine_record()
    fresh = {(r["method"], r["tool"], r["calibration"]) for r in rows}
    merged = [r for r in kept if (r["method"], r["tool"], r["calibration"]) not in fresh] + \
             [{**r, "machine": {k: machine[k] for k in ("cpu_model", "isa_class", "threads", "recorded_at")}}
              for r in rows]
    results.write_text(json.dumps({"machine": machine, "python": sys.version.split()[0], "rows": merged}, indent=2))


if __name__ == "__main__":
    main()
