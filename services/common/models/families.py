"""Model families as data: one declaration per transformers `model_type`, read by every technique.

A family says where its blocks live and what each block's modules are for (attention q/k/v/o or a
fused qkv, the MLP's inputs and output, the norms whose output given Linears read), how its
embeddings are special (a head tied to them, Gemma's embedding scaled by sqrt(hidden)), where MoE
experts and their router sit, what structured pruning may cut, and the GGUF architecture llama.cpp
names it. Names are relative to the model as modelpress loads it (AutoModelForCausalLM for causal
LMs, AutoModel, bare, for encoders) for `blocks`, and relative to one block for the rest.

What a model *is* (causal LM or encoder) is not declared here: model_kinds reads it from
transformers' own auto-mappings, so a family missing from this table is still recognised and still
gets every method that needs nothing of it (RTN, GPTQ and SparseGPT on plain Linears, casts). A method
that needs a declaration calls `require`, which refuses with the family and the method named.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.contract import model_kinds
from services.common.models.model_errors import UnsupportedModelError

ONNX, OPENVINO = "ONNX", "OpenVINO"
EVERY_EXPORT = frozenset({ONNX, OPENVINO})
MOE_CAUSAL_LM = "moe-causal-lm"  # a causal LM whose MLPs are routed experts (its contract kind is causal-lm)


@dataclass(frozen=True)
class Attention:
    """Attention projections, relative to a block; `qkv` set where one Linear computes all three."""

    o: str
    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""
    # How `qkv` packs its output rows: "stacked" (all query heads, then the key heads, then the value
    # heads: Phi-3, GPT-2) or "per-head" ([heads, 3, head_dim]: GPT-NeoX). Read by head cuts.
    qkv_layout: str = ""
    # Norms over the whole query / key projection (weight [heads * head_dim], OLMo2), cut with their rows.
    q_norm: str = ""
    k_norm: str = ""

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)


@dataclass(frozen=True)
class Mlp:
    inputs: tuple[str, ...]  # Linears whose output rows are the neurons (gate, up / intermediate; or fused gate_up)
    output: str  # the Linear whose input columns are the neurons (down / output)
    # How many neuron-sized row blocks each input stacks: 2 where one Linear computes both halves of a
    # GLU (Phi-3's gate_up_proj, ModernBERT's Wi); a cut keeps the same neurons in every block.
    stacked: int = 1
    width_key: str = "intermediate_size"  # the config field that sets the MLP width


@dataclass(frozen=True)
class Experts:
    """A routed MLP: the experts' module and the router Linear choosing among them, relative to a block."""

    experts: str
    router: str
    # The experts' fused parameters (transformers 5): gate_up [experts, 2·width, hidden] (gate rows, then
    # up rows), down [experts, hidden, width]; and the config field setting their width (structured cuts).
    gate_up: str = "gate_up_proj"
    down: str = "down_proj"
    width_key: str = "intermediate_size"
    # Linears besides the router that weigh the experts' outputs (Qwen2-MoE's shared_expert_gate): kept
    # float with the router, as llm-compressor's MoE recipes keep them (one row each; every token reads them).
    gates: tuple[str, ...] = ()
    # How quantized experts come back in stock transformers (the tiny-model matrix checked it): the
    # checkpoint stores each expert's projections as compressed-tensors Linears under their per-expert
    # names; transformers' conversion mapping dequantizes them while merging them into its fused 3-D tensors.
    reload: str = ("experts stored as packed per-expert INT4/INT8 Linears (compressed-tensors, under the "
                   "checkpoint's own per-expert names); stock transformers dequantizes them on load into its "
                   "fused expert tensors and computes them in float; the experts' activations stay float")


