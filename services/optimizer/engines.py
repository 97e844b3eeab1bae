"""The inference engines this worker can target, their precisions, and whether each is usable here.

Availability is found by trying to import the engine's runtime, never assumed: a worker image
without OpenVINO says so, and a TensorRT request on a CPU worker is refused naming what is
missing (see `require`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from services.common.engine_api import NotPossibleHere


@dataclass(frozen=True)
class Engine:
    name: str
    precisions: tuple[str, ...]
    modules: tuple[str, ...]  # what must import for the engine to work
    # precision -> the optimizer method that produces it; empty: no converter in this build.
    methods: dict[str, str] = field(default_factory=dict)
    needs_gpu: bool = False
    install_hint: str = ""


ENGINES = {e.name: e for e in (
    Engine("onnxruntime", ("fp32", "int8", "int4"), ("onnx", "onnxruntime", "onnxscript"),
           {"fp32": "onnx", "int8": "onnx-int8", "int4": "onnx-int4"},
           install_hint="pip install onnx onnxruntime onnxscript"),
    Engine("openvino", ("fp32", "int8", "int4"), ("openvino", "nncf"),
           {"fp32": "openvino", "int8": "openvino-int8", "int4": "openvino-int4"},
           install_hint="pip install openvino nncf"),
    Engine("gguf", ("q8_0", "f16", "q4"), ("gguf",), {"f16": "gguf-f16", "q8_0": "gguf-q8_0", "q4": "gguf-q4"},
           install_hint="pip install gguf"),
    # INT8 needs a Q/DQ ONNX graph (explicit quantization), which modelpress does not write yet.
    Engine("tensorrt", ("fp16",), ("tensorrt",), {"fp16": "tensorrt-fp16"}, needs_gpu=True,
           install_hint="a GPU worker with an NVIDIA driver, CUDA and `pip install '.[gpu]'` (tensorrt)"),
)}


class EngineUnavailable(NotPossibleHere):
    """The engine cannot run on this worker; the message says what is missing."""


def availability(engine: Engine) -> tuple[bool, str]:
    """(usable here, why not)."""
    if not engine.methods:
        return False, (f"modelpress has no {engine.name} converter in this build yet (the optimizer issue, #5, "
                       "adds it)")
    for module in engine.modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - a broken install is as unavailable as a missing one
            return False, f"{module} cannot be imported ({type(exc).__name__}: {exc}); {engine.install_hint}"
    if engine.needs_gpu:
        try:
            import torch

            if not torch.cuda.is_available():
                return False, "needs an NVIDIA GPU with CUDA; this worker has none"
        except ImportError:
            return False, "needs torch with CUDA"
    return True, ""


def require(name: str) -> Engine:
    engine = ENGINES[name]
    usable, why = availability(engine)
    if not usable:
        raise EngineUnavailable(f"engine {name} is not available on this worker: {why}")
    return engine


def method_for(name: str, precision: str) -> str:
    """The optimizer method for (engine, precision); raises KeyError / ValueError naming the allowed ones."""
    if name not in ENGINES:
        raise KeyError(f"engine: unknown engine {name!r}; known: {', '.join(ENGINES)}")
    engine = ENGINES[name]
    precision = precision or engine.precisions[0]
    if precision not in engine.precisions:
        raise ValueError(f"precision: {precision!r} is not one of {name}'s: {', '.join(engine.precisions)}")
    require(name)
    return engine.methods[precision]
