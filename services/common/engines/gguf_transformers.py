"""GGUF files as transformers' GGUF loader reads them back (`from_pretrained(folder, gguf_file=...)`):
which llama.cpp architectures it reads, for which families, and with which config.

Shared by the optimizer, which checks its own GGUF export against the float model, and the
evaluator, which measures a GGUF artifact as transformers loads it. How a file is laid out
(tensor names, Q/K permutation, Gemma's norms + 1 ...) belongs to the optimizer's writer
(services/optimizer/gguf_layouts.py); only what reading a file back needs lives here.

transformers' loader maps a file's tensors back, undoing llama.cpp's transforms, but reads only some
config keys from the file: Qwen3's head_dim, Gemma's query_pre_attn_scalar, GPT-2's n_positions and
others are assumed at their defaults (a tiny Gemma 3 comes back computing other logits; a tiny Qwen3
or GPT-2 does not load at all). Those families are read with the source config.json passed
(WITH_CONFIG); every GGUF artifact modelpress writes carries it beside the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

FROM_FILE, WITH_CONFIG = "file", "config"

# llama.cpp architecture (general.architecture) → {model_type of the file's family: how transformers
# reads that family's file}. "file": from the file alone (Mistral: the loader knows no "mistral" tensor
# map, and reads llama.cpp's llama file as Llama).
READS: Mapping[str, Mapping[str, str]] = {
    "llama": {"llama": WITH_CONFIG, "mistral": FROM_FILE},
    "qwen2": {"qwen2": WITH_CONFIG},
    "qwen3": {"qwen3": WITH_CONFIG},
    "qwen2moe": {"qwen2_moe": WITH_CONFIG},
    "qwen3moe": {"qwen3_moe": WITH_CONFIG},
    "stablelm": {"stablelm": WITH_CONFIG},
    "gemma2": {"gemma2": WITH_CONFIG},
    "gemma3": {"gemma3_text": WITH_CONFIG},
    "phi3": {"phi3": WITH_CONFIG},
    "gpt2": {"gpt2": WITH_CONFIG},
    "falcon": {"falcon": WITH_CONFIG},
}


def falcon_kv_heads(config: Mapping) -> int:
    """The KV heads Falcon's attention really has: num_kv_heads only with the new decoder
    architecture or without multi-query; multi-query shares one (transformers' FalconAttention)."""
    def get(*names: str, default=None):  # the first name set, as llama.cpp's converter reads a config
        return next((config[n] for n in names if config.get(n) is not None), default)

    if get("new_decoder_architecture", default=False) or not get("multi_query", default=True):
        return int(get("num_kv_heads", "n_head_kv", default=get("num_attention_heads", "n_head", "n_heads")))
    return 1


# Where a family's file reads back only for some configs: model_type → (test on config.json, why not).
CONDITIONS: Mapping[str, tuple[Callable[[Mapping], bool], str]] = {
    "falcon": (lambda config: falcon_kv_heads(config) == 1,
               ("keeps Falcon's fused qkv as stored, which is its own layout only with one KV group; this model "
                "has more")),
}
# Why a family's file is not read where its architecture alone does not say (the rest: the loader
# has no tensor map for the architecture at all).
NOT_READ = {
    "mixtral": "reads llama.cpp's 'llama' file of a routed-experts model as a dense Llama",
}


class NotReadable(ValueError):
    """transformers' GGUF loader does not rebuild this file's model; the message names the llama.cpp
    architecture, the family and why."""


def reading(arch: str, config: Mapping) -> str:
    """How transformers' GGUF loader reads a file of llama.cpp architecture `arch` whose source
    config.json is `config`: FROM_FILE or WITH_CONFIG; NotReadable saying why it does not."""
    model_type = str(config.get("model_type") or "unknown")
    family = f"llama.cpp architecture {arch!r} (model family {model_type!r})"
    how = READS.get(arch, {}).get(model_type)
    if how is None:
        if model_type in NOT_READ:
            why = NOT_READ[model_type]
        elif arch in READS:
            why = (f"reads {arch!r} files of {', '.join(repr(m) for m in READS[arch])} only, not of "
                   f"{model_type!r}")
        else:
            why = f"has no tensor map for {arch!r}; it reads {', '.join(READS)}"
        raise NotReadable(f"GGUF of {family}: transformers' GGUF loader {why}")
    holds, why_not = CONDITIONS.get(model_type, (None, ""))
    if holds is not None and not holds(config):
        raise NotReadable(f"GGUF of {family}: transformers' GGUF loader {why_not}")
    return how


def reads(arch: str, config: Mapping) -> bool:
    """Whether transformers' GGUF loader rebuilds the model of a file of `arch` written from `config`."""
    try:
        reading(arch, config)
    except NotReadable:
        return False
    return True


def architecture(path: Path) -> str:
    """general.architecture of a GGUF file, read with the gguf package's reader (no tensor data read)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    if field is None:
        raise NotReadable(f"{Path(path).name}: a GGUF file without general.architecture")
    return str(field.contents())


def load(folder: Path, gguf_file: str, config_dir: Path, *, output_loading_info: bool = False):
    """The GGUF `folder/gguf_file` as transformers' loader rebuilds it (float32, eval), given the
    source config.json in `config_dir` where the architecture needs it (`reading`); NotReadable where
    the loader does not rebuild it. With `output_loading_info`: (model, loading info)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((Path(config_dir) / "config.json").read_text())
    how = reading(architecture(Path(folder) / gguf_file), config)
    extra = {"config": AutoConfig.from_pretrained(config_dir, trust_remote_code=False)} if how == WITH_CONFIG else {}
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32,
                                                  trust_remote_code=False, output_loading_info=output_loading_info,
                                                  **extra)
    if output_loading_info:
        model, info = loaded
        return model.eval(), info
    return loaded.eval()
