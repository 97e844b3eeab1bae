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

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)


@dataclass(frozen=True)
class Mlp:
    inputs: tuple[str, ...]  # Linears whose output rows are the neurons (gate, up / intermediate; or fused gate_up)
    output: str  # the Linear whose input columns are the neurons (down / output)


@dataclass(frozen=True)
class Experts:
    """A routed MLP: the experts' module and the router Linear choosing among them, relative to a block."""

    experts: str
    router: str


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
    # Block Linears that are transformers' Conv1D (weight stored input-major, as GPT-2 does).
    conv1d: bool = False
    gguf: str = ""  # llama.cpp's architecture name, where its converter takes the family
    # Stock transformers reloads compressed-tensors' packed Linears (weight_packed in place of weight).
    reloads_packed: bool = True
    # The engines the optimizer's exports reach and check for this family (ONNX, OPENVINO), as the
    # compatibility matrix (tests/compat) found them; a family left out is refused before the export.
    exports: frozenset[str] = EVERY_EXPORT
    export_note: str = ""  # why an export is left out
    # Where the checkpoint names tensors otherwise than the model transformers builds (it renames or
    # fuses them on load), why: the block-by-block loader reads the checkpoint by the model's names.
    renamed_checkpoint: str = ""
    # Which structured cuts stock transformers reloads from a rewritten config: "layers", "mlp", "heads".
    structured: frozenset[str] = field(default_factory=frozenset)

    @property
    def kind(self) -> str | None:
        """causal-lm / moe-causal-lm / encoder: the contract kind, from transformers' auto-mappings."""
        kind = model_kinds.kind_of({"model_type": self.model_type})
        return MOE_CAUSAL_LM if kind == model_kinds.CAUSAL_LM and self.experts else kind


