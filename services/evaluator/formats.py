"""Which loader measures a model folder: one entry per artifact format.

The probe asks here, never guesses: a folder is recognised by its files, and a format whose
runtime is not part of modelpress yet is refused with the reason, before any timing starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.models import modelio
from services.common.models.artifact_format import ENGINE_FILES, detect_format


@dataclass(frozen=True)
class LoadedModel:
    model: object
    kind: str
    config: dict
    vocab_size: int
    format: str


class FormatNotMeasurable(modelio.UnsupportedModelError):
    pass


# Those the evaluator has a runner for.
# GGUF is measured as transformers loads it (weights dequantized to FP32): its quality is the
# file's, its latency is PyTorch's, not llama.cpp's (modelpress ships no llama.cpp runtime).
MEASURABLE_ENGINES = {"ONNX", "OpenVINO IR", "GGUF"}


def check_measurable(folder: Path) -> str:
    """The folder's format, or FormatNotMeasurable / UnsafeModelError / UnsupportedModelError saying
    why it cannot be measured; cheap (no weights are read)."""
    modelio.check_safe(folder)
    fmt = detect_format(folder)
    if fmt in ENGINE_FILES.values() and fmt not in MEASURABLE_ENGINES:
        raise FormatNotMeasurable(f"{Path(folder).name}: {fmt} models run only on an NVIDIA GPU worker with the "
                                  "tensorrt package, and this evaluator has no TensorRT runtime; measure the ONNX "
                                  "artifact it was built from instead")
    if fmt == "GGUF":
        _readable_gguf(folder)
    modelio.model_kind(modelio.read_config(folder))
    return fmt


def _readable_gguf(folder: Path) -> Path:
    """The folder's one .gguf file, where transformers' GGUF loader rebuilds its model (gguf_transformers:
    by the file's llama.cpp architecture and the folder's config.json); FormatNotMeasurable naming the
    architecture where it does not. Reads the file's header only."""
    from services.common.engines import gguf_transformers

    folder = Path(folder)
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise FormatNotMeasurable(f"{folder.name}: expected one .gguf file, found {len(files)}")
    try:
        gguf_transformers.reading(gguf_transformers.architecture(files[0]), modelio.read_config(folder))
    except gguf_transformers.NotReadable as exc:
        raise FormatNotMeasurable(f"{folder.name}: {exc}. The evaluator measures a GGUF as transformers loads it "
                                  "(modelpress ships no llama.cpp runtime): measure the float model it was "
                                  "exported from, or run the file in llama.cpp") from None
    return files[0]


def _load_gguf(folder: Path):
    """The GGUF as transformers' GGUF loader rebuilds it, with the folder's config.json (the source
    model's, which every GGUF artifact carries) where the architecture needs it."""
    from services.common.engines import gguf_transformers

    path = _readable_gguf(folder)
    with modelio.CONSTRUCTION_LOCK:
        model, info = gguf_transformers.load(path.parent, path.name, path.parent, output_loading_info=True)
    modelio.check_complete(info, path.name)  # a tensor the GGUF lacks is never measured at random
    return model


def load_for_measurement(folder: Path, device: str = "cpu", threads: int = 2) -> LoadedModel:
    """The model ready to run on `device`, whatever format the folder holds."""
    fmt = check_measurable(folder)
    config = modelio.read_config(folder)
    kind = modelio.model_kind(config)
    if fmt == "ONNX":
        from services.evaluator.onnx_model import OnnxModel

        if device != "cpu":
            raise FormatNotMeasurable("ONNX models are measured on the CPU execution provider only")
        return LoadedModel(model=OnnxModel(folder, kind, threads), kind=kind, config=config,
                           vocab_size=int(config.get("vocab_size", 1000)), format=fmt)
    if fmt == "OpenVINO IR":
        from services.evaluator.openvino_model import OpenVinoModel, describe_openvino

        if device != "cpu":
            raise FormatNotMeasurable("OpenVINO IR models are measured on the CPU plugin only")
        manifest = describe_openvino(folder)
        model = OpenVinoModel(folder, kind, threads, manifest.get("inference_precision", "f32"))
        return LoadedModel(model=model, kind=kind, config=config,
                           vocab_size=int(config.get("vocab_size", 1000)), format=fmt)
    if fmt == "GGUF":
        model = _load_gguf(folder)
    else:
        model = modelio.load_model(folder)
    if device != "cpu":
        model = model.to(device)
    return LoadedModel(model=model, kind=kind, config=config, vocab_size=int(config.get("vocab_size", 1000)),
                       format=fmt)
