"""What a model folder holds, told by its files: one engine format per pattern, else the
safetensors flavour (packed codes, compressed-tensors, float). The evaluator and the serving
service both ask here, never guess."""

from __future__ import annotations

from pathlib import Path

from services.common.models import modelio

# The manifest of modelpress's own packed INT8 safetensors (services/common/models/packed.py).
QUANT_FILE = "quantization.json"
# Engine formats the optimizer produces; each needs its own runtime.
ENGINE_FILES = {"*.onnx": "ONNX", "openvino_model.xml": "OpenVINO IR", "*.gguf": "GGUF", "*.engine": "TensorRT",
                "*.plan": "TensorRT"}


def detect_format(folder: Path) -> str:
    folder = Path(folder)
    for pattern, name in ENGINE_FILES.items():
        if any(folder.glob(pattern)):
            return name
    if is_packed(folder):
        return "packed-safetensors"
    config = modelio.read_config(folder)
    if (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors":
        return "compressed-tensors"
    return "hf-safetensors"


def is_packed(folder: Path) -> bool:
    return (Path(folder) / QUANT_FILE).exists()
