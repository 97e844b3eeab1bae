"""Real sizes: GPTQ and AWQ on random-weight models of real checkpoints' shapes, read in their own
dtype (bf16), with wall time per billion parameters and peak RSS against the checkpoint, the
largest block and the calibration hidden states.

    python bench/scale.py [--shapes qwen2.5-0.5b,tinyllama-1.1b,llama3-8b-4] [--methods gptq,awq]

Each run is a fresh process (bench/method_once.py) whose RSS is sampled every 20 ms, so the peak
during the block walk is told apart from the peak of the whole call. The bound the issue sets:
peak RSS during calibration ≤ 1.5 × (largest block in FP32 + calibration hidden states), above
the process's resident size before the call. The 8 B shape is cut to its first blocks (its
memory per block is the claim; its depth only multiplies time). Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Shapes of public checkpoints (their config.json), as transformers names the dimensions.
SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "max_position_embeddings": 32768},
    "tinyllama-1.1b": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
                       "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
                       "vocab_size": 32000, "tie_word_embeddings": False, "max_position_embeddings": 2048},
    # Llama-3-8B's shape cut to 4 of its 32 blocks: one block is what calibration holds.
    "llama3-8b-4": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 4,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                    "tie_word_embeddings": False, "max_position_embeddings": 8192, "rope_theta": 500000.0},
}
# Qwen2.5-0.5B's shape cut to 6 blocks: a quick look at where memory goes (not in scale.json's table).
SHAPES["qwen2.5-0.5b-6"] = {**SHAPES["qwen2.5-0.5b"], "num_hidden_layers": 6}
METHODS = {"gptq": {"bits": 4, "group_size": 64}, "awq": {"bits": 4, "group_size": 64}}
RESULTS = ROOT / "bench" / "results" / "scale.json"


def build(shape: str, folder: Path) -> Path:
    """A random-weight bf16 checkpoint of `shape`, sharded by block, with MiniLM's WordPiece tokenizer
    (its 30,522 ids are within every shape's vocabulary). Built in a loop over the skeleton's parameters, so
    building holds one shard, not the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from services.common.models.builtin_models import builtin_folder
    from services.common.models.safetensors_writer import write_safetensors
    from services.common.models.tokenizer_files import copy_tokenizer
    from services.common.runtime.settings import default_cache

    if (folder / "model.safetensors.index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    values = dict(SHAPES[shape])
    config = AutoConfig.for_model(values.pop("model_type"), **values, bos_token_id=1, eos_token_id=2)
    config.dtype = "bfloat16"
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(0)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=True):
        parts = name.split(".")
        shard = f"block-{int(parts[2]):03d}" if parts[:2] == ["model", "layers"] else "rest"
        if name.endswith("norm.weight"):
            tensor = torch.ones(param.shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(param.shape, generator=generator) * 0.02).to(torch.bfloat16)
        shards.setdefault(shard, {})[name] = tensor
    weight_map = {}
    for shard, tensors in shards.items():
        file = f"model-{shard}.safetensors"
        write_safetensors(folder / file, tensors, {"format": "pt"})
        weight_map.update({k: file for k in tensors})
    total = sum(t.numel() * t.element_size() for s in shards.values() for t in s.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(folder)
    copy_tokenizer(builtin_folder("minilm-l6", default_cache()), folder)
    return folder


def sizes(folder: Path, samples: int, sequence: int) -> dict:
    """The checkpoint's parameters and bytes, its largest block in FP32 and the calibration hidden
    states (inputs and outputs of a block, FP32)."""
    config = json.loads((folder / "config.json").read_text())
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    from safetensors import safe_open

    per_file: dict[str, int] = {}
    params = 0
    for file in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / file), "pt") as f:
            count = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        per_file[file] = count
        params += count
    block = max(count for file, count in per_file.items() if "block" in file)
    hidden = samples * sequence * config["hidden_size"] * 4
    widest_input = max(config["hidden_size"], config["intermediate_size"])
    return {"hessian_mb": round(widest_input ** 2 * 4 / 2**20, 1),"parameters": params, "checkpoint_mb": round(index["metadata"]["total_size"] / 2**20),
            "checkpoint_dtype": "bfloat16", "largest_block_fp32_mb": round(block * 4 / 2**20, 1),
            "hidden_states_mb": round(2 * hidden / 2**20, 1)}


