"""One run of Intel's `auto-round` itself (its own API, not llm-compressor's modifier), in the
anchors' venv.

    .venv-anchors/bin/python bench/anchors/autoround_once.py SRC WINDOWS DST

INT4, group 64, symmetric, embeddings and head float; tuned on WINDOWS (a safetensors file of
`input_ids` [samples, length]: the windows modelpress calibrates on) with the iterations and batch
of llmcompressor_once.py's AutoRound, saved as compressed-tensors (its `llm_compressor` format) so
the modelpress evaluator reads it as it reads the others. Prints JSON: wall_s, peak_rss_mb.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

from llmcompressor_once import AUTOROUND_BATCH, AUTOROUND_ITERATIONS  # this folder


def main() -> None:
    src, windows_path, dst = sys.argv[1:4]
    import torch
    from auto_round import AutoRound
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = load_file(windows_path)["input_ids"]
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src)
    rounder = AutoRound(model, tokenizer, bits=4, group_size=64, sym=True, iters=AUTOROUND_ITERATIONS,
                        batch_size=AUTOROUND_BATCH, nsamples=ids.shape[0], seqlen=ids.shape[1],
                        dataset=[row[None] for row in ids], enable_torch_compile=False, device_map="cpu")
    rounder.quantize_and_save(dst, format="llm_compressor")
    # auto-round writes into a folder of its own naming (<model>-w4g64) inside DST: lifted up.
    (inner,) = [p for p in Path(dst).iterdir() if p.is_dir()]
    for item in inner.iterdir():
        shutil.move(str(item), str(Path(dst) / item.name))
    inner.rmdir()
    json.dump({"wall_s": time.perf_counter() - start,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, sys.stdout)


if __name__ == "__main__":
    main()
