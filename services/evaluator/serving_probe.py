"""The memory an engine artifact takes where it is deployed: its runtime alone, no PyTorch.

The main probe hosts ONNX and OpenVINO graphs behind torch-shaped wrappers so one latency and
quality code path measures every format — but then torch and transformers sit in its RSS, and
an engine's peak memory would read as PyTorch's plus the engine's. This probe imports numpy
and the engine's runtime only (tested: torch never enters sys.modules), runs the stated shape,
and for a stateful causal LM some decode steps, then reports its own peak RSS:

    python -m services.evaluator.serving_probe PLAN_JSON    (a ProbePlan with one model)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from services.common.engines.causal_feeds import empty_past, step_inputs
from services.evaluator.probe import ProbePlan, peak_rss_mb

DECODE_STEPS = 8


def _onnx_runner(folder: Path, threads: int):
    from services.common.engines.onnx_session import open_session

    session = open_session(folder / "model.onnx", threads=threads)
    names = {i.name for i in session.get_inputs()}
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    if not past:
        def run(ids: np.ndarray) -> np.ndarray:
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]

        return run, None
    cache: list = []

    def run_cached(ids: np.ndarray, start: int = 0) -> np.ndarray:
        if start == 0:
            cache[:] = empty_past(past, ids.shape[0])
        logits, *present = session.run(None, {**step_inputs(ids, start),
                                              **{p.name: value for p, value in zip(past, cache)}})
        cache[:] = present
        return logits

    return run_cached, run_cached


def _openvino_runner(folder: Path, threads: int, manifest: dict):
    from services.common.engines.openvino_runtime import compile_model

    causal = manifest.get("kind") == "causal-lm"
    request = compile_model(folder / "openvino_model.xml", threads=threads,
                            precision=manifest.get("inference_precision", "f32")).create_infer_request()

    def run(ids: np.ndarray, start: int = 0) -> np.ndarray:
        if not causal:
            return request.infer({"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        if start == 0:
            request.reset_state()
        return request.infer(step_inputs(ids, start))[0]

    return run, run if causal else None


def footprint(folder: Path, batch_size: int, sequence_length: int, iterations: int, threads: int) -> dict:
    config = json.loads((folder / "config.json").read_text())
    vocab = int(config.get("vocab_size", 1000))
    ids = np.random.default_rng(0).integers(5, max(6, min(vocab, 32000)), (batch_size, sequence_length),
                                            dtype=np.int64)
    if (folder / "openvino_model.xml").exists():
        manifest = json.loads((folder / "openvino_model.json").read_text())
        run, decode = _openvino_runner(folder, threads, manifest)
        runtime = "openvino"
    elif (folder / "model.onnx").exists():
        run, decode = _onnx_runner(folder, threads)
        runtime = "onnxruntime"
    else:
        raise SystemExit(f"{folder.name}: no ONNX or OpenVINO graph to serve")
    for _ in range(max(1, iterations)):
        out = run(ids)
    steps = 0
    if decode is not None:
        for steps in range(1, DECODE_STEPS + 1):
            out = decode(out[:, -1:].argmax(-1).astype(np.int64), sequence_length + steps - 1)
    return {"runtime": runtime, "peak_rss_mb": peak_rss_mb(), "decode_steps": steps,
            "torch_loaded": "torch" in sys.modules}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(__doc__)
    plan = ProbePlan.from_json(argv[0])
    result = footprint(Path(plan.models[0]), plan.batch_size, plan.sequence_length, min(plan.iterations, 3),
                       plan.threads)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
