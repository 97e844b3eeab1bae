"""HOW_TO_LOAD.md: every model format an output can have says how to load it, with the folder's own files."""

from __future__ import annotations

import json

import pytest

from modelpress.v1 import common_pb2
from services.common.store.load_guide import GUIDE_NAME, LOAD_GUIDES, guide_text, write_load_guide

NOT_MODELS = {common_pb2.ARTIFACT_FORMAT_UNSPECIFIED, common_pb2.ARTIFACT_FORMAT_DATASET_JSONL,
              common_pb2.ARTIFACT_FORMAT_REPORT, common_pb2.ARTIFACT_FORMAT_TRAINING_CHECKPOINT}


def test_every_model_format_has_a_guide():
    assert set(LOAD_GUIDES) == set(common_pb2.ArtifactFormat.values()) - NOT_MODELS


@pytest.mark.parametrize("fmt", sorted(LOAD_GUIDES))
def test_each_guide_renders_for_a_causal_lm_with_its_files_named(tmp_path, fmt):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    for name in ("model.onnx", "openvino_model.xml", "model-q8_0.gguf", "model.engine"):
        (tmp_path / name).write_bytes(b"")
    text = guide_text(tmp_path, fmt)
    assert "{" not in text.replace("{folder}", "").replace("{i.name", "").replace("{k: v", "")
    assert "*." not in text  # the file the snippet opens is this folder's own
    assert "SentenceTransformer" not in text
    if fmt in (common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS):
        assert "AutoModelForCausalLM.from_pretrained(folder)" in text and "vllm serve" in text


def test_a_sentence_transformers_encoder_gets_its_line_and_no_vllm(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "modules.json").write_text("[]")
    path = write_load_guide(tmp_path, common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS)
    text = path.read_text()
    assert path.name == GUIDE_NAME
    assert "AutoModel.from_pretrained(folder)" in text and "SentenceTransformer(folder)" in text
    assert "vllm" not in text


def test_what_is_not_a_model_gets_no_guide(tmp_path):
    assert write_load_guide(tmp_path, common_pb2.ARTIFACT_FORMAT_DATASET_JSONL) is None
    assert not (tmp_path / GUIDE_NAME).exists()
