"""The inference engines this worker can target, their precisions, and whether each is usable here.

Availability is found by trying to import the engine's runtime, never assumed: a worker image
without OpenVINO says so, and a TensorRT request on a CPU worker is refused naming what is
missing (see `require`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from services.common.contract.engine_api import NotPossibleHere
from services.common.measure.isa import support
from services.common.engines.openvino_runtime import disable_telemetry


@dataclass(frozen=True)
class Engine:
    name: str
    precisions: tuple[str, ...]
    modules: tuple[str, ...]  # what must import for the engine to work
    # precision -> the recipe (one optimizer stage) that produces it; empty: no converter in this build.
    methods: dict[str, str] = field(default_factory=dict)
    # precision -> the arithmetic it computes in (fp32, bf16, f16, int8); absent: fp32.
    compute: dict[str, str] = field(default_factory=dict)
    needs_gpu: bool = False
    install_hint: str = ""

    def compute_of(self, precision: str) -> str:
        return self.compute.get(precision, "fp32")

    def emulated_on(self, features) -> list[str]:
        """Precisions whose compute a CPU with these ISA features would emulate (GPU engines: none)."""
        if self.needs_gpu:
            return []
        return [p for p in self.precisions if support(self.compute_of(p), features).emulated]


ENGINES = {e.name: e for e in (
    # No bf16/f16: an f16 graph gained nothing over fp32 on ONNX Runtime's x86 CPU provider (README,
    # engine table). int8: encoders' dynamic INT8 products; a causal LM's onnx-int8 is weight-only
    # and computes in fp32.
    Engine("onnxruntime", ("fp32", "int8", "int4"), ("onnx", "onnxruntime", "onnxscript"),
           {"fp32": "onnx", "int8": "onnx-int8", "int4": "onnx-int4"}, {"int8": "int8"},
           install_hint="pip install onnx onnxruntime onnxscript"),
    Engine("openvino", ("fp32", "int8", "int4", "bf16", "f16", "int8-bf16"), ("openvino", "nncf"),
           {"fp32": "openvino", "int8": "openvino-int8", "int4": "openvino-int4", "bf16": "openvino-bf16",
            "f16": "openvino-f16", "int8-bf16": "openvino-int8-bf16"},
           {"bf16": "bf16", "f16": "f16", "int8-bf16": "bf16"},
           install_hint="pip install openvino nncf"),
    # llama.cpp multiplies q8_0/q4 blocks with int8 dot products and widens f16 weights to fp32.
    Engine("gguf", ("q8_0", "f16", "q4"), ("gguf",), {"f16": "gguf-f16", "q8_0": "gguf-q8_0", "q4": "gguf-q4"},
           {"q8_0": "int8", "q4": "int8"}, install_hint="pip install gguf"),
    # INT8 needs a Q/DQ ONNX graph (explicit quantization), which modelpress does not write yet.
    Engine("tensorrt", ("fp16",), ("tensorrt",), {"fp16": "tensorrt-fp16"}, {"fp16": "f16"}, needs_gpu=True,
           install_hint="a GPU worker with an NVIDIA driver, CUDA and `pip install '.[gpu]'` (tensorrt)"),
)}


class EngineUnavailable(NotPossibleHere):
    """The engine cannot run on this worker; the message says what is missing."""


def availability(engine: Engine) -> tuple[bool, str]:
    """(usable here, why not)."""
    if not engine.methods:
        return False, (f"modelpress has no {engine.name} converter in this build yet (the optimizer issue, #5, "
                       "adds it)")
    # `import openvino` sends usage telemetry at import time (forking from this thread): the
    # sender is muted before the first import.
    disable_telemetry()
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