@dataclass(frozen=True)
class Family:
    model_type: str
    blocks: str  # the ModuleList of repeated blocks
    attention: Attention
    mlp: Mlp | None  # None where every block's MLP is routed experts
    # (norm, the Linears reading its output): where AWQ / SmoothQuant fold a scale into the norm.
    # Empty where a block is post-norm (BERT) or a norm feeds the residual too.
    norm_readers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    embedding: str = ""  # the token embedding, relative to the model
    scaled_embedding: bool = False  # the embedding's output is multiplied by a buffer (Gemma: sqrt(hidden))
    experts: Experts | None = None
    # Block Linears that are transformers' Conv1D (weight stored input-major, as GPT-2 does). The
    # quantizer takes them as Linears and writes them transposed back, which stock transformers
    # reloads only dequantized at load (services/quantizer/ct_format.py).
    conv1d: bool = False
    gguf: str = ""  # llama.cpp's architecture name, where its converter takes the family
    # Stock transformers reloads compressed-tensors' packed Linears (weight_packed in place of weight)
    # as they are. False: its weight init reads each Linear's .weight, so a packed checkpoint is written
    # with "dequantize": true (transformers dequantizes it at load; one scheme per checkpoint).
    reloads_packed: bool = True
    # The engines the optimizer's exports reach and check for this family (ONNX, OPENVINO), as the
    # compatibility matrix (tests/compat) found them; a family left out is refused before the export.
    exports: frozenset[str] = EVERY_EXPORT
    export_note: str = ""  # why an export is left out
    # Where the block-by-block loader cannot follow how transformers converts the checkpoint on load,
    # why. It follows transformers' own conversion mapping (streaming.CheckpointConversion): renamings
    # (GPT-NeoX's embed_out → lm_head) and per-expert tensors merged into fused experts (kept split, one
    # Linear per expert projection); it refuses any other conversion itself, naming the family.
    renamed_checkpoint: str = ""
    # Which structured cuts stock transformers reloads from a rewritten config: "layers", "mlp", "heads".
    structured: frozenset[str] = field(default_factory=frozenset)
    structured_note: str = ""  # why a structured cut is left out (the refusal quotes it)

    @property
    def kind(self) -> str | None:
        """causal-lm / moe-causal-lm / encoder: the contract kind, from transformers' auto-mappings."""
        kind = model_kinds.kind_of({"model_type": self.model_type})
        return MOE_CAUSAL_LM if kind == model_kinds.CAUSAL_LM and self.experts else kind


