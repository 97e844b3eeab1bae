"""GGUF export on a tiny Llama: the file reads back with `gguf`, loads in transformers, and
gives the float model's logits (exactly at F16 tolerance, closely at Q8_0, roughly at Q4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.common.models import modelio
from services.common.contract.engine_api import NotPossibleHere, ProgressReporter
from services.optimizer import gguf_export
from services.optimizer.engine import METHODS


def _run(method: str, src, dst, **config):
    entry = METHODS[method]
    return entry.run(entry.config_cls(**config), src, dst, ProgressReporter())


def test_rotary_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    undo = LlamaTensorProcessor(config={})._reverse_permute_weights(gguf_export.rotary_permute(weight, 8), 8, 8)
    assert np.array_equal(undo, weight) and not np.array_equal(gguf_export.rotary_permute(weight, 8), weight)


@pytest.mark.parametrize("method, extra, gguf_type, max_diff, min_agree", [
    ("gguf-f16", {}, "F16", 0.02, 0.99),
    ("gguf-q8_0", {}, "Q8_0", 0.05, 0.95),
    ("gguf-q4", {"type": "q4_1"}, "Q4_1", 1.0, 0.6),
])
def test_gguf_reads_back_and_loads_in_transformers(tiny_bpe_llama_dir, tmp_path, method, extra, gguf_type, max_diff,
                                                   min_agree):
    result = _run(method, tiny_bpe_llama_dir, tmp_path, **extra)
    read_back = result.metrics["read_back"]
    # 2 layers x (7 projections + 2 norms) + embedding + output norm + untied head.
    assert read_back["architecture"] == "llama" and read_back["tensors"] == 2 * 9 + 3
    assert read_back["types"][gguf_type] == 2 * 7 + 2 and read_back["types"]["F32"] == 2 * 2 + 1
    # What llama.cpp needs to treat the file as its own: the pre-tokenizer (plain byte-level BPE
    # here) and the quantization version of ggml's block formats.
    assert read_back["tokenizer_pre"] == "gpt-2" and read_back["quantization_version"] == 2
    reload = result.metrics["transformers_reload"]
    assert reload["top1_agreement"] >= min_agree and reload["max_abs_logit_diff"] < max_diff, reload
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = result.metrics["read_back"] and next(tmp_path.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=name)
    text = "The for statement is used to iterate over the elements of a sequence"
    assert tokenizer(text).input_ids[-5:] == modelio.load_tokenizer(tiny_bpe_llama_dir)(text).input_ids[-5:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=name, dtype=torch.float32)
    assert model.config.num_key_value_heads == 2 and not model.config.tie_word_embeddings


def test_smaller_types_make_smaller_files(tiny_bpe_llama_dir, tmp_path):
    sizes = {m: _run(m, tiny_bpe_llama_dir, tmp_path / m, verify_reload=False).metrics["gguf_bytes"]
             for m in ("gguf-f16", "gguf-q8_0", "gguf-q4")}
    assert sizes["gguf-q4"] < sizes["gguf-q8_0"] < sizes["gguf-f16"]


def test_encoders_and_wordpiece_tokenizers_are_refused(tiny_bert_dir, tiny_llama_dir, tmp_path):
    with pytest.raises(NotPossibleHere, match="encoder"):
        _run("gguf-q8_0", tiny_bert_dir, tmp_path / "a")
    with pytest.raises(NotPossibleHere, match="byte-level BPE"):
        _run("gguf-q8_0", tiny_llama_dir, tmp_path / "b")  # MiniLM's WordPiece vocabulary


def test_the_evaluator_measures_a_gguf_as_transformers_loads_it(tiny_bpe_llama_dir, tmp_path):
    from services.evaluator.engine import EvaluationConfig, evaluate_folder

    _run("gguf-q8_0", tiny_bpe_llama_dir, tmp_path, verify_reload=False)
    config = EvaluationConfig(batch_size=1, sequence_length=16, latency_iterations=2, warmup=1, quality_windows=1,
                              decode_tokens=2)
    figures, base = evaluate_folder(tmp_path, config), evaluate_folder(tiny_bpe_llama_dir, config)
    assert figures["format"] == "GGUF" and figures["parameters"] == base["parameters"]
    assert figures["perplexity"] == pytest.approx(base["perplexity"], rel=0.02)
    assert figures["parameter_bytes"] == next(tmp_path.glob("*.gguf")).stat().st_size


def test_the_chat_template_travels_into_the_gguf(tiny_bpe_llama_dir, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_bpe_llama_dir, src)
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    (src / "chat_template.jinja").write_text(template)
    result = _run("gguf-q8_0", src, tmp_path / "out", verify_reload=False)
    assert result.metrics["read_back"]["chat_template_chars"] == len(template)


@pytest.mark.parametrize("pre_tokenizer, name", [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}},
                                            {"type": "ByteLevel", "use_regex": False}]}, "llama-bpe"),
    ({"type": "Metaspace"}, "default"),
    (None, "default"),
])
def test_pre_tokenizer_names_follow_llama_cpp(pre_tokenizer, name):
    assert gguf_export.pre_tokenizer_name(pre_tokenizer) == name


# ---- every declared family's layout, against llama.cpp's own tables (gguf.constants) ----

GGUF_FAMILIES = [f.model_type for f in __import__("services.common.models.families", fromlist=["FAMILIES"])
                 .FAMILIES.values() if f.gguf]


def _tiny(model_type: str, vocab: int = 128):
    """A tiny random model of the family (the compat matrix's dimensions) and its config.json dict."""
    from transformers import AutoModelForCausalLM

    from tests.compat.tiny_models import tiny_config

    torch.manual_seed(0)
    config = tiny_config(model_type, vocab)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, json.loads(config.to_json_string())


@pytest.mark.parametrize("model_type", GGUF_FAMILIES)
def test_every_tensor_gets_a_name_llama_cpp_lists_for_the_architecture(model_type):
    import gguf

    model, config = _tiny(model_type)
    arch = gguf_export.layout_of(config).arch
    arch_id = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    known = {gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[arch_id] for b in range(2)}
    tensors = gguf_export.transformed(model.state_dict(), config)
    assert {n.rsplit(".", 1)[0] for n in tensors} <= known
    assert {"token_embd.weight", "output_norm.weight"} <= set(tensors)
    # Every block carries the same tensors; MoE experts arrive as one 3-D tensor per projection.
    assert {n[6:] for n in tensors if n.startswith("blk.0.")} == {n[6:] for n in tensors if n.startswith("blk.1.")}
    if gguf_export.families.family_of(config).experts:
        assert tensors["blk.0.ffn_gate_exps.weight"].ndim == 3 and "blk.0.ffn_gate_inp.weight" in tensors


def test_opt_is_refused_naming_why():
    with pytest.raises(gguf_export.NotConvertible, match=r"'opt' has no architecture in llama.cpp"):
        gguf_export.layout_of({"model_type": "opt"})


def test_gemma_norms_are_stored_plus_one_and_llama_q_k_permuted():
    model, config = _tiny("gemma2")
    state = model.state_dict()
    tensors = gguf_export.transformed(state, config)
    for hf, name in (("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
                     ("model.layers.1.post_feedforward_layernorm.weight", "blk.1.post_ffw_norm.weight"),
                     ("model.norm.weight", "output_norm.weight")):
        assert np.allclose(tensors[name], state[hf].numpy() + 1)
    assert np.array_equal(tensors["blk.0.attn_q.weight"], state["model.layers.0.self_attn.q_proj.weight"].numpy())
    model, config = _tiny("granite")  # llama.cpp's rotary reads Llama-style Q/K rows interleaved
    state = model.state_dict()
    tensors = gguf_export.transformed(state, config)
    q, k = (state[f"model.layers.0.self_attn.{p}_proj.weight"].numpy() for p in "qk")
    head = 16  # row r of a head (r < 8) and its rotary partner r + 8 become rows 2r and 2r + 1
    assert np.array_equal(tensors["blk.0.attn_q.weight"][2 * 3 + 1], q[3 + head // 2])
    assert np.array_equal(tensors["blk.0.attn_k.weight"][head + 2 * 5], k[head + 5])


def test_gpt_neox_qkv_is_regrouped_as_transformers_bloom_reader_undoes():
    from transformers.modeling_gguf_pytorch_utils import BloomTensorProcessor

    model, config = _tiny("gpt_neox")
    state = {name: torch.randn_like(tensor) for name, tensor in model.state_dict().items()}  # biases start at 0
    tensors = gguf_export.transformed(state, config)
    undo = BloomTensorProcessor(config={"n_head": 4, "hidden_size": 64})
    for part in ("weight", "bias"):
        original = state[f"gpt_neox.layers.0.attention.query_key_value.{part}"].numpy()
        written = tensors[f"blk.0.attn_qkv.{part}"]
        back = undo._reverse_reshape_weights(written, 4, 64) if part == "weight" else \
            undo._reverse_reshape_bias(written, 4, 64)
        assert np.array_equal(back, original) and not np.array_equal(written, original)


def test_falcon_kv_groups_become_all_queries_then_keys_then_values():
    from services.optimizer import gguf_layouts

    heads, kv, head_dim, hidden = 8, 2, 4, 32
    config = {"hidden_size": hidden, "num_attention_heads": heads, "num_kv_heads": kv,
              "new_decoder_architecture": True}
    weight = np.random.default_rng(0).standard_normal(((heads + 2 * kv) * head_dim, hidden)).astype(np.float32)
    written = gguf_layouts.falcon_qkv(weight, gguf_layouts.Hparams(config))
    per_group = heads // kv
    row = lambda group, slot: weight[(group * (per_group + 2) + slot) * head_dim:][:head_dim]
    for h in range(heads):
        assert np.array_equal(written[h * head_dim:][:head_dim], row(h // per_group, h % per_group))
    for g in range(kv):
        assert np.array_equal(written[(heads + g) * head_dim:][:head_dim], row(g, per_group))
        assert np.array_equal(written[(heads + kv + g) * head_dim:][:head_dim], row(g, per_group + 1))
    assert not gguf_export.reads_in_transformers({"model_type": "falcon", **config})


def _saved_tiny(model_type: str, tokenizer_dir, src):
    """A tiny model of the family saved with the BPE tokenizer (its vocabulary is the model's); its config."""
    import shutil

    model, config = _tiny(model_type, vocab=512)
    model.save_pretrained(src, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, src / name)
    return src, config


@pytest.mark.parametrize("model_type", ["qwen3", "gemma3_text", "gpt2", "phi3", "falcon", "qwen2_moe", "mistral"])
def test_families_transformers_reads_come_back_with_the_float_logits(model_type, tiny_bpe_llama_dir, tmp_path):
    """transformers' GGUF loader undoes each transform its own way (Gemma's norms - 1, GPT-2's
    transpose, the fused experts): the logits come back where the layout is llama.cpp's."""
    src, _ = _saved_tiny(model_type, tiny_bpe_llama_dir, tmp_path / "src")
    result = _run("gguf-f16", src, tmp_path / "out")
    assert "layout_check" not in result.metrics and result.metrics["transformers_reload"]["top1_agreement"] >= 0.98
    assert result.metrics["transformers_reload"]["max_abs_logit_diff"] < 0.02


@pytest.mark.parametrize("model_type", ["smollm3", "olmo2", "gpt_neox", "mixtral"])
def test_families_transformers_cannot_read_are_checked_against_llama_cpp_tables(model_type, tiny_bpe_llama_dir,
                                                                                 tmp_path):
    src, config = _saved_tiny(model_type, tiny_bpe_llama_dir, tmp_path / "src")
    result = _run("gguf-q8_0", src, tmp_path / "out")
    check = result.metrics["layout_check"]
    assert "transformers_reload" not in result.metrics
    assert check["architecture"] == gguf_export.families.family_of(config).gguf and check["layer_tensors"] >= 6


def test_a_tied_head_is_written_out_where_llama_cpp_requires_output():
    model, config = _tiny("olmo2")
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tensors = gguf_export.transformed(state, {**config, "tie_word_embeddings": True})
    assert np.array_equal(tensors["output.weight"], tensors["token_embd.weight"])
    model, config = _tiny("qwen2")  # llama.cpp's qwen2 falls back to token_embd: nothing added
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert "output.weight" not in gguf_export.transformed(state, {**config, "tie_word_embeddings": True})


def test_llama3_rope_scaling_travels_as_rope_freqs_as_transformers_scales_inv_freq():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from services.optimizer import gguf_layouts

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=512, num_attention_heads=4, max_position_embeddings=131072, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    factors = gguf_layouts.llama3_rope_freqs(gguf_layouts.Hparams(json.loads(config.to_json_string())))
    assert np.allclose(factors["rope_freqs.weight"], (plain / scaled.double()).numpy(), rtol=1e-4)
    assert factors["rope_freqs.weight"].min() == 1.0 and factors["rope_freqs.weight"].max() == 32.0
    assert gguf_layouts.llama3_rope_freqs(gguf_layouts.Hparams({"rope_parameters": {"rope_type": "default"}})) == {}


def test_sentencepiece_style_bpe_is_refused_not_written_as_byte_level(tiny_bpe_llama_dir, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_bpe_llama_dir, src)
    spec = json.loads((src / "tokenizer.json").read_text())
    spec["model"]["byte_fallback"] = True
    (src / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(gguf_export.NotConvertible, match="SentencePiece-style BPE"):
        gguf_export.read_tokenizer(src)
