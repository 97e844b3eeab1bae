"""Serving optimizations on the real models: dynamic batching under concurrent load against
batch-1 serving, and KV caches (default, preallocated static, INT8) for SmolLM2 generation.

    python bench/serving.py [--onnx-folder FOLDER]   (bench/optimizer.py calls it too)

Prints two tables; `run()` returns the figures that bench/optimizer.py stores under "batching"
and "kv_cache" in bench/results/optimizer.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def batching(onnx_folder: Path, *, requests: int = 128, clients: int = 16, max_batch: int = 16,
             max_wait_ms: float = 5.0, threads: int = 2) -> list[dict]:
    """An ONNX Runtime encoder session behind the batcher; requests are held-out pydoc sentences
    (their real, varied lengths)."""
    from services.common.models import modelio
    from services.common.engines.onnx_session import open_session
    from services.evaluator import quality
    from services.serving.batching import BatchingConfig, compare_batching, serve_under_load

    session = open_session(onnx_folder / "model.onnx", threads=threads)
    tokenizer = modelio.load_tokenizer(onnx_folder)
    sentences, _ = quality.topic_sentences(requests)
    ids = [tokenizer(s, truncation=True, max_length=128).input_ids for s in sentences][:requests]

    def run_batch(batch_ids, mask):
        return session.run(None, {"input_ids": batch_ids, "attention_mask": mask})[0]

    pad = tokenizer.pad_token_id or 0
    figures = compare_batching(run_batch, ids, clients=clients,
                               config=BatchingConfig(max_batch_size=max_batch, max_wait_ms=max_wait_ms, pad_id=pad))
    # The same without the padding bound: one padded call per window, to show what padding costs.
    unbounded = BatchingConfig(max_batch_size=max_batch, max_wait_ms=max_wait_ms, pad_id=pad, max_padding=float("inf"))
    figures.append(serve_under_load(run_batch, ids, clients=clients, config=unbounded,
                                    mode=f"dynamic (max {max_batch}, {max_wait_ms:g} ms, padding unbounded)"))
    lengths = [len(i) for i in ids]
    return [{**asdict(f), "model": onnx_folder.name, "mean_tokens": sum(lengths) / len(lengths)} for f in figures]


def kv_caches(model_folder: Path, *, prompt: int = 128, new_tokens: int = 64, windows: int = 4) -> list[dict]:
    import torch

    from services.common.models import modelio
    from services.evaluator import quality
    from services.optimizer import kv_cache

    torch.set_num_threads(2)
    model = modelio.load_model(model_folder).eval()
    held_out = quality.text_windows(modelio.load_tokenizer(model_folder), windows)
    rows = []
    reference_tokens = None
    for kind in kv_cache.KINDS:
        decoded = kv_cache.greedy_decode(model, held_out[:1, :prompt], new_tokens, kind)
        reference_tokens = reference_tokens or decoded.tokens
        rows.append({**kv_cache.as_dict(decoded), "perplexity": kv_cache.chunked_perplexity(model, held_out, kind),
                     "same_tokens_as_default": sum(a == b for a, b in zip(decoded.tokens, reference_tokens))})
    base = rows[0]
    for row in rows:
        row["decode_speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["cache_ratio"] = row["cache_bytes"] / base["cache_bytes"]
        row["delta_ppl"] = row["perplexity"] / base["perplexity"] - 1
    return rows


def print_tables(batch_rows: list[dict], kv_rows: list[dict]) -> None:
    if batch_rows:
        print("mode | requests | clients | req/s | × | p50 ms | p95 ms | mean batch")
        for r in batch_rows:
            print(f"{r['mode']} | {r['requests']} | {r['clients']} | {r['requests_per_s']:.1f} | "
                  f"{r['requests_per_s'] / batch_rows[0]['requests_per_s']:.2f} | {r['latency_p50_ms']:.1f} | "
                  f"{r['latency_p95_ms']:.1f} | {r['mean_batch_size']:.1f}")
    if kv_rows:
        print("kv cache | decode ms/token | tok/s | × | cache KB | × | ppl | Δppl | same tokens")
        for r in kv_rows:
            print(f"{r['kind']} | {r['decode_ms_p50']:.1f} | {r['tokens_per_s']:.1f} | {r['decode_speedup']:.2f} | "
                  f"{r['cache_bytes'] / 1024:.0f} | {r['cache_ratio']:.2f} | {r['perplexity']:.3f} | "
                  f"{r['delta_ppl'] * 100:+.2f} % | {r['same_tokens_as_default']}/{r['new_tokens']}")


def run(onnx_encoder: Path | None, causal_lm: Path | None) -> dict:
    batch_rows = batching(onnx_encoder) if onnx_encoder else []
    kv_rows = kv_caches(causal_lm) if causal_lm else []
    print_tables(batch_rows, kv_rows)
    return {"batching": batch_rows, "kv_cache": kv_rows}


def main() -> None:
    from services.common.models.builtin_models import builtin_folder
    from services.common.runtime.settings import default_cache

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx-folder", type=Path, help="an `onnx-int8` artifact of MiniLM (skip batching if absent)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batching.json")
    args = parser.parse_args()
    figures = run(args.onnx_folder, builtin_folder("smollm2-135m", default_cache()))
    from machine_record import machine_record

    args.out.write_text(json.dumps({"machine": machine_record(), **figures}, indent=1))


if __name__ == "__main__":
    main()