def _llama_like(model_type: str, *, gguf: str = "", structured: frozenset[str] = frozenset(),
                post_attention_norm: str = "post_attention_layernorm", scaled_embedding: bool = False,
                experts: Experts | None = None, exports: frozenset[str] = EVERY_EXPORT,
                export_note: str = "", renamed_checkpoint: str = "", structured_note: str = "") -> Family:
    """`model.layers` of q/k/v/o attention and a gate/up/down MLP (or routed experts), pre-norm."""
    attention = Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj")
    mlp = None if experts else Mlp(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")
    norms: tuple[tuple[str, tuple[str, ...]], ...] = (("input_layernorm", attention.inputs),)
    if mlp:
        norms += ((post_attention_norm, mlp.inputs),)
    return Family(model_type, "model.layers", attention, mlp, norms, embedding="model.embed_tokens",
                  scaled_embedding=scaled_embedding, experts=experts, gguf=gguf, structured=structured,
                  exports=exports, export_note=export_note, renamed_checkpoint=renamed_checkpoint,
                  structured_note=structured_note)


def _bert_like(model_type: str, *, structured: frozenset[str] = frozenset()) -> Family:
    """`encoder.layer` of BERT's self-attention and intermediate/output MLP, post-norm."""
    return Family(model_type, "encoder.layer",
                  Attention(q="attention.self.query", k="attention.self.key", v="attention.self.value",
                            o="attention.output.dense"),
                  Mlp(("intermediate.dense",), "output.dense"), embedding="embeddings.word_embeddings",
                  structured=structured, structured_note=derived_head_size("hidden_size / num_attention_heads"))


# Cuts stock transformers reloads: Llama-style configs carry head_dim, so fewer heads reload; BERT
# derives the head size from hidden_size / num_attention_heads, so only layers and MLP neurons.
LLAMA_CUTS = frozenset({"layers", "mlp", "heads"})
BERT_CUTS = frozenset({"layers", "mlp"})
MLP_CUTS = BERT_CUTS  # layers and MLP neurons, no heads (the family derives its head size)


def derived_head_size(formula: str) -> str:
    """Why heads are not cut where the model derives its head size from the width (structured_note)."""
    return (f"derives the head size from {formula}, so fewer heads at the same width do not reload in stock "
            "transformers; prune layers or MLP neurons instead")


_DECLARED = (
    _llama_like("llama", gguf="llama", structured=LLAMA_CUTS),
    # llama.cpp converts Mistral as llama (transformers' GGUF loader reads that file back as Llama).
    _llama_like("mistral", gguf="llama", structured=LLAMA_CUTS),
    _llama_like("qwen2", gguf="qwen2", structured=LLAMA_CUTS),
    _llama_like("qwen3", gguf="qwen3", structured=LLAMA_CUTS),
    _llama_like("smollm3", gguf="smollm3", structured=LLAMA_CUTS),
    _llama_like("granite", gguf="granite", structured=LLAMA_CUTS),
    _llama_like("stablelm", gguf="stablelm", structured=MLP_CUTS,
                structured_note=derived_head_size("hidden_size / num_attention_heads (StableLmAttention)")),
    # OLMo2 normalises after attention and after the MLP (outputs, not inputs): nothing to fold into.
    # Its q/k norms span all heads: a head cut keeps their kept rows (the RMS is then over the kept heads).
    Family("olmo2", "model.layers",
           Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
                     q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
           Mlp(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"), embedding="model.embed_tokens", gguf="olmo2",
           structured=LLAMA_CUTS),
    _llama_like("gemma2", gguf="gemma2", post_attention_norm="pre_feedforward_layernorm", scaled_embedding=True,
                structured=LLAMA_CUTS),
    _llama_like("gemma3_text", gguf="gemma3", post_attention_norm="pre_feedforward_layernorm",
                scaled_embedding=True, structured=LLAMA_CUTS),
    Family("phi3", "model.layers", Attention(qkv="self_attn.qkv_proj", o="self_attn.o_proj", qkv_layout="stacked"),
           Mlp(("mlp.gate_up_proj",), "mlp.down_proj", stacked=2),
           (("input_layernorm", ("self_attn.qkv_proj",)), ("post_attention_layernorm", ("mlp.gate_up_proj",))),
           embedding="model.embed_tokens", gguf="phi3", structured=LLAMA_CUTS),
    Family("gpt2", "transformer.h", Attention(qkv="attn.c_attn", o="attn.c_proj", qkv_layout="stacked"),
           Mlp(("mlp.c_fc",), "mlp.c_proj", width_key="n_inner"),
           (("ln_1", ("attn.c_attn",)), ("ln_2", ("mlp.c_fc",))), embedding="transformer.wte", conv1d=True,
           gguf="gpt2", structured=MLP_CUTS, structured_note=derived_head_size("n_embd / n_head (GPT2Attention)")),
    # GPT-NeoX's parallel residual feeds one block input to attention and MLP through separate norms.
    Family("gpt_neox", "gpt_neox.layers",
           Attention(qkv="attention.query_key_value", o="attention.dense", qkv_layout="per-head"),
           Mlp(("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
           (("input_layernorm", ("attention.query_key_value",)), ("post_attention_layernorm", ("mlp.dense_h_to_4h",))),
           embedding="gpt_neox.embed_in", gguf="gptneox",
           structured=MLP_CUTS,
           structured_note=derived_head_size("hidden_size / num_attention_heads (GPTNeoXAttention)")),
    # No gguf: llama.cpp's converter has no OPT architecture (gguf_layouts.NOT_CONVERTED says why).
    # OPT normalises before attention and MLP (do_layer_norm_before); OPT-350m alone normalises after, and
    # would need its norms left out here.
    Family("opt", "model.decoder.layers",
           Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj"),
           Mlp(("fc1",), "fc2", width_key="ffn_dim"),
           (("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("final_layer_norm", ("fc1",))), embedding="model.decoder.embed_tokens", structured=MLP_CUTS,
           structured_note=derived_head_size("hidden_size / num_attention_heads (OPTAttention)")),
    # Falcon's norms depend on the config (one shared norm, or ln_attn / ln_mlp): none declared. Its
    # _init_weights reads every FalconLinear's .weight: a packed checkpoint reloads dequantized (reloads_packed).
    Family("falcon", "transformer.h", Attention(qkv="self_attention.query_key_value", o="self_attention.dense"),
           Mlp(("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", width_key="ffn_hidden_size"),
           embedding="transformer.word_embeddings", structured=MLP_CUTS,
           structured_note=derived_head_size("hidden_size / num_attention_heads (FalconAttention)"),
           gguf="falcon", reloads_packed=False),
    _llama_like("mixtral", gguf="llama", experts=Experts("mlp.experts", "mlp.gate"), structured=LLAMA_CUTS),
    _llama_like("qwen2_moe", gguf="qwen2moe",
                experts=Experts("mlp.experts", "mlp.gate", gates=("mlp.shared_expert_gate",),
                                width_key="moe_intermediate_size"), structured=LLAMA_CUTS),
    _llama_like("qwen3_moe", gguf="qwen3moe", experts=Experts("mlp.experts", "mlp.gate",
                                                               width_key="moe_intermediate_size"),
                structured=LLAMA_CUTS),
    _bert_like("bert", structured=BERT_CUTS),
    _bert_like("roberta", structured=BERT_CUTS),
    _bert_like("xlm-roberta", structured=BERT_CUTS),
    _bert_like("electra", structured=BERT_CUTS),
    Family("distilbert", "transformer.layer",
           Attention(q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", o="attention.out_lin"),
           Mlp(("ffn.lin1",), "ffn.lin2", width_key="hidden_dim"), embedding="embeddings.word_embeddings",
           structured=BERT_CUTS, structured_note=derived_head_size("dim / n_heads (DistilBertSelfAttention)")),
    Family("deberta-v2", "encoder.layer",
           Attention(q="attention.self.query_proj", k="attention.self.key_proj", v="attention.self.value_proj",
                     o="attention.output.dense"),
           Mlp(("intermediate.dense",), "output.dense"), embedding="embeddings.word_embeddings",
           structured=BERT_CUTS,
           structured_note="keeps per-head relative-position projections (pos_key_proj / pos_query_proj) a head "
                           "cut would have to follow; heads are not declared for it"),
    Family("mpnet", "encoder.layer",
           Attention(q="attention.attn.q", k="attention.attn.k", v="attention.attn.v", o="attention.attn.o"),
           Mlp(("intermediate.dense",), "output.dense"), embedding="embeddings.word_embeddings",
           structured=BERT_CUTS, structured_note=derived_head_size("hidden_size / num_attention_heads")),
    # ModernBERT's weight init reads every Linear's .weight, as Falcon's does (reloads_packed).
    Family("modernbert", "layers", Attention(qkv="attn.Wqkv", o="attn.Wo", qkv_layout="stacked"),
           Mlp(("mlp.Wi",), "mlp.Wo", stacked=2),
           (("mlp_norm", ("mlp.Wi",)),), embedding="embeddings.tok_embeddings", reloads_packed=False,
           structured=BERT_CUTS, structured_note=derived_head_size("hidden_size / num_attention_heads")),
)

FAMILIES: Mapping[str, Family] = {f.model_type: f for f in _DECLARED}


def model_type_of(config) -> str:
    """The model_type of a config.json's contents (a dict) or of a transformers config object."""
    value = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", "")
    return value or ""


def family_of(config) -> Family | None:
    """The declared family of a config (dict or object); None for a family this table does not declare."""
    return FAMILIES.get(model_type_of(config))


def require(config, method: str, needs: str = "") -> Family:
    """The declared family, or UnsupportedModelError (FAILED_PRECONDITION) naming the family and the
    method: for a method that reads what only a declaration says (`needs` says what, for the message)."""
    model_type = model_type_of(config) or "unknown"
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"{method}: model family {model_type!r} is not declared in modelpress's family table"
            f"{f' ({needs})' if needs else ''}; declared: {', '.join(FAMILIES)}")
    return family


def refuse(config, method: str, why: str) -> UnsupportedModelError:
    """The refusal of `method` for this config's family, naming both and why."""
    return UnsupportedModelError(f"{method}: model family {model_type_of(config) or 'unknown'!r} {why}")


def check_export(config, engine: str) -> None:
    """Refuses, naming the family, an export (ONNX, OPENVINO) its declaration leaves out; an undeclared
    family is tried."""
    family = family_of(config)
    if family is not None and engine not in family.exports:
        reaches = [f.model_type for f in FAMILIES.values() if engine in f.exports]
        raise refuse(config, f"{engine} export", f"does not convert to {engine} here ({family.export_note}); "
                                                 f"families that do: {', '.join(reaches)}")


def expert_gates(model) -> set[str]:
    """The full names of the modules routing or weighing experts (Experts.router and .gates) in every
    block of a loaded model, which weight quantization and pruning leave float; empty for a dense family."""
    family = family_of(getattr(model, "config", None))
    if family is None or family.experts is None:
        return set()
    own = (family.experts.router, *family.experts.gates)
    return {name for name, _ in model.named_modules()
            if name.startswith(family.blocks + ".") and any(name.endswith("." + o) for o in own)}


def check_streamable(config) -> None:
    """Refuses, naming the family, the block-by-block loader (calibrated and weight-only methods) where
    the family declares a checkpoint conversion it cannot follow (`Family.renamed_checkpoint`)."""
    family = family_of(config)
    if family is not None and family.renamed_checkpoint:
        raise refuse(config, "block-by-block loading (weight quantization, calibrated pruning)",
                     f"cannot be streamed: {family.renamed_checkpoint}, which the streamed loader does not "
                     "follow; methods that load it whole (casts) take it")


def is_causal_lm(model) -> bool:
    """Whether a loaded model is a causal LM, by its config's kind (transformers' auto-mappings), not
    by its class name (GPT-2's head is GPT2LMHeadModel)."""
    return model_kinds.kind_of_type(model_type_of(getattr(model, "config", None))) == model_kinds.CAUSAL_LM
