"""Float Llama-family checkpoints → GGUF, the file llama.cpp and edge runtimes load.

Written with the `gguf` package (llama.cpp's own writer): architecture metadata, the byte-level
BPE tokenizer from tokenizer.json, and every tensor under llama.cpp's names. Q and K
projections are stored row-permuted the way llama.cpp's rotary embedding reads them (transformers
un-permutes them when it loads a GGUF). Norms stay F32, as llama.cpp's converter keeps them; 2-D
weights take the requested type: F16, Q8_0 (blocks of 32, one f16 scale) or Q4_0 / Q4_1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.models import families

# The llama.cpp architectures this writer lays out (families.Family.gguf names each family's).
WRITES = ("llama",)
TYPES = ("f16", "q8_0", "q4_0", "q4_1")
# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
NORMAL, CONTROL = 1, 3

_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


class NotConvertible(ValueError):
    pass


def _gguf_architecture(config: dict) -> str:
    """llama.cpp's name for the model's family, where this writer lays that architecture out."""
    family = families.family_of(config)
    if family is None or family.gguf not in WRITES or family.experts:
        writes = [f.model_type for f in families.FAMILIES.values() if f.gguf in WRITES and not f.experts]
        why = ("has no llama.cpp architecture declared" if family is None or not family.gguf
               else "has routed experts, which modelpress's GGUF writer does not lay out" if family.experts
               else f"has llama.cpp architecture {family.gguf!r}, which modelpress's GGUF writer does not lay out")
        raise NotConvertible(str(families.refuse(config, "GGUF export", f"{why}; it writes {', '.join(writes)}")))
    return family.gguf


def gguf_name(hf_name: str) -> str:
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:])]}"
    raise NotConvertible(f"tensor {hf_name} has no GGUF name in the llama layout")


def rotary_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half rows → llama.cpp's interleaved pairs, per head."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


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


def quantize(weight: np.ndarray, kind: str):
    """(data, ggml type) of one tensor: 1-D tensors stay F32 whatever `kind` is."""
    from gguf import GGMLQuantizationType as T, quants

    if weight.ndim < 2:
        return weight.astype(np.float32), T.F32
    if kind == "f16":
        return weight.astype(np.float16), T.F16
    qtype = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1}[kind]
    if weight.shape[-1] % 32:
        return weight.astype(np.float16), T.F16  # ggml blocks are 32 along a row
    return quants.quantize(weight.astype(np.float32), qtype), qtype


def write(state: dict, config: dict, tokenizer: Tokenizer, path: Path, kind: str, name: str) -> dict:
    """Writes the GGUF; returns counts of tensors per ggml type."""
    import gguf

    if kind not in TYPES:
        raise NotConvertible(f"type: {kind!r} is not one of {', '.join(TYPES)}")
    architecture = _gguf_architecture(config)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[kind])
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
        "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer.pre)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_token_list(tokenizer.tokens)
    writer.add_token_types(tokenizer.token_types)
    writer.add_token_merges(tokenizer.merges)
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if key in tokenizer.special_ids:
            add(tokenizer.special_ids[key])
    types: dict[str, int] = {}
    tied = bool(config.get("tie_word_embeddings", False))
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        weight = tensor.float().numpy()
        if hf_name.endswith("q_proj.weight"):
            weight = rotary_permute(weight, heads)
        elif hf_name.endswith("k_proj.weight"):
            weight = rotary_permute(weight, kv_heads)
        data, qtype = quantize(weight, kind)
        writer.add_tensor(gguf_name(hf_name), data, raw_dtype=qtype)
        types[qtype.name] = types.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


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
