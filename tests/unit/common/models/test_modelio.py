import json

import pytest

from services.common.models import modelio


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(modelio.UnsafeModelError, match="pytorch_model.bin.*safetensors only"):
        modelio.load_model(tmp_path)


def test_unknown_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["WhisperForConditionalGeneration"],
                                                      "model_type": "whisper"}))
    with pytest.raises(modelio.UnsupportedModelError, match="unsupported architecture"):
        modelio.load_model(tmp_path)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(modelio.UnsupportedModelError, match="no config.json"):
        modelio.load_model(tmp_path)


def test_kinds(tiny_llama_dir, tiny_bert_dir):
    assert modelio.model_kind(modelio.read_config(tiny_llama_dir)) == "causal-lm"
    assert modelio.model_kind(modelio.read_config(tiny_bert_dir)) == "encoder"
    assert type(modelio.load_model(tiny_bert_dir)).__name__ == "BertModel"
