"""Measures one model folder in a fresh process and prints the figures as JSON.

Run as a subprocess by the evaluator so that peak RSS is this model's alone, not
whatever the long-lived service loaded before:

    python -m services.evaluator.probe --model DIR --batch-size 1 --sequence-length 128 ...
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--quality-windows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from services.common import modelio
    from services.evaluator import measure

    config = modelio.read_config(args.model)
    kind = modelio.model_kind(config)
    model = modelio.load_model(args.model)
    figures: dict = {
        "architecture": (config.get("architectures") or [config.get("model_type", "")])[0],
        "kind": kind,
        "parameters": measure.count_parameters(model),
    }
    latency = measure.measure_latency(
        model,
        batch_size=args.batch_size,
        sequence_length=args.sequence_length,
        iterations=args.iterations,
        vocab_size=min(int(config.get("vocab_size", 1000)), 32000),
    )
    figures["latency"] = latency.as_dict()
    # Peak RSS while loaded and running at the stated shape (ru_maxrss is in KiB on Linux).
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "causal-lm" and args.quality_windows > 0:
        tokenizer = modelio.load_tokenizer(args.model)
        quality = measure.causal_lm_quality(model, measure.heldout_windows(tokenizer, args.quality_windows))
        figures.update(perplexity=quality.perplexity, top1_accuracy=quality.top1_accuracy,
                       quality_tokens=quality.tokens)
    json.dump(figures, sys.stdout)


if __name__ == "__main__":
    main()
