"""HOW_TO_LOAD.md: what each output says about loading or serving it, by its format.

A downloaded folder should explain how to use it without the docs: the snippets are keyed by the
artifact's format in one table (LOAD_GUIDES), filled in with the folder's own file names at write time.
A sentence-transformers model (modules.json beside its weights) gets the SentenceTransformer line too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from modelpress.v1 import common_pb2

GUIDE_NAME = "HOW_TO_LOAD.md"
MODULES_FILE = "modules.json"


@dataclass(frozen=True)
class LoadGuide:
    """`load`: Python that loads the folder; `serve`: a shell line that serves it ("" for none);
    `file_glob`: which file `{file}` names (the engine's graph or weights); `sentence_transformers`: a
    line for a sentence-transformers model of this format ("" when that library cannot load it);
    `serve_kinds`: the model kinds the serving line fits."""

    title: str
    load: str
    serve: str = ""
    file_glob: str = ""
    sentence_transformers: str = ""
    serve_kinds: tuple[str, ...] = ("causal-lm", "encoder")


F = common_pb2
LOAD_GUIDES: dict[int, LoadGuide] = {
    F.ARTIFACT_FORMAT_HF_SAFETENSORS: LoadGuide(
        "Hugging Face safetensors (float weights)",
        'from transformers import {auto_class}, AutoTokenizer\n\n'
        'model = {auto_class}.from_pretrained(folder)\n'
        'tokenizer = AutoTokenizer.from_pretrained(folder)',
        serve="vllm serve {folder}", serve_kinds=("causal-lm",),
        sentence_transformers='from sentence_transformers import SentenceTransformer\n\n'
                              'embeddings = SentenceTransformer(folder).encode(["a sentence"])'),
    F.ARTIFACT_FORMAT_COMPRESSED_TENSORS: LoadGuide(
        "compressed-tensors (quantized weights, as llm-compressor writes them)",
        '# pip install compressed-tensors\n'
        'from transformers import {auto_class}, AutoTokenizer\n\n'
        'model = {auto_class}.from_pretrained(folder)\n'
        'tokenizer = AutoTokenizer.from_pretrained(folder)',
        serve="vllm serve {folder}   # modelpress.json says whether the layout is vLLM's (compression.layout)",
        serve_kinds=("causal-lm",),
        # sentence-transformers calls the model's forward directly, past the hook that decompresses the
        # weights on the first call: they are dequantized at load instead.
        sentence_transformers='# pip install compressed-tensors\n'
                              'from sentence_transformers import SentenceTransformer\n'
                              'from transformers import CompressedTensorsConfig\n\n'
                              'model = SentenceTransformer(folder, model_kwargs={\n'
                              '    "quantization_config": CompressedTensorsConfig(dequantize=True)})\n'
                              'embeddings = model.encode(["a sentence"])'),
    F.ARTIFACT_FORMAT_PACKED_SAFETENSORS: LoadGuide(
        "modelpress packed INT8 (int8 weights with per-row scales, widened one layer at a time)",
        '# the modelpress server install (pip install modelpress) reads this layout\n'
        'from pathlib import Path\n'
        'from services.common.models.packed import load_packed\n\n'
        'model = load_packed(Path(folder), "{kind}")'),
    F.ARTIFACT_FORMAT_ONNX: LoadGuide(
        "ONNX (ONNX Runtime)",
        'import onnxruntime as ort\n'
        'from transformers import AutoTokenizer\n\n'
        'session = ort.InferenceSession(f"{{folder}}/{file}", providers=["CPUExecutionProvider"])\n'
        'tokens = AutoTokenizer.from_pretrained(folder)(["a sentence"], return_tensors="np")\n'
        'names = {{i.name for i in session.get_inputs()}}   # a causal LM with a KV cache takes past_* too\n'
        'outputs = session.run(None, {{k: v for k, v in tokens.items() if k in names}})',
        file_glob="*.onnx"),
    F.ARTIFACT_FORMAT_OPENVINO_IR: LoadGuide(
        "OpenVINO IR",
        'import openvino as ov\n\n'
        'compiled = ov.Core().compile_model(f"{{folder}}/{file}", "CPU")\n'
        '# or, with optimum-intel: OVModelForCausalLM / OVModelForFeatureExtraction.from_pretrained(folder)',
        serve="ovms --model_path {folder} --model_name model --port 9000   # OpenVINO Model Server",
        file_glob="*.xml"),
    F.ARTIFACT_FORMAT_GGUF: LoadGuide(
        "GGUF (llama.cpp)",
        '# pip install llama-cpp-python\n'
        'from llama_cpp import Llama\n\n'
        'llm = Llama(model_path=f"{{folder}}/{file}")',
        serve="llama-server -m {folder}/{file} --port 8080",
        file_glob="*.gguf"),
    F.ARTIFACT_FORMAT_TENSORRT: LoadGuide(
        "TensorRT engine (runs only on the GPU model and TensorRT version it was built with)",
        'import tensorrt as trt\n\n'
        'runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))\n'
        'engine = runtime.deserialize_cuda_engine(open(f"{{folder}}/{file}", "rb").read())',
        serve="trtexec --loadEngine={folder}/{file}",
        file_glob="*.engine"),
}


def guide_text(folder: Path, fmt: int) -> str | None:
    """The guide for an output of format `fmt` in `folder`, or None for a format that is not a model."""
    guide = LOAD_GUIDES.get(fmt)
    if guide is None:
        return None
    folder = Path(folder)
    kind = _kind(folder)
    names = {"auto_class": "AutoModelForCausalLM" if kind == "causal-lm" else "AutoModel", "kind": kind,
             "file": _file(folder, guide.file_glob), "folder": "./this-folder"}
    heading = (f"# How to load this model\n\nFormat: {guide.title}. Made by modelpress: `modelpress.json` "
               "(`modelpress_pipeline.json` from an in-process run) records how, with the stages, their "
               "configs and figures.\n")
    load = "```python\nfolder = \"./this-folder\"  # where you downloaded it\n" + guide.load.format(**names) + "\n```\n"
    sections = [heading, load]
    if guide.sentence_transformers and (folder / MODULES_FILE).is_file():
        sections.append("As a sentence-transformers model (its pooling and normalisation from modules.json):\n\n"
                        "```python\nfolder = \"./this-folder\"\n" + guide.sentence_transformers + "\n```\n")
    if guide.serve and kind in guide.serve_kinds:
        sections.append("To serve it:\n\n```bash\n" + guide.serve.format(**names) + "\n```\n")
    return "\n".join(sections)


def write_load_guide(folder: Path, fmt: int) -> Path | None:
    """Writes HOW_TO_LOAD.md into an output folder (nothing for a format that is not a model)."""
    text = guide_text(folder, fmt)
    if text is None:
        return None
    path = Path(folder) / GUIDE_NAME
    path.write_text(text, encoding="utf-8")
    return path


def _kind(folder: Path) -> str:
    """"causal-lm" when config.json names a ...ForCausalLM architecture, else "encoder"."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        architectures = config.get("architectures") or []
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError):
        return "encoder"
    return "causal-lm" if any(str(a).endswith("ForCausalLM") for a in architectures) else "encoder"


def _file(folder: Path, pattern: str) -> str:
    """The folder's file the snippet opens (the first match, by name), or the pattern itself."""
    if not pattern:
        return ""
    found = sorted(p.name for p in folder.glob(pattern) if p.is_file())
    return found[0] if found else pattern
