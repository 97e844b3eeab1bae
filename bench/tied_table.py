"""Where a 4-bit tied embedding/head loses its quality: through the LM head or through the lookup,
rounded to nearest or by GPTQ on the head's inputs, with every other weight left float.

    python bench/tied_table.py [--model smollm2-135m] [--group-size 64] [--quality-windows 16]
                               [--dampings 0.01,0.1,0.3,1]

Held-out perplexity (the evaluator's 512-token pydoc windows) of the float model with only the
table rounded; GPTQ's Hessian comes from the calibration split (16 windows of 512 tokens), and each
damping is tried (relative to the Hessian's mean diagonal: more damping weighs every column's own
error more, which is what the lookup sees). Writes
bench/results/tied_table.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine_record import machine_record  # bench/ (this folder is on sys.path)
from torch import nn

from services.common.calibration.hessian import inputs_hessian
from services.common.datasets.calibration_text import calibration_batches, calibration_text
from services.common.models import modelio
from services.common.models.builtin_models import builtin_folder
from services.common.runtime.settings import default_cache
from services.evaluator.quality import causal_lm_quality, text_windows
from services.quantizer.gptq import gptq_head_rounding
from services.quantizer.qscheme import WeightScheme, dequantize, fake_quantize

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--quality-windows", type=int, default=16)
    parser.add_argument("--dampings", default="0.01,0.1,0.3,1")
    args = parser.parse_args()
    folder = builtin_folder(args.model, default_cache())
    tokenizer = modelio.load_tokenizer(folder)
    model = modelio.load_model(folder, dtype=torch.float32).eval()
    table = model.get_input_embeddings()
    if model.get_output_embeddings().weight is not table.weight:
        raise SystemExit(f"{args.model} has no tied embedding/head")
    windows = text_windows(tokenizer, args.quality_windows)
    original = table.weight.detach().clone()
    head = nn.Linear(original.shape[1], original.shape[0], bias=False)
    head.weight = nn.Parameter(original.clone(), requires_grad=False)
    model.lm_head = head  # untied: each side can be rounded alone

    scheme = WeightScheme(4, args.group_size, True)
    with torch.no_grad():
        hidden = [model.model(input_ids=b[None]).last_hidden_state
                  for b in calibration_batches(tokenizer, 16, 512, calibration_text())]
    hessian = inputs_hessian(hidden)
    rounded = {"nearest": fake_quantize(original, scheme)[0]}
    seconds = {}
    for damping in (float(d) for d in args.dampings.split(",")):
        started = time.perf_counter()
        qw, _ = gptq_head_rounding(damping=damping)(original, hessian, scheme, "Linear")
        seconds[f"gptq damping {damping}"] = round(time.perf_counter() - started, 1)
        rounded[f"gptq damping {damping}"] = dequantize(qw.codes, qw.params)

    base = causal_lm_quality(model, windows).perplexity
    rows = []
    for rounding, values in rounded.items():
        for side in ("head", "lookup", "both"):
            with torch.no_grad():
                head.weight.copy_(values if side in ("head", "both") else original)
                table.weight.copy_(values if side in ("lookup", "both") else original)
            ppl = causal_lm_quality(model, windows).perplexity
            rows.append({"rounding": rounding, "rounded_side": side, "perplexity": round(ppl, 4),
                         "delta": round(ppl / base - 1, 5)})
            print(f"{rounding:20s} {side:7s} ppl {ppl:.3f}  {100 * (ppl / base - 1):+.2f} %", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tied_table.json").write_text(json.dumps({
        "machine": machine_record(), "model": args.model, "bits": 4, "group_size": args.group_size,
        "base_perplexity": round(base, 4), "quality_windows": args.quality_windows,
        "gptq_seconds": seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
