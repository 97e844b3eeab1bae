"""The family table and model recognition: kinds come from transformers' auto-mappings, not class names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.contract import model_kinds
from services.common.models import families, modelio
from services.common.models.model_errors import UnsupportedModelError


def test_every_declared_family_is_one_transformers_knows_with_the_kind_it_declares():
    kinds = {f.model_type: f.kind for f in families.FAMILIES.values()}
    assert kinds["gpt2"] == kinds["llama"] == kinds["falcon"] == model_kinds.CAUSAL_LM
    assert kinds["mixtral"] == kinds["qwen2_moe"] == families.MOE_CAUSAL_LM
    assert kinds["bert"] == kinds["deberta-v2"] == kinds["modernbert"] == model_kinds.ENCODER
    assert None not in kinds.values()


@pytest.mark.parametrize(("config", "kind"), [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, model_kinds.CAUSAL_LM),  # no *ForCausalLM
    ({"architectures": ["GPT2LMHeadModel"]}, model_kinds.CAUSAL_LM),  # no model_type: the class decides
    ({"model_type": "deberta-v2"}, model_kinds.ENCODER),
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, model_kinds.ENCODER),  # BERT has a causal head too
    ({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]}, None),  # seq2seq: neither
    ({"model_type": "bart"}, None),
    ({"model_type": "vit"}, None),
    ({"architectures": ["EvilForCausalLM"]}, None),  # a suffix alone is not a causal LM
])
def test_kinds_come_from_the_auto_mappings(config, kind):
    assert model_kinds.kind_of(config) == kind


def test_the_gateway_reads_kinds_without_importing_torch():
    code = ("import sys; from services.common.contract.model_kinds import kind_of; "
            "assert kind_of({'model_type': 'gpt2'}) == 'causal-lm'; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_architecture_names_its_model_type():
    with pytest.raises(UnsupportedModelError, match="model_type 'whisper'"):
        modelio.model_kind({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]})


def test_a_method_needing_a_declaration_refuses_an_undeclared_family_by_name():
    assert families.require({"model_type": "llama"}, "AWQ").model_type == "llama"
    with pytest.raises(UnsupportedModelError, match=r"AWQ: model family 'xglm' is not declared"):
        families.require({"model_type": "xglm"}, "AWQ")


def test_structured_pruning_refuses_undeclared_families_and_heads_a_family_cannot_reload():
    from transformers import BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel

    from services.common.models.architecture import Architecture

    bloom = BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match=r"pruning: model family 'bloom' is not declared"):
        Architecture(bloom, "structured pruning")
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    assert families.is_causal_lm(model)
    arch = Architecture(model, "structured pruning")  # layers and MLP neurons
    with pytest.raises(UnsupportedModelError, match=r"heads_keep: model family 'gpt2' derives the head size from "
                                                    r"n_embd / n_head"):
        arch.check_heads("kv-group")


def test_gguf_export_refuses_a_family_its_writer_does_not_lay_out_by_name():
    from services.optimizer import gguf_export

    assert gguf_export._gguf_architecture({"model_type": "llama"}) == "llama"
    assert gguf_export._gguf_architecture({"model_type": "mistral"}) == "llama"  # as llama.cpp converts it
    assert gguf_export._gguf_architecture({"model_type": "mixtral"}) == "llama"  # llama with routed experts
    assert gguf_export._gguf_architecture({"model_type": "gpt_neox"}) == "gptneox"
    with pytest.raises(gguf_export.NotConvertible, match=r"GGUF export: model family 'opt' has no architecture "
                                                         r"in llama.cpp"):
        gguf_export._gguf_architecture({"model_type": "opt"})
    with pytest.raises(gguf_export.NotConvertible, match="model family 'bert' has no llama.cpp architecture"):
        gguf_export._gguf_architecture({"model_type": "bert"})


def test_an_export_the_family_leaves_out_is_refused_by_name_and_an_undeclared_family_is_tried(monkeypatch):
    import dataclasses

    families.check_export({"model_type": "llama"}, families.ONNX)
    families.check_export({"model_type": "mixtral"}, families.OPENVINO)
    families.check_export({"model_type": "xglm"}, families.OPENVINO)  # not declared: the export is tried
    # Every declared family exports today; one declared without OpenVINO is refused by name, and why.
    monkeypatch.setitem(families.FAMILIES, "mixtral", dataclasses.replace(
        families.FAMILIES["mixtral"], exports=frozenset({families.ONNX}), export_note="a reason"))
    with pytest.raises(UnsupportedModelError,
                       match=r"OpenVINO export: model family 'mixtral' does not convert to OpenVINO here \(a reason\)"):
        families.check_export({"model_type": "mixtral"}, families.OPENVINO)
    families.check_export({"model_type": "mixtral"}, families.ONNX)


def test_scales_fold_only_into_norms_the_family_declares_as_feeding_linears():
    """OLMo2's post_attention_layernorm normalises the attention's output: folding into it by its
    Llama name changed the model (SmoothQuant on OLMo2 kept a cosine of 0.58 to the float logits)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from services.quantizer.smoothing import smoothing_groups

    config = AutoConfig.for_model("olmo2", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    block = AutoModelForCausalLM.from_config(config).model.layers[0]
    assert "post_attention_layernorm" in {g.producer for g in smoothing_groups(block)}  # by Llama's names
    declared = {g.producer for g in smoothing_groups(block, families.FAMILIES["olmo2"].norm_readers)}
    assert declared == {"mlp.up_proj", "self_attn.v_proj"}


def test_a_scaled_embedding_built_on_meta_gets_its_scale_back():
    """Gemma multiplies its embedding by a non-persistent buffer; the block-by-block loader builds the
    model on meta and must rebuild it (it refused: 'cannot rebuild buffer ... embed_scale')."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from services.common.models.packed import materialise_meta_buffers

    config = AutoConfig.for_model("gemma2", hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=64)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    materialise_meta_buffers(model)
    assert families.FAMILIES["gemma2"].scaled_embedding
    assert float(model.model.embed_tokens.embed_scale) == 8.0