def run(method: str, src: Path, dst: Path, samples: int, sequence: int) -> dict:
    config = {**METHODS[method], "calibration_samples": samples, "calibration_sequence_length": sequence}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELPRESS_RSS_SAMPLE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "method_once.py"), "quantizer", method,
                           json.dumps(config), str(src), str(dst)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} on {src.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write(rows: dict) -> None:
    """scale.json with every run so far (a run of one shape keeps the others' rows)."""
    from services.common.measure.machine import describe_machine

    document = {
        "what": "GPTQ / AWQ (4 bit, group 64) on random-weight bf16 checkpoints of real shapes, each in a fresh "
                "process (bench/scale.py). walk_growth_mb: peak RSS while the blocks are walked minus RSS "
                "before the call; bound_mb: 1.5 x (largest block in FP32 + a block's input and output "
                "hidden states in FP32); hessian_mb: the widest Linear's input Hessian (GPTQ keeps one per "
                "input width, in FP32); load_average_1m: the machine's load when the run ended (shared machine)",
        "machine": describe_machine().as_dict(),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": sorted(rows.values(), key=lambda r: (list(SHAPES).index(r["shape"]) if r["shape"] in SHAPES else 99,
                                                     r["method"])),
    }
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--methods", default="gptq,awq")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--sequence", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "modelpress-scale")
    args = parser.parse_args()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    rows = {(r["shape"], r["method"]): r for r in previous.get("runs", [])}
    for shape in args.shapes.split(","):
        src = build(shape, args.work / shape)
        figures = sizes(src, args.samples, args.sequence)
        for method in args.methods.split(","):
            out = args.work / f"{shape}-{method}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            measured = run(method, src, out, args.samples, args.sequence)
            bound = 1.5 * (figures["largest_block_fp32_mb"] + figures["hidden_states_mb"])
            walk = measured["walk_peak_rss_mb"] - measured["rss_before_mb"]
            row = {"shape": shape, "method": method, **figures,
                   "calibration": f"{args.samples} x {args.sequence}",
                   "wall_s": round(measured["wall_s"], 1),
                   "wall_s_per_billion": round(measured["wall_s"] / (figures["parameters"] / 1e9), 1),
                   "rss_before_mb": round(measured["rss_before_mb"]),
                   "walk_peak_rss_mb": round(measured["walk_peak_rss_mb"]),
                   "walk_rss_by_block_mb": measured["walk_rss_by_block_mb"],
                   "rss_by_phase_mb": measured.get("rss_by_phase_mb", {}),
                   "peak_rss_mb": round(measured["peak_rss_mb"]),
                   "walk_growth_mb": round(walk), "bound_mb": round(bound),
                   "within_bound": walk <= bound,
                   "peak_over_checkpoint": round(measured["peak_rss_mb"] / figures["checkpoint_mb"], 2),
                   "output_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20),
                   "load_average_1m": round(os.getloadavg()[0], 1)}
            rows[(shape, method)] = row
            print(json.dumps(row), flush=True)
            subprocess.run(["rm", "-rf", str(out)], check=True)
            write(rows)
    document = json.loads(RESULTS.read_text())
    header = ("shape", "method", "parameters", "checkpoint_mb", "wall_s", "wall_s_per_billion", "rss_before_mb",
              "walk_peak_rss_mb", "peak_rss_mb", "walk_growth_mb", "bound_mb")
    print(" | ".join(header))
    for row in document["runs"]:
        print(" | ".join(str(row.get(h, "")) for h in header))


if __name__ == "__main__":
    main()
