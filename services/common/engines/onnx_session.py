"""ONNX Runtime sessions as every modelpress process opens them: intra-op threads fixed and thread
spinning off (idle spinning pools distorted other processes' timings 8x on a 2-core machine)."""

from __future__ import annotations

from pathlib import Path


def session_options(threads: int = 2, *, optimized_path: Path | None = None, level: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


def open_session(path: Path, threads: int = 2):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"])
