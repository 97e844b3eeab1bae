"""Everything in a model folder that is not its weights travels into each stage's output.

A compressed model is only whole with what sits beside its weights: a sentence-transformers model's
`modules.json`, `1_Pooling/` and `sentence_bert_config.json` (without them `SentenceTransformer(folder)`
falls back to plain mean pooling and loses its normalisation), a chat model's template and generation
config, the model card. Engines rewrite the weights and `config.json`; this module carries the rest.

What is not carried: the weights the engine rewrote (a weight file anywhere but a safetensors file
inside a sentence-transformers module folder, whose Dense layers the engines never touch; never a
pickle), exports of the original float weights (`onnx/`, `openvino/`: stale once the model is
compressed), a model's own Python code (modelpress never runs it, and strips the pointers at it),
hidden files (`.git`, `.cache`), and the files modelpress writes for each output itself. A file the
engine already wrote is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath

# File endings of weights and compiled engines: what the engine rewrote, or stale copies of the original.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".onnx_data",
                   ".gguf", ".engine", ".plan", ".tflite", ".ot", ".pkl", ".pickle", ".npz", ".npy")
# Shard indexes name the weights they index (model.safetensors.index.json, pytorch_model.bin.index.json).
WEIGHT_INDEX_SUFFIX = ".index.json"
# Folders that hold the original's weights in another runtime's form (sentence-transformers' backends).
EXPORT_FOLDERS = ("onnx", "openvino")
# Written for each output by the stage runner, the engines or the in-process run: a stale copy would lie.
WRITTEN_PER_OUTPUT = ("modelpress.json", "modelpress_pipeline.json", "HOW_TO_LOAD.md", "quantization.json",
                      "onnx_model.json", "openvino_model.json", "gguf_model.json", "tensorrt_model.json",
                      "openvino_model.xml")
MODULES_FILE = "modules.json"
POOLING_CONFIG = "config.json"


def carried_files(src: Path) -> list[PurePosixPath]:
    """The files under `src` (relative, sorted) an output of a stage on it carries."""
    src = Path(src)
    module_folders = _module_folders(src)
    carried = []
    for root, folders, files in os.walk(src):  # never follows a symlinked folder
        here = PurePosixPath(Path(root).relative_to(src).as_posix())
        folders[:] = [f for f in folders if not f.startswith(".") and not (here == PurePosixPath(".")
                                                                             and f in EXPORT_FOLDERS)]
        for name in files:
            path = here / name
            if _carried(path, module_folders) and not (Path(root) / name).is_symlink():
                carried.append(path)
    return sorted(carried)


def copy_carried(src: Path, dst: Path) -> list[PurePosixPath]:
    """Copies what `carried_files(src)` lists into `dst`, leaving every file already in `dst` as the
    engine wrote it; then states the output's width in its pooling config. Returns what it copied."""
    src, dst = Path(src), Path(dst)
    copied = []
    for relative in carried_files(src):
        target = dst / relative
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / relative, target)
        copied.append(relative)
    _match_pooling_width(dst)
    return copied


def _carried(path: PurePosixPath, module_folders: set[str]) -> bool:
    name = path.name
    if name.startswith(".") or name.endswith((".py", ".pyc")):
        return False
    if len(path.parts) == 1 and name in WRITTEN_PER_OUTPUT:
        return False
    if name.endswith(WEIGHT_SUFFIXES) or name.endswith(WEIGHT_INDEX_SUFFIX):
        # A sentence-transformers module's own safetensors (a Dense layer after pooling) are the model's,
        # untouched by the engines; a weight file anywhere else is the engine's input or a stale copy, and
        # a pickle is never carried (the loaders refuse a folder holding one).
        return len(path.parts) > 1 and path.parts[0] in module_folders and name.endswith(".safetensors")
    return True


def _module_folders(folder: Path) -> set[str]:
    """The folders modules.json names (the Transformer's own path "" excluded)."""
    try:
        modules = json.loads((folder / MODULES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return set()
    if not isinstance(modules, list):
        return set()
    paths = (m.get("path") for m in modules if isinstance(m, dict))
    return {p for p in paths if isinstance(p, str) and p and "/" not in p and not p.startswith(".")}


def _match_pooling_width(dst: Path) -> None:
    """A pooling module states the width of what it pools; a distilled or pruned student may be
    narrower than the model the carried config was written for."""
    try:
        width = json.loads((dst / "config.json").read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError):
        return
    if not isinstance(width, int):
        return
    for folder in _module_folders(dst):
        path = dst / folder / POOLING_CONFIG
        try:
            pooling = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(pooling, dict) and pooling.get("word_embedding_dimension") not in (None, width):
            path.write_text(json.dumps({**pooling, "word_embedding_dimension": width}, indent=2))


def carry_beside_weights(src: Path, dst: Path) -> None:
    """What every engine calls once its weights and config are in `dst`: the tokenizer files
    (tokenizer.json compacted), then everything else the input held beside its weights."""
    from services.common.models.tokenizer_files import copy_tokenizer

    copy_tokenizer(src, dst)
    copy_carried(src, dst)
