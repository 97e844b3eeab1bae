"""ONNX → TensorRT engine with the tensorrt Python API (GPU workers only).

Not run on the machines this was written on (no NVIDIA GPU; the tensorrt wheel fetches its
libraries from NVIDIA's index): `engines.require("tensorrt")` refuses before this code is
reached, and nothing here is reported as working until a GPU worker has run it. The ONNX input
is the plain export (no ONNX Runtime contrib fusions, which TensorRT cannot parse); dynamic
batch and sequence axes get one optimization profile (min 1, opt and max from the config).
"""

from __future__ import annotations

from pathlib import Path

ENGINE_FILE = "model.engine"


def build_engine(onnx_path: Path, out_path: Path, *, fp16: bool, opt_batch: int, max_batch: int, opt_sequence: int,
                 max_sequence: int, workspace_mb: int) -> dict:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        name = network.get_input(index).name
        profile.set_shape(name, (1, 1), (opt_batch, opt_sequence), (max_batch, max_sequence))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the worker log for the builder's messages)")
    out_path.write_bytes(bytes(serialized))
    return {"tensorrt_version": trt.__version__, "fp16": fp16, "layers": network.num_layers,
            "profile": {"min": [1, 1], "opt": [opt_batch, opt_sequence], "max": [max_batch, max_sequence]}}
