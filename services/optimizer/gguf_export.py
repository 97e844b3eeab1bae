"""Float decoder checkpoints → GGUF, the file llama.cpp and edge runtimes load.

Written with the `gguf` package (llama.cpp's own writer): architecture metadata, the byte-level
BPE tokenizer from tokenizer.json, and every tensor under llama.cpp's names, laid out per
architecture as llama.cpp's converter (convert_hf_to_gguf.py) lays it out: gguf_layouts declares
each architecture's metadata and weight transforms (Llama's Q/K row permutation for its rotary
embedding, Gemma's norms + 1, GPT-2's transposed Conv1D, GPT-NeoX's and Falcon's regrouped qkv),
and the gguf package's TensorNameMap names the tensors. Norms, biases and routers stay F32, as the
converter keeps them; other weights take the requested type: F16, Q8_0 (blocks of 32, one f16
scale) or Q4_0 / Q4_1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.engines import gguf_transformers
from services.common.models import families
from services.optimizer import gguf_layouts

# The llama.cpp architectures this writer lays out (families.Family.gguf names each family's);
# gguf_layouts declares, per architecture, what llama.cpp's converter writes.
WRITES = tuple(gguf_layouts.LAYOUTS)
TYPES = ("f16", "q8_0", "q4_0", "q4_1")
# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
NORMAL, CONTROL, UNUSED = 1, 3, 5
# Tensors llama.cpp's converter keeps F32 whatever the file type (besides 1-D ones and norms).
F32_TENSORS = ("ffn_gate_inp", "ffn_gate_inp_shexp", "position_embd")
rotary_permute = gguf_layouts.rotary_permute


class NotConvertible(ValueError):
    pass


def _refusal(config: dict, why: str) -> NotConvertible:
    writes = [f.model_type for f in families.FAMILIES.values() if f.gguf in WRITES]
    return NotConvertible(str(families.refuse(config, "GGUF export", f"{why}; it writes {', '.join(writes)}")))


def layout_of(config: dict) -> gguf_layouts.Layout:
    """The layout of the model's llama.cpp architecture, or NotConvertible naming the family and why."""
    family = families.family_of(config)
    model_type = families.model_type_of(config)
    if family is None or not family.gguf:
        why = gguf_layouts.NOT_CONVERTED.get(model_type, "has no llama.cpp architecture declared")
        raise _refusal(config, why)
    layout = gguf_layouts.LAYOUTS.get(family.gguf)
    if layout is None:
        raise _refusal(config, f"has llama.cpp architecture {family.gguf!r}, which modelpress's GGUF writer "
                               "does not lay out")
    if family.experts and not layout.experts:
        raise _refusal(config, f"has routed experts, which llama.cpp's {family.gguf!r} model does not take")
    hparams = gguf_layouts.Hparams(config)
    for holds, why in layout.requires:
        if not holds(hparams):
            raise _refusal(config, f"cannot be written as llama.cpp's {family.gguf!r}: {why}")
    return layout


def _gguf_architecture(config: dict) -> str:
    """llama.cpp's name for the model's family, where this writer lays that architecture out."""
    return layout_of(config).arch


def reads_in_transformers(config: dict) -> bool:
    """Whether transformers' GGUF loader rebuilds this model from the file written for it
    (services/common/engines/gguf_transformers.py says which architectures and families it reads)."""
    return gguf_transformers.reads(layout_of(config).arch, config)


def load_in_transformers(folder: Path, gguf_file: str, src: Path):
    """The GGUF as transformers' loader rebuilds it (float32, eval), with the source config.json where
    the architecture needs it (it reads only some config keys from a GGUF file)."""
    return gguf_transformers.load(folder, gguf_file, src)


def gguf_name(hf_name: str, arch: str = "llama", layers: int = 1000) -> str | None:
    """llama.cpp's name of a checkpoint tensor, from the gguf package's own TensorNameMap (the table
    convert_hf_to_gguf.py names tensors with); None for a buffer the converter leaves out."""
    if gguf_layouts.SKIPPED.search(hf_name):
        return None
    stem, dot, suffix = hf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        stem, dot, suffix = hf_name, "", ""
    name = _name_map(arch, layers).get_name(stem)
    if name is None:
        raise NotConvertible(f"tensor {hf_name} has no GGUF name in llama.cpp's {arch!r} layout")
    return f"{name}{dot}{suffix}"


_MAPS: dict = {}