def _llama_like(model_type: str, *, gguf: str = "", structured: frozenset[str] = frozenset(),
                post_attention_norm: str = "post_attention_layernorm", scaled_embedding: bool = False,
                experts: Experts | None = None, exports: frozenset[str] = EVERY_EXPORT,
                export_note: str = "", renamed_checkpoint: str = "") -> Family:
    """`model.layers` of q/k/v/o attention and a gate/up/down MLP (or routed experts), pre-norm."""
    attention = Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj")
    mlp = None if experts else Mlp(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")
    norms: tuple[tuple[str, tuple[str, ...]], ...] = (("input_layernorm", attention.inputs),)
    if mlp:
        norms += ((post_attention_norm, mlp.inputs),)
    return Family(model_type, "model.layers", attention, mlp, norms, embedding="model.embed_tokens",
                  scaled_embedding=scaled_embedding, experts=experts, gguf=gguf, structured=structured,
                  exports=exports, export_note=export_note, renamed_checkpoint=renamed_checkpoint)


def _bert_like(model_type: str, *, structured: frozenset[str] = frozenset()) -> Family:
    """`encoder.layer` of BERT's self-attention and intermediate/output MLP, post-norm."""
    return Family(model_type, "encoder.layer",
                  Attention(q="attention.self.query", k="attention.self.key", v="attention.self.value",
                            o="attention.output.dense"),
                  Mlp(("intermediate.dense",), "output.dense"), embedding="embeddings.word_embeddings",
                  structured=structured)


# Cuts stock transformers reloads: Llama-style configs carry head_dim, so fewer heads reload; BERT
# derives the head size from hidden_size / num_attention_heads, so only layers and MLP neurons.
LLAMA_CUTS = frozenset({"layers", "mlp", "heads"})
BERT_CUTS = frozenset({"layers", "mlp"})
# Why exports are left out, as the matrix met them (tests/compat, bench/results/compat.json).
SLIDING_WINDOW = "torch.export and OpenVINO's tracer fail on its sliding-window attention mask over a KV cache"
MOE_OPS = "its routed experts use aten::histc, which neither the ONNX exporter nor OpenVINO converts"
MOE_FUSED = ("its checkpoint stores one tensor per expert, which transformers fuses into one tensor per "
             "projection on load")

_DECLARED = (
    _llama_like("llama", gguf="llama", structured=LLAMA_CUTS),
    # llama.cpp converts Mistral as llama, but transformers' GGUF loader does not read one back as
    # Mistral ("Unknown gguf model_type"), so no GGUF is declared: the stage's reload check would fail.
    _llama_like("mistral", structured=LLAMA_CUTS, exports=frozenset(), export_note=SLIDING_WINDOW),
    _llama_like("qwen2", gguf="qwen2", structured=LLAMA_CUTS),
    _llama_like("qwen3", gguf="qwen3", structured=LLAMA_CUTS),
    _llama_like("smollm3", gguf="smollm3", structured=LLAMA_CUTS),
    _llama_like("granite", gguf="granite"),
    _llama_like("stablelm", gguf="stablelm"),
    # OLMo2 normalises after attention and after the MLP (outputs, not inputs): nothing to fold into.
    Family("olmo2", "model.layers",
           Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj"),
           Mlp(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"), embedding="model.embed_tokens", gguf="olmo2"),
    _llama_like("gemma2", gguf="gemma2", post_attention_norm="pre_feedforward_layernorm", scaled_embedding=True,
                exports=frozenset(), export_note=SLIDING_WINDOW),
    _llama_like("gemma3_text", gguf="gemma3", post_attention_norm="pre_feedforward_layernorm",
                scaled_embedding=True, exports=frozenset(), export_note=SLIDING_WINDOW),
    Family("phi3", "model.layers", Attention(qkv="self_attn.qkv_proj", o="self_attn.o_proj"),
           Mlp(("mlp.gate_up_proj",), "mlp.down_proj"),
           (("input_layernorm", ("self_attn.qkv_proj",)), ("post_attention_layernorm", ("mlp.gate_up_proj",))),
           embedding="model.embed_tokens", gguf="phi3"),
    Family("gpt2", "transformer.h", Attention(qkv="attn.c_attn", o="attn.c_proj"), Mlp(("mlp.c_fc",), "mlp.c_proj"),
           (("ln_1", ("attn.c_attn",)), ("ln_2", ("mlp.c_fc",))), embedding="transformer.wte", conv1d=True,
           gguf="gpt2"),
    # GPT-NeoX's parallel residual feeds one block input to attention and MLP through separate norms.
    Family("gpt_neox", "gpt_neox.layers", Attention(qkv="attention.query_key_value", o="attention.dense"),
           Mlp(("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
           (("input_layernorm", ("attention.query_key_value",)), ("post_attention_layernorm", ("mlp.dense_h_to_4h",))),
           embedding="gpt_neox.embed_in", gguf="gptneox",
           renamed_checkpoint="its checkpoint names the head embed_out, which transformers loads as lm_head"),
    # OPT normalises before attention and MLP (do_layer_norm_before); OPT-350m alone normalises after, and
    # would need its norms left out here.
    Family("opt", "model.decoder.layers",
           Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj"),
           Mlp(("fc1",), "fc2"),
           (("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("final_layer_norm", ("fc1",))), embedding="model.decoder.embed_tokens"),
    # Falcon's norms depend on the config (one shared norm, or ln_attn / ln_mlp): none declared. Its
    # _init_weights reads every FalconLinear's .weight, so a packed checkpoint fails to load in transformers.
    Family("falcon", "transformer.h", Attention(qkv="self_attention.query_key_value", o="self_attention.dense"),
           Mlp(("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"), embedding="transformer.word_embeddings",
           gguf="falcon", reloads_packed=False, exports=frozenset(),
           export_note="its multi-query KV cache does not have the shape the exporters' cache geometry reads"),
    _llama_like("mixtral", gguf="llama", experts=Experts("mlp.experts", "mlp.gate"), exports=frozenset(),
                export_note=MOE_OPS, renamed_checkpoint=MOE_FUSED),
    _llama_like("qwen2_moe", gguf="qwen2moe", experts=Experts("mlp.experts", "mlp.gate"), exports=frozenset(),
                export_note=MOE_OPS, renamed_checkpoint=MOE_FUSED),
    _llama_like("qwen3_moe", gguf="qwen3moe", experts=Experts("mlp.experts", "mlp.gate"), exports=frozenset(),
                export_note=MOE_OPS, renamed_checkpoint=MOE_FUSED),
    _bert_like("bert", structured=BERT_CUTS),
    _bert_like("roberta", structured=BERT_CUTS),
    _bert_like("xlm-roberta", structured=BERT_CUTS),
    _bert_like("electra"),
    Family("distilbert", "transformer.layer",
           Attention(q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", o="attention.out_lin"),
           Mlp(("ffn.lin1",), "ffn.lin2"), embedding="embeddings.word_embeddings"),
    Family("deberta-v2", "encoder.layer",
           Attention(q="attention.self.query_proj", k="attention.self.key_proj", v="attention.self.value_proj",
                     o="attention.output.dense"),
           Mlp(("intermediate.dense",), "output.dense"), embedding="embeddings.word_embeddings"),
    Family("mpnet", "encoder.layer",
           Attention(q="attention.attn.q", k="attention.attn.k", v="attention.attn.v", o="attention.attn.o"),
           Mlp(("intermediate.dense",), "output.dense"), embedding="embeddings.word_embeddings"),
    # ModernBERT's weight init reads every Linear's .weight, as Falcon's does (reloads_packed).
    Family("modernbert", "layers", Attention(qkv="attn.Wqkv", o="attn.Wo"), Mlp(("mlp.Wi",), "mlp.Wo"),
           (("mlp_norm", ("mlp.Wi",)),), embedding="embeddings.tok_embeddings", reloads_packed=False),
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


def check_streamable(config) -> None:
    """Refuses, naming the family, the block-by-block loader (calibrated and weight-only methods) where
    the checkpoint's tensor names are not the model's (`Family.renamed_checkpoint`)."""
    family = family_of(config)
    if family is not None and family.renamed_checkpoint:
        raise refuse(config, "block-by-block loading (weight quantization, calibrated pruning)",
                     f"cannot be streamed: {family.renamed_checkpoint}, and the streamed loader reads the "
                     "checkpoint by the model's own names; methods that load it whole (casts) take it")


def is_causal_lm(model) -> bool:
    """Whether a loaded model is a causal LM, by its config's kind (transformers' auto-mappings), not
    by its class name (GPT-2's head is GPT2LMHeadModel)."""
    return model_kinds.kind_of_type(model_type_of(getattr(model, "config", None))) == model_kinds.CAUSAL_LM
