"""What llama.cpp's converter (convert_hf_to_gguf.py) writes for each architecture, as data.

One `Layout` per llama.cpp architecture: the metadata keys its model class writes, the weight
transforms it applies before naming a tensor, and where its rotary embedding wants Q/K rows. Tensor
*names* are not declared here: they come from the `gguf` package's own TensorNameMap (the table the
converter itself maps HF names with), so every name written is one MODEL_TENSORS lists for the arch.

Before a layout applies, a checkpoint is brought to the names the converter maps: per-index tensors
(MoE experts, StableLM's per-head Q/K norms) are stacked into one tensor, and transformers 5's fused
3-D expert projections (`mlp.experts.gate_up_proj` [E, 2I, H]) are split into gate and up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from services.common.engines import gguf_transformers

# Families whose GGUF llama.cpp's converter does not write, and why (the refusal names it).
NOT_CONVERTED = {
    "opt": "has no architecture in llama.cpp: its converter (convert_hf_to_gguf.py) takes no OPT model",
}

# Tensors the converter leaves out: buffers a checkpoint may carry that no architecture reads.
SKIPPED = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias|\.masked_bias)$")


class Hparams:
    """The config.json of a checkpoint, read the way the converter reads it (first name found)."""

    def __init__(self, config: Mapping):
        self.config = dict(config)
        rope = self.config.get("rope_parameters") or self.config.get("rope_scaling") or {}
        self.rope_all = rope
        self.rope_full = rope.get("full_attention", rope) if isinstance(rope, Mapping) else {}

    def get(self, *names: str, default=None):
        for name in names:
            if self.config.get(name) is not None:
                return self.config[name]
        return default

    def rope(self, name: str, default=None):
        """A rope setting: rope_parameters (transformers 5) first, then the config's top level."""
        value = self.rope_full.get(name) if isinstance(self.rope_full, Mapping) else None
        return value if value is not None else self.get(name, default=default)

    @property
    def heads(self) -> int:
        return int(self.get("num_attention_heads", "n_head", "n_heads"))

    @property
    def kv_heads(self) -> int:
        return int(self.get("num_key_value_heads", "n_kv_heads", default=self.heads))

    @property
    def hidden(self) -> int:
        return int(self.get("hidden_size", "n_embd", "dim"))

    @property
    def layers(self) -> int:
        return int(self.get("num_hidden_layers", "n_layer", "n_layers", "num_layers"))

    @property
    def head_dim(self) -> int:
        return int(self.get("head_dim", default=self.hidden // self.heads))


# ---- metadata: (GGUFWriter method, value) pairs; None values are not written, later pairs win ----

Metadata = list[tuple[str, object]]


def dimensions(h: Hparams) -> Metadata:
    """The model's dimensions, as every converter class writes them (those writing their own list too)."""
    return [
        ("add_block_count", h.layers),
        ("add_context_length", h.get("max_position_embeddings", "n_ctx", "n_positions")),
        ("add_embedding_length", h.get("hidden_size", "n_embd", "dim")),
        ("add_feed_forward_length", h.get("intermediate_size", "n_inner", "hidden_dim")),
        ("add_head_count", h.get("num_attention_heads", "n_head", "n_heads")),
        ("add_head_count_kv", h.get("num_key_value_heads", "n_kv_heads")),
    ]


def text_model(h: Hparams) -> Metadata:
    """TextModel.set_gguf_parameters: the keys every architecture class starts from."""
    pairs = dimensions(h)
    rope_type, factor = h.rope("rope_type"), h.rope("factor")
    if rope_type == "linear" and factor is not None:
        pairs += [("add_rope_scaling_type", _rope_scaling("LINEAR")), ("add_rope_scaling_factor", float(factor))]
    elif rope_type == "yarn" and factor is not None:
        pairs += [("add_rope_scaling_type", _rope_scaling("YARN")), ("add_rope_scaling_factor", float(factor)),
                  ("add_rope_scaling_orig_ctx_len", h.rope("original_max_position_embeddings"))]
    theta = h.rope("rope_theta")
    swa = h.rope_all.get("sliding_attention", {}).get("rope_theta") if isinstance(h.rope_all, Mapping) else None
    pairs += [
        ("add_rope_freq_base", _float(theta)),
        ("add_rope_freq_base_swa", _float(swa)),
        ("add_layer_norm_rms_eps", _float(h.get("rms_norm_eps", "norm_eps"))),
        ("add_layer_norm_eps", _float(h.get("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"))),
        ("add_expert_count", h.get("num_local_experts", "num_experts", "n_routed_experts")),
        ("add_expert_used_count", h.get("num_experts_per_tok", "num_experts_per_token")),
        ("add_key_length", h.get("head_dim")),
        ("add_value_length", h.get("head_dim")),
    ]
    return pairs


def llama(h: Hparams) -> Metadata:
    """LlamaModel (and Mistral, Mixtral, SmolLM3): the vocabulary size and the rotary width."""
    return text_model(h) + [("add_vocab_size", h.get("vocab_size")), ("add_rope_dimension_count", h.head_dim)]


def granite(h: Hparams) -> Metadata:
    """GraniteModel: Llama without head_dim, plus its four multipliers (logit scale is required)."""
    without_head_dim = Hparams({k: v for k, v in h.config.items() if k != "head_dim"})
    return llama(without_head_dim) + [
        ("add_attention_scale", _float(h.get("attention_multiplier"))),
        ("add_embedding_scale", _float(h.get("embedding_multiplier"))),
        ("add_residual_scale", _float(h.get("residual_multiplier"))),
        ("add_logit_scale", float(h.get("logits_scaling", default=1.0))),
    ]


def qwen_moe(h: Hparams) -> Metadata:
    """Qwen2MoeModel / Qwen3MoeModel: the experts' (and the shared expert's) MLP widths."""
    return text_model(h) + [("add_expert_feed_forward_length", h.get("moe_intermediate_size")),
                            ("add_expert_shared_feed_forward_length", h.get("shared_expert_intermediate_size"))]


def olmo2(h: Hparams) -> Metadata:
    return text_model(h) + [("add_sliding_window", h.get("sliding_window"))]


def stablelm(h: Hparams) -> Metadata:
    """StableLMModel writes its own list: partial rotary width, parallel residual, LayerNorm eps."""
    return dimensions(h) + [
        ("add_rope_dimension_count", int(float(h.rope("partial_rotary_factor", 0.25)) * (h.hidden // h.heads))),
        ("add_parallel_residual", bool(h.get("use_parallel_residual", default=True))),
        ("add_layer_norm_eps", float(h.get("layer_norm_eps", "norm_eps"))),
    ]


def gemma2(h: Hparams) -> Metadata:
    return dimensions(h) + [
        ("add_layer_norm_rms_eps", float(h.get("rms_norm_eps"))),
        ("add_key_length", h.head_dim),
        ("add_value_length", h.head_dim),
        ("add_attn_logit_softcapping", _float(h.get("attn_logit_softcapping"))),
        ("add_final_logit_softcapping", _float(h.get("final_logit_softcapping"))),
        ("add_sliding_window", h.get("sliding_window")),
        # Not written by the converter (llama.cpp then takes 10000); written here from the config.
        ("add_rope_freq_base", _float(h.rope("rope_theta"))),
    ]


def gemma3(h: Hparams) -> Metadata:
    return text_model(h) + [
        ("add_context_length", h.get("max_position_embeddings", default=131072)),
        ("add_head_count", h.get("num_attention_heads", default=8)),
        ("add_layer_norm_rms_eps", float(h.get("rms_norm_eps", default=1e-6))),
        ("add_key_length", h.get("head_dim", default=256)),
        ("add_value_length", h.get("head_dim", default=256)),
        ("add_rope_freq_base", float(h.rope("rope_theta", 1_000_000.0))),  # the global layers'
        ("add_final_logit_softcapping", _float(h.get("final_logit_softcapping"))),
        ("add_sliding_window", h.get("sliding_window") if h.get("sliding_window_pattern") != 1 else None),
        ("add_head_count_kv", h.get("num_key_value_heads", default=4)),
    ]


def phi3(h: Hparams) -> Metadata:
    rotary = float(h.rope("partial_rotary_factor", 1.0))
    return [
        ("add_context_length", h.get("max_position_embeddings", "n_positions")),
        ("add_rope_scaling_orig_ctx_len", h.rope("original_max_position_embeddings")),
        ("add_embedding_length", h.hidden),
        ("add_feed_forward_length", h.get("intermediate_size")),
        ("add_block_count", h.layers),
        ("add_head_count", h.heads),
        ("add_head_count_kv", h.kv_heads),
        ("add_layer_norm_rms_eps", float(h.get("rms_norm_eps"))),
        ("add_rope_dimension_count", int(rotary * h.hidden) // h.heads),
        ("add_rope_freq_base", float(h.rope("rope_theta", 10000.0))),
        ("add_sliding_window", h.get("sliding_window", default=0)),  # 0 marks "none" (Phi-4 vs Phi-3)
    ]


def gpt2(h: Hparams) -> Metadata:
    return [
        ("add_block_count", h.layers),
        ("add_context_length", h.get("n_ctx", "n_positions")),
        ("add_embedding_length", h.hidden),
        ("add_feed_forward_length", h.get("n_inner", default=4 * h.hidden)),
        ("add_head_count", h.heads),
        ("add_layer_norm_eps", float(h.get("layer_norm_epsilon"))),
    ]


def gptneox(h: Hparams) -> Metadata:
    rotary = float(h.rope("partial_rotary_factor", h.get("rotary_pct", default=1.0)))
    return [
        ("add_context_length", h.get("max_position_embeddings")),
        ("add_embedding_length", h.hidden),
        ("add_block_count", h.layers),
        ("add_feed_forward_length", h.get("intermediate_size")),
        ("add_rope_dimension_count", int(rotary * (h.hidden // h.heads))),
        ("add_head_count", h.heads),
        ("add_parallel_residual", bool(h.get("use_parallel_residual", default=True))),
        ("add_layer_norm_eps", float(h.get("layer_norm_eps"))),
    ]


def falcon_kv_heads(h: Hparams) -> int:
    """The KV heads Falcon's attention really has (gguf_transformers.falcon_kv_heads)."""
    return gguf_transformers.falcon_kv_heads(h.config)


def falcon(h: Hparams) -> Metadata:
    """FalconModel. The converter writes a context length of 2048 ("not in config.json"); transformers
    configs carry max_position_embeddings, which is written where present."""
    return [
        ("add_context_length", h.get("max_position_embeddings", default=2048)),
        ("add_tensor_data_layout", "jploski"),  # the qkv regrouping below
        ("add_embedding_length", h.hidden),
        ("add_feed_forward_length", h.get("ffn_hidden_size", default=4 * h.hidden)),
        ("add_block_count", h.layers),
        ("add_head_count", h.heads),
        ("add_head_count_kv", falcon_kv_heads(h)),
        ("add_layer_norm_eps", float(h.get("layer_norm_epsilon"))),
        # Not written by the converter (llama.cpp then takes 10000); written here from the config.
        ("add_rope_freq_base", None if h.get("alibi") else _float(h.rope("rope_theta"))),
    ]


def _float(value):
    return None if value is None else float(value)


def _rope_scaling(name: str):
    import gguf

    return getattr(gguf.RopeScalingType, name)


# ---- weight transforms, applied to a tensor under its HF name before it is named ----

Transform = Callable[[np.ndarray, Hparams], np.ndarray]


def rotary_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half rows → llama.cpp's interleaved pairs, per head (LlamaModel.permute)."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def permute_q(weight: np.ndarray, h: Hparams) -> np.ndarray:
    return rotary_permute(weight, h.heads)


def permute_k(weight: np.ndarray, h: Hparams) -> np.ndarray:
    return rotary_permute(weight, h.kv_heads)


def squeeze(weight: np.ndarray, h: Hparams) -> np.ndarray:
    return weight.reshape(-1)


def plus_one(weight: np.ndarray, h: Hparams) -> np.ndarray:
    """Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by the weight, so 1 is added."""
    return weight + 1


def transpose(weight: np.ndarray, h: Hparams) -> np.ndarray:
    """GPT-2's Conv1D stores [in, out]; ggml wants [out, in] rows."""
    return np.ascontiguousarray(weight.T)


def neox_qkv(weight: np.ndarray, h: Hparams) -> np.ndarray:
    """GPT-NeoX fuses q, k, v per head ([heads, 3, head_dim]); llama.cpp reads all q, then k, then v."""
    rows = weight.reshape(h.heads, 3, h.hidden // h.heads, *weight.shape[1:])
    return np.concatenate([rows[:, i].reshape(-1, *weight.shape[1:]) for i in range(3)]).reshape(weight.shape)


def falcon_qkv(weight: np.ndarray, h: Hparams) -> np.ndarray:
    """Falcon groups each KV head's queries with its key and value; llama.cpp ("jploski" layout)
    reads all queries, then the keys, then the values."""
    kv, head_dim = falcon_kv_heads(h), h.hidden // h.heads
    groups = weight.reshape(kv, h.heads // kv + 2, head_dim, *weight.shape[1:])
    q = groups[:, :-2].reshape(-1, *weight.shape[1:])
    k = groups[:, -2].reshape(-1, *weight.shape[1:])
    v = groups[:, -1].reshape(-1, *weight.shape[1:])
    return np.concatenate([q, k, v]).reshape(weight.shape)


def llama3_rope_freqs(h: Hparams) -> dict[str, np.ndarray]:
    """LlamaModel's rope_freqs tensor for Llama 3's rope scaling (rope_type "llama3"): the factor
    each rotary frequency is divided by, 1 for the fast ones, `factor` for the slow ones, smoothed
    between; llama.cpp reads it in place of transformers' rescaled inv_freq."""
    if str(h.rope("rope_type", "")).lower() != "llama3":
        return {}
    base, dim = float(h.rope("rope_theta", 10000.0)), h.head_dim
    factor = float(h.rope("factor", 8.0))
    low, high = float(h.rope("low_freq_factor", 1.0)), float(h.rope("high_freq_factor", 4.0))
    context = float(h.rope("original_max_position_embeddings", 8192))
    wavelengths = 2 * np.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    smooth = np.clip((context / wavelengths - low) / (high - low), 0.0, 1.0)
    factors = 1 / ((1 - smooth) / factor + smooth)  # 1 where short waves (smooth 1), factor where long (0)
    return {"rope_freqs.weight": factors.astype(np.float32)}


# HF-name patterns (re.search) → transform.
LLAMA_ROTARY = ((r"q_proj\.(weight|bias)$", permute_q), (r"k_proj\.(weight|bias)$", permute_k))
GEMMA_NORMS = ((r"norm\.weight$", plus_one),)


@dataclass(frozen=True)
class Layout:
    arch: str  # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    metadata: Callable[[Hparams], Metadata]
    transforms: tuple[tuple[str, Transform], ...] = ()
    experts: bool = False  # whether llama.cpp's model for the arch takes routed experts
    # llama.cpp's model requires output.weight (no fallback to token_embd): a tied head is written out.
    output_required: bool = False
    extra_tensors: Callable[[Hparams], dict[str, np.ndarray]] = lambda h: {}  # tensors the converter adds
    # Per-checkpoint preconditions: (test on the config, why llama.cpp would compute something else).
    requires: tuple[tuple[Callable[[Hparams], bool], str], ...] = field(default=())


def _smollm3_nope(h: Hparams) -> bool:
    """llama.cpp hard-codes SmolLM3's rope-less layers as every 4th (n_no_rope_layer_step = 4)."""
    flags = h.get("no_rope_layers")
    return flags is None or list(flags) == [int((i + 1) % 4 != 0) for i in range(h.layers)]


LAYOUTS: Mapping[str, Layout] = {layout.arch: layout for layout in (
    # Llama, Mistral (llama.cpp converts it as llama) and Mixtral (llama with routed experts). Which of
    # these files transformers' GGUF loader reads back: services/common/engines/gguf_transformers.py.
    Layout("llama", llama, LLAMA_ROTARY, experts=True, extra_tensors=llama3_rope_freqs),
    Layout("smollm3", llama, LLAMA_ROTARY, extra_tensors=llama3_rope_freqs,
           requires=((_smollm3_nope, "its rope-less layers are not every 4th, the step llama.cpp hard-codes"),)),
    Layout("granite", granite, LLAMA_ROTARY),
    Layout("qwen2", text_model),
    Layout("qwen3", text_model),
    # The shared expert's gate is one row: written 1-D, as llama.cpp loads it ({n_embd}).
    Layout("qwen2moe", qwen_moe, ((r"shared_expert_gate\.weight$", squeeze),), experts=True,
           output_required=True),
    Layout("qwen3moe", qwen_moe, experts=True),
    Layout("stablelm", stablelm, output_required=True),
    Layout("olmo2", olmo2, output_required=True),
    Layout("gemma2", gemma2, GEMMA_NORMS),
    Layout("gemma3", gemma3, GEMMA_NORMS),
    Layout("phi3", phi3,
           requires=((lambda h: not h.rope("long_factor"), "its LongRoPE factors are not written here"),)),
    Layout("gpt2", gpt2, ((r"\.(c_attn|c_proj|c_fc)\.weight$", transpose),)),
    Layout("gptneox", gptneox, ((r"attention\.query_key_value\.(weight|bias)$", neox_qkv),), output_required=True),
    Layout("falcon", falcon, ((r"query_key_value\.(weight|bias)$", falcon_qkv),)),
)}


# ---- checkpoint normalisation: the names the converter's TensorNameMap takes ----

# Per-index tensors stacked into one along a new first axis: (pattern, stacked name).
STACKED = (
    (re.compile(r"^(?P<pre>.*\.experts)\.(?P<index>\d+)\.(?P<post>\w+\.weight)$"), "{pre}.{post}"),
    (re.compile(r"^(?P<pre>.*\.[qk]_layernorm)\.norms\.(?P<index>\d+)\.(?P<post>weight)$"), "{pre}.{post}"),
)
FUSED_GATE_UP = re.compile(r"^(?P<pre>.*\.experts)\.gate_up_proj(\.weight)?$")
FUSED_DOWN = re.compile(r"^(?P<pre>.*\.experts)\.down_proj$")


def normalise(state: Mapping) -> dict:
    """The checkpoint's tensors under the names the converter maps, as float32 numpy arrays."""
    out: dict[str, np.ndarray] = {}
    stacks: dict[str, dict[int, np.ndarray]] = {}
    for name, tensor in state.items():
        weight = tensor.float().numpy() if hasattr(tensor, "float") else np.asarray(tensor, dtype=np.float32)
        for pattern, target in STACKED:
            if match := pattern.match(name):
                stacks.setdefault(target.format(**match.groupdict()), {})[int(match["index"])] = weight
                break
        else:
            if match := FUSED_GATE_UP.match(name):  # [E, 2I, H]: gate rows first, then up
                half = weight.shape[-2] // 2
                out[f"{match['pre']}.gate_proj.weight"] = weight[..., :half, :]
                out[f"{match['pre']}.up_proj.weight"] = weight[..., half:, :]
            elif match := FUSED_DOWN.match(name):
                out[f"{match['pre']}.down_proj.weight"] = weight
            else:
                out[name] = weight
    for name, parts in stacks.items():
        if sorted(parts) != list(range(len(parts))):
            raise ValueError(f"{name}: indices {sorted(parts)} are not 0..{len(parts) - 1}")
        out[name] = np.stack([parts[i] for i in range(len(parts))])
    return out