def _name_map(arch: str, layers: int):
    import gguf

    key = (arch, layers)
    if key not in _MAPS:
        ids = {name: arch_id for arch_id, name in gguf.MODEL_ARCH_NAMES.items()}
        _MAPS[key] = gguf.get_tensor_name_map(ids[arch], layers)
    return _MAPS[key]


@dataclass(frozen=True)
class Tokenizer:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]
    # llama.cpp's name of the pre-tokenizer (tokenizer.ggml.pre) and the chat template, if any.
    pre: str = "default"
    chat_template: str = ""


def pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for the split before BPE, read from tokenizer.json: "gpt-2" for plain
    byte-level, "smollm" for byte-level after single digits (SmolLM's, Qwen-like), "llama-bpe"
    for Llama 3's regex; "default" (llama.cpp's fallback) for anything else."""
    if not pre_tokenizer:
        return "default"
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds[:1] == ["Split"] and "p{N}{1,3}" in json.dumps(steps[0].get("pattern", {})):
        return "llama-bpe"
    return "default"


def chat_template(folder: Path) -> str:
    """The template transformers applies: chat_template.jinja, else tokenizer_config.json's."""
    jinja = Path(folder) / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    config_path = Path(folder) / "tokenizer_config.json"
    template = json.loads(config_path.read_text()).get("chat_template") if config_path.exists() else None
    return template if isinstance(template, str) else ""


def read_tokenizer(folder: Path) -> Tokenizer:
    """The byte-level BPE vocabulary of tokenizer.json, in id order, with its special tokens."""
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise NotConvertible("GGUF needs the model's tokenizer.json (a fast tokenizer)")
    spec = json.loads(path.read_text())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise NotConvertible(f"GGUF export writes byte-level BPE tokenizers; this one is {model.get('type')}")
    if model.get("byte_fallback"):  # SentencePiece's BPE (Llama 2, Gemma, Phi-3): llama.cpp's "llama" model
        raise NotConvertible("GGUF export writes byte-level BPE tokenizers (tokenizer.ggml.model gpt2); this one is "
                             "SentencePiece-style BPE with byte fallback, which llama.cpp reads as its 'llama' "
                             "tokenizer model with scores, not written here")
    vocab = dict(model["vocab"])
    special = {}
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special[added["content"]] = added["id"]
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for token, index in vocab.items():
        tokens[index] = token
    types = [CONTROL if t in special else NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    ids = {}
    for key in ("bos", "eos", "unk", "pad"):
        token = config.get(f"{key}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token in vocab:
            ids[key] = vocab[token]
    return Tokenizer(tokens, types, merges, ids, pre_tokenizer_name(spec.get("pre_tokenizer")), chat_template(folder))


def quantize(weight: np.ndarray, kind: str, name: str = ""):
    """(data, ggml type) of one tensor. F32 whatever `kind` is where llama.cpp's converter keeps F32:
    1-D tensors, norms, biases, routers and position embeddings."""
    from gguf import GGMLQuantizationType as T, quants

    base = name.rsplit(".", 1)[0].rsplit(".", 1)[-1] if name else ""
    if weight.ndim < 2 or name.endswith("_norm.weight") or (name and not name.endswith(".weight")) \
            or base in F32_TENSORS:
        return weight.astype(np.float32), T.F32
    if kind == "f16":
        return weight.astype(np.float16), T.F16
    qtype = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1}[kind]
    if weight.shape[-1] % 32:
        return weight.astype(np.float16), T.F16  # ggml blocks are 32 along a row
    return quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), qtype), qtype


def transformed(state: dict, config: dict) -> dict:
    """The checkpoint's tensors under llama.cpp's names, transformed as its converter transforms them
    for the architecture (float32 numpy arrays, not yet typed)."""
    layout = layout_of(config)
    hparams = gguf_layouts.Hparams(config)
    tied = bool(config.get("tie_word_embeddings", False))
    out: dict[str, np.ndarray] = {}
    for hf_name, weight in gguf_layouts.normalise(state).items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = gguf_name(hf_name, layout.arch, hparams.layers)
        if name is None:
            continue
        for pattern, transform in layout.transforms:
            if re.search(pattern, hf_name):
                weight = transform(weight, hparams)
        out[name] = weight
    if layout.output_required and "output.weight" not in out:
        out["output.weight"] = out["token_embd.weight"]  # the tied head, which llama.cpp will not share
    return out | layout.extra_tensors(hparams)


