"""The GGUF exports of SmolLM2-135M in llama.cpp itself: does it read them as its own?

    python bench/gguf_llamacpp.py [--types gguf-f16,gguf-q8_0,gguf-q4] [--families qwen2,gemma2,phi3]
                                  [--llama-python PATH]

Exports each type with the optimizer (this venv), then loads it with llama-cpp-python (its own
venv, `make llamacpp-venv`: it compiles llama.cpp, 10 minutes or more on 2 cores), reads the
metadata llama.cpp sees, checks that llama.cpp's tokenizer splits a held-out sentence into the
same ids as transformers' tokenizer of the source folder, generates greedily and applies the
chat template. Then the other architectures gguf_export lays out: each family's tiny random model
(tests/compat's, built offline, its Q/K projections scaled up so attention is not uniform) exported
as Q8_0, loaded and run by llama.cpp under its own architecture, and llama.cpp's logits over a fixed
id sequence compared with the float model's in transformers (cosine): the tensor names, shapes,
metadata and weight transforms are the ones llama.cpp computes the model with. Random weights
generate noise; the generation only shows that it runs. Writes bench/results/gguf_llamacpp.json
("rows": SmolLM2's types; "families": the tiny models) with the machine and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from machine_record import machine_record  # bench/ (this folder is on sys.path)
from services.common.models import modelio
from services.common.contract.engine_api import ProgressReporter
from services.common.models.builtin_models import builtin_folder
from services.common.runtime.settings import default_cache
from services.evaluator import quality
from services.optimizer.engine import METHODS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPT = "The for statement in Python is used to"
IDS = (5, 17, 42, 99, 7, 64, 201, 33, 12, 150, 88, 3)  # token ids the tiny models' logits are compared on
SHARPEN = 12.0  # the tiny models' Q/K scale-up (unpermuted Llama Q/K rows then drop the cosine to ~0.7-0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--types", default="gguf-f16,gguf-q8_0,gguf-q4")
    parser.add_argument("--families", default="qwen2,qwen3,gemma2,gemma3_text,phi3,gpt2,stablelm,olmo2,gpt_neox,"
                        "falcon,granite,smollm3,mistral,mixtral,qwen2_moe,qwen3_moe",
                        help="tiny random models of these families, Q8_0 ('' for none)")
    parser.add_argument("--llama-python", type=Path, default=ROOT / ".venv-llamacpp" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gguf_llamacpp.json")
    args = parser.parse_args()
    if not args.llama_python.exists():
        raise SystemExit(f"{args.llama_python} not found: run `make llamacpp-venv` first")
    src = builtin_folder("smollm2-135m", default_cache())
    text = quality.heldout_sentences(1)[0]
    expected = modelio.load_tokenizer(src)(text, add_special_tokens=False).input_ids
    rows, family_rows = [], []
    with tempfile.TemporaryDirectory(prefix="mp-llamacpp-") as tmp:
        for method in filter(None, args.types.split(",")):
            rows.append(_in_llamacpp(args.llama_python, src, Path(tmp) / method, method, text, expected)
                        | {"type": method})
        for family in filter(None, args.families.split(",")):
            folder = _tiny_model(family, Path(tmp))
            tiny_expected = modelio.load_tokenizer(folder)(text, add_special_tokens=False).input_ids
            found = _in_llamacpp(args.llama_python, folder, Path(tmp) / f"{family}-q8_0", "gguf-q8_0", text,
                                 tiny_expected, ids=list(IDS))
            if found.get("logits"):
                found["logits_cosine"] = _cosine_to_float(folder, found.pop("logits"))
            family_rows.append({"family": family, "type": "gguf-q8_0", **found})
    args.out.write_text(json.dumps({"machine": machine_record(), "prompt": PROMPT, "rows": rows,
                                    "families": family_rows}, indent=1))
    print("type | MB | loaded | pre | tokens match | chat template | tok/s | generated")
    for r in rows:
        print(f"{r['type']} | {r.get('file_mb', '-')} | {r['loaded']} | {r.get('pre')} | {r.get('tokens_match')} | "
              f"{r.get('has_chat_template')} | {r.get('tokens_per_s')} | {str(r.get('generated', r.get('error')))[:60]!r}")
    if family_rows:
        print("\nfamily (tiny random, Q8_0) | architecture | loaded | tokens match | logits cosine | generated "
              "tokens | error")
    for r in family_rows:
        print(f"{r['family']} | {r.get('architecture')} | {r['loaded']} | {r.get('tokens_match')} | "
              f"{r.get('logits_cosine')} | {r.get('generated_tokens')} | {str(r.get('error', ''))[:80]}")


def _tiny_model(family: str, tmp: Path) -> Path:
    """The compat matrix's tiny random model of the family (tests/compat/tiny_models.py, offline)."""
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from tests.compat import tiny_models

    # A neutral folder name (general.name): llama.cpp keys vocabulary quirks on it ("phi3" expects
    # Phi-3's </s>), as transformers' GGUF loader does ("mistral").
    folder = tiny_models.build(family, tmp / "tiny" / family / "model", tmp / "tokenizers")
    # Random init leaves attention near uniform, where Q/K rows in the wrong rotary order change
    # nothing: the query and key projections are scaled up so a wrong layout shows in the logits.
    path = folder / "model.safetensors"
    state = {name: tensor * SHARPEN if re.search(r"(q_proj|k_proj|qkv_proj|query_key_value|c_attn)\.weight$", name)
             else tensor for name, tensor in load_file(str(path)).items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return folder


def _cosine_to_float(folder: Path, logits: list) -> float:
    """Cosine similarity of llama.cpp's logits over IDS to the float model's (transformers): the layout
    is llama.cpp's own where they agree, whatever transformers' GGUF loader reads."""
    import torch

    model = modelio.load_model(folder).eval()
    with torch.inference_mode():
        want = model(input_ids=torch.tensor([IDS])).logits[0].float().flatten()
    got = torch.tensor(logits, dtype=torch.float32).flatten()
    return round(float(torch.nn.functional.cosine_similarity(want, got, dim=0)), 4)


def _in_llamacpp(llama_python: Path, src: Path, out: Path, method: str, text: str, expected: list[int],
                 ids: list[int] | None = None) -> dict:
    """One export of `src` with `method`, loaded, tokenized and run by llama.cpp (load_once.py)."""
    entry = METHODS[method]
    entry.run(entry.config_cls(verify_reload=False), src, out, ProgressReporter())
    gguf = next(out.glob("*.gguf"))
    run = subprocess.run([str(llama_python), str(HERE / "llamacpp" / "load_once.py"), str(gguf), PROMPT, text]
                         + ([json.dumps(ids)] if ids else []), capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        return {"loaded": False, "error": run.stderr.strip().splitlines()[-1:]}
    found = json.loads(run.stdout.strip().splitlines()[-1])
    if found.get("logits") is None:
        found.pop("logits", None)
    found.update(loaded=True, file_mb=round(gguf.stat().st_size / 1e6, 1), tokens_match=found.pop("tokens") == expected)
    return found


if __name__ == "__main__":
    main()
