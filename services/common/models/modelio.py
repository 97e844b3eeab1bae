"""Safe model loading: safetensors only, never pickle; one entry point for every format."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from services.common.models import packed
from services.common.contract.model_kinds import kind_of

# transformers builds models under process-wide patches (weight init disabled, parameters
# created on meta), so two threads building at once corrupt each other's models (seen:
# a tied head left uninitialised, meta tensors in a cast). Every build in a worker holds this.
CONSTRUCTION_LOCK = threading.RLock()

# Files that are unpickled on load: loading one runs whatever code it carries.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})


def preload_transformers() -> None:
    """Resolves transformers' lazy attributes once, up front: its lazy module is not
    thread-safe, and stages import it from worker threads (seen: ImportError for
    AutoConfig when two stages started together)."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer"):
        getattr(transformers, name)


class UnsafeModelError(ValueError):
    """The folder holds pickled weights."""


class UnsupportedModelError(ValueError):
    """The folder is not a model modelpress can load (no config, unknown architecture ...)."""


def _is_openvino_weights(path: Path) -> bool:
    """An OpenVINO IR's .bin is raw constant data the .xml beside it indexes. One that starts like
    a pickle (protocol byte 0x80) or a torch.save zip ("PK") is still refused."""
    if path.suffix.lower() != ".bin" or not path.with_suffix(".xml").is_file():
        return False
    with path.open("rb") as handle:
        head = handle.read(2)
    return not (head[:1] == b"\x80" or head == b"PK")


def check_safe(folder: Path) -> None:
    pickled = sorted(p.name for p in Path(folder).rglob("*")
                     if p.suffix.lower() in PICKLE_SUFFIXES and not _is_openvino_weights(p))
    if pickled:
        raise UnsafeModelError(
            f"refusing pickled weights {', '.join(pickled)}: modelpress loads safetensors only "
            "(convert with `safetensors.torch.save_file` in a trusted environment)"
        )


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise UnsupportedModelError(f"{folder.name}: no config.json (an HF-style model folder is expected)")
    return json.loads(path.read_text())


def model_kind(config: dict) -> str:
    """"causal-lm" for decoder LMs, "encoder" for everything AutoModel loads bare (model_kinds.kind_of)."""
    kind = kind_of(config)
    if kind is None:
        raise UnsupportedModelError(
            f"unsupported architecture {config.get('architectures') or config.get('model_type')!r}: "
            "modelpress handles *ForCausalLM models and BERT-style encoders"
        )
    return kind


def load_model(folder: Path, *, dtype=None):
    """Loads a float or packed model folder for inference on CPU, in eval mode.

    Float weights keep the dtype they were saved in unless `dtype` says otherwise, so an
    FP16 artifact is measured as FP16, not silently widened.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    folder = Path(folder)
    check_safe(folder)
    config = read_config(folder)
    kind = model_kind(config)
    if packed.is_packed(folder):
        with CONSTRUCTION_LOCK:
            return packed.load_packed(folder, kind)
    if not any(folder.glob("*.safetensors")):
        raise UnsupportedModelError(f"{folder.name}: no *.safetensors weights")
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    with CONSTRUCTION_LOCK:
        model = auto.from_pretrained(folder, use_safetensors=True, dtype=dtype or "auto")
    return model.eval()


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