def write(state: dict, config: dict, tokenizer: Tokenizer, path: Path, kind: str, name: str) -> dict:
    """Writes the GGUF; returns counts of tensors per ggml type."""
    import gguf

    if kind not in TYPES:
        raise NotConvertible(f"type: {kind!r} is not one of {', '.join(TYPES)}")
    layout = layout_of(config)
    tensors = transformed(state, config)
    writer = gguf.GGUFWriter(str(path), layout.arch)
    writer.add_name(name)
    settings: dict[str, object] = {}
    for method, value in layout.metadata(gguf_layouts.Hparams(config)):
        settings.pop(method, None)  # a later value of a key wins, as in the converter's writer
        if value is not None:
            settings[method] = value
    for method, value in settings.items():
        getattr(writer, method)(value)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[kind])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # The vocabulary as many rows as the embedding has (llama.cpp pads with unused [PADn] tokens).
    rows = int(config.get("vocab_size") or len(tokenizer.tokens))
    pad = range(len(tokenizer.tokens), rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer.pre)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_token_list(tokenizer.tokens + [f"[PAD{i}]" for i in pad])
    writer.add_token_types(tokenizer.token_types + [UNUSED] * len(pad))
    writer.add_token_merges(tokenizer.merges)
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if key in tokenizer.special_ids:
            add(tokenizer.special_ids[key])
    types: dict[str, int] = {}
    for gguf_name_, weight in tensors.items():
        data, qtype = quantize(weight, kind, gguf_name_)
        writer.add_tensor(gguf_name_, data, raw_dtype=qtype)
        types[qtype.name] = types.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


# The keys llama.cpp needs of every file here (tokenizer.ggml.* besides); {arch}-prefixed ones by suffix.
REQUIRED_KEYS = ("general.architecture", "{arch}.block_count", "{arch}.context_length", "{arch}.embedding_length",
                 "{arch}.feed_forward_length", "{arch}.attention.head_count", "tokenizer.ggml.model",
                 "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def check_file(path: Path, config: dict) -> dict:
    """What a GGUF reader finds against what llama.cpp's converter writes for the architecture:
    every tensor name one MODEL_TENSORS lists for it, the keys it needs, every layer's tensors.
    Raises NotConvertible on a mismatch; returns the figures it checked."""
    import gguf

    arch = layout_of(config).arch
    reader = gguf.GGUFReader(str(path))
    ids = {name: arch_id for arch_id, name in gguf.MODEL_ARCH_NAMES.items()}
    layers = gguf_layouts.Hparams(config).layers
    allowed = {gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[ids[arch]] for b in range(layers)}
    names = [t.name for t in reader.tensors]
    stray = sorted(n for n in names if n.rsplit(".", 1)[0] not in allowed)
    missing = [k.format(arch=arch) for k in REQUIRED_KEYS if k.format(arch=arch) not in reader.fields]
    if not any(k in reader.fields for k in (f"{arch}.attention.layer_norm_rms_epsilon",
                                            f"{arch}.attention.layer_norm_epsilon")):
        missing.append(f"{arch}.attention.layer_norm_(rms_)epsilon")
    per_layer = {n.split(".", 2)[2] for n in names if n.startswith("blk.0.")}
    uneven = [f"blk.{b}" for b in range(layers) if {n.split(".", 2)[2] for n in names
                                                    if n.startswith(f"blk.{b}.")} != per_layer]
    if stray or missing or uneven or "token_embd.weight" not in names:
        raise NotConvertible(f"{path.name}: not llama.cpp's {arch!r} layout (tensors it does not name: {stray}; "
                             f"keys missing: {missing}; layers unlike blk.0: {uneven})")
    return {"architecture": arch, "tensors": len(names), "layer_tensors": len(per_layer), "keys": len(reader.fields)}


def read_back(path: Path) -> dict:
    """What a GGUF reader finds in the file: architecture, tensor count, tensors per type."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    types: dict[str, int] = {}
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    def value(key: str):
        found = reader.fields.get(key)
        if found is None:
            return None
        part = found.parts[found.data[0]]
        return bytes(part).decode() if found.types and found.types[0] == gguf.GGUFValueType.STRING else int(part[0])

    return {"architecture": value("general.architecture"), "tensors": len(reader.tensors), "types": types,
            "tokenizer_pre": value("tokenizer.ggml.pre"),
            "quantization_version": value("general.quantization_version"),
            "chat_template_chars": len(value("tokenizer.chat_template") or "")}
