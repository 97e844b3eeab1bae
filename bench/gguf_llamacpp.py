"""The GGUF exports of SmolLM2-135M in llama.cpp itself: does it read them as its own?

    python bench/gguf_llamacpp.py [--types gguf-f16,gguf-q8_0,gguf-q4] [--llama-python PATH]

Exports each type with the optimizer (this venv), then loads it with llama-cpp-python (its own
venv, `make llamacpp-venv`: it compiles llama.cpp, 10 minutes or more on 2 cores), reads the
metadata llama.cpp sees, checks that llama.cpp's tokenizer splits a held-out sentence into the
same ids as transformers' tokenizer of the source folder, generates greedily and applies the
chat template. Writes bench/results/gguf_llamacpp.json with the machine and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--types", default="gguf-f16,gguf-q8_0,gguf-q4")
    parser.add_argument("--llama-python", type=Path, default=ROOT / ".venv-llamacpp" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gguf_llamacpp.json")
    args = parser.parse_args()
    if not args.llama_python.exists():
        raise SystemExit(f"{args.llama_python} not found: run `make llamacpp-venv` first")
    src = builtin_folder("smollm2-135m", default_cache())
    text = quality.heldout_sentences(1)[0]
    expected = modelio.load_tokenizer(src)(text, add_special_tokens=False).input_ids
    rows = []
    with tempfile.TemporaryDirectory(prefix="mp-llamacpp-") as tmp:
        for method in args.types.split(","):
            entry = METHODS[method]
            out = Path(tmp) / method
            entry.run(entry.config_cls(verify_reload=False), src, out, ProgressReporter())
            gguf = next(out.glob("*.gguf"))
            run = subprocess.run([str(args.llama_python), str(HERE / "llamacpp" / "load_once.py"), str(gguf), PROMPT,
                                  text], capture_output=True, text=True, timeout=600)
            if run.returncode != 0:
                rows.append({"type": method, "loaded": False, "error": run.stderr.strip().splitlines()[-1:]})
                continue
            found = json.loads(run.stdout.strip().splitlines()[-1])
            found.update(type=method, loaded=True, file_mb=round(gguf.stat().st_size / 1e6, 1),
                         tokens_match=found.pop("tokens") == expected)
            rows.append(found)
    args.out.write_text(json.dumps({"machine": machine_record(), "prompt": PROMPT, "rows": rows}, indent=1))
    print("type | MB | loaded | pre | tokens match | chat template | tok/s | generated")
    for r in rows:
        print(f"{r['type']} | {r.get('file_mb', '-')} | {r['loaded']} | {r.get('pre')} | {r.get('tokens_match')} | "
              f"{r.get('has_chat_template')} | {r.get('tokens_per_s')} | {str(r.get('generated', r.get('error')))[:60]!r}")


if __name__ == "__main__":
    main()
