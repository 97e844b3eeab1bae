"""GGUF export on a tiny Llama: the file reads back with `gguf`, loads in transformers, and
gives the float model's logits (exactly at F16 tolerance, closely at Q8_0, roughly at Q4)."""

from __future__ import annotations

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
