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


# ---- a checkpoint that does not cover the model is refused, never initialised at random ----------


def _without(folder, tmp_path, *dropped: str, replaced: dict | None = None):
    """A copy of `folder` whose model.safetensors lacks `dropped` and holds `replaced` (name -> tensor)."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    state = load_file(str(copy / "model.safetensors"))
    for name in dropped:
        del state[name]
    state.update(replaced or {})
    save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
    return copy


def test_a_missing_tensor_is_refused_by_name(tiny_llama_dir, tmp_path):
    folder = _without(tiny_llama_dir, tmp_path, "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(modelio.IncompleteCheckpoint,
                       match=r"lacks 1 of the model's tensors \(model.layers.1.mlp.up_proj.weight\)"):
        modelio.load_model(folder)


def test_many_missing_tensors_are_counted_and_ten_named(tiny_llama_dir, tmp_path):
    from safetensors import safe_open

    with safe_open(str(tiny_llama_dir / "model.safetensors"), "pt") as f:
        layers = [name for name in f.keys() if name.startswith("model.layers.")]  # noqa: SIM118 - not a dict
    folder = _without(tiny_llama_dir, tmp_path, *layers)
    with pytest.raises(modelio.IncompleteCheckpoint) as info:
        modelio.load_model(folder)
    message = str(info.value)
    assert f"lacks {len(layers)} of the model's tensors" in message and f"and {len(layers) - 10} more" in message
    assert message.count("model.layers.") == 10


def test_a_tensor_of_another_shape_is_refused_by_name(tiny_llama_dir, tmp_path):
    import torch

    folder = _without(tiny_llama_dir, tmp_path, replaced={"model.norm.weight": torch.ones(3)})
    with pytest.raises(modelio.IncompleteCheckpoint, match=r"model.norm.weight \(3,\) != \(64,\)"):
        modelio.load_model(folder)


def test_tied_heads_and_rebuilt_buffers_are_not_missing(tiny_llama_dir, tiny_bert_dir, tiny_bpe_llama_dir):
    """The tiny Llama stores no lm_head (tied); BERT's position ids are rebuilt; the BPE Llama is untied."""
    for folder in (tiny_llama_dir, tiny_bert_dir, tiny_bpe_llama_dir):
        modelio.load_model(folder)


def test_the_streaming_loader_refuses_a_missing_tensor_too(tiny_llama_dir, tiny_bert_dir, tmp_path):
    from services.common.calibration.streaming import StreamingModel

    StreamingModel(tiny_llama_dir)
    StreamingModel(tiny_bert_dir)
    folder = _without(tiny_llama_dir, tmp_path, "model.norm.weight")
    with pytest.raises(modelio.IncompleteCheckpoint, match=r"lacks 1 of the model's tensors \(model.norm.weight\)"):
        StreamingModel(folder)


# ---- files that lie about themselves ---------------------------------------------------------------


def test_a_deeply_nested_config_is_refused_as_too_deep(tmp_path):
    from services.common.models.bounded_json import JsonTooDeep

    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(JsonTooDeep, match="config.json: JSON nested past"):
        modelio.load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"a":' * 33 + "1" + "}" * 33)
    with pytest.raises(JsonTooDeep, match="nested 33 levels deep, past the 32"):
        modelio.read_config(tmp_path)


def test_a_lying_safetensors_header_is_refused_before_the_loader(tiny_llama_dir, tmp_path):
    import shutil

    from services.common.models.safetensors_header import BadSafetensors

    folder = tmp_path / "truncated"
    shutil.copytree(tiny_llama_dir, folder)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(BadSafetensors, match="model.safetensors: tensor .* claims bytes"):
        modelio.load_model(folder)


def test_a_pickle_beside_an_xml_is_still_a_pickle(tiny_llama_dir, tmp_path):
    import shutil

    from tests.upload_corpus import PROTOCOL_0_PICKLE

    folder = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(PROTOCOL_0_PICKLE)
    (folder / "pytorch_model.xml").write_text("<net/>")
    with pytest.raises(modelio.UnsafeModelError, match="pytorch_model.bin"):
        modelio.load_model(folder)


def test_openvino_weights_are_known_by_the_ir_that_indexes_them(tmp_path):
    from services.common.models import pickles
    from tests.upload_corpus import PROTOCOL_0_PICKLE

    ir = '<?xml version="1.0"?>\n<net name="m" version="11"><layers><layer type="Const">' \
         '<data element_type="f32" shape="4" offset="0" size="16" /></layer></layers></net>'
    (tmp_path / "openvino_model.xml").write_text(ir)
    (tmp_path / "openvino_model.bin").write_bytes(b"\1" * 16)
    assert pickles.pickled_files(tmp_path) == []
    (tmp_path / "openvino_model.bin").write_bytes(PROTOCOL_0_PICKLE)  # not the bytes the IR indexes
    assert pickles.pickled_files(tmp_path) == ["openvino_model.bin"]
    (tmp_path / "openvino_model.bin").write_bytes(b"\x80" + b"\1" * 15)  # the right size, a pickle's first byte
    assert pickles.pickled_files(tmp_path) == ["openvino_model.bin"]


# ---- a model's own code ----------------------------------------------------------------------------


def test_custom_code_is_refused_unless_transformers_ships_the_architecture(tiny_llama_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    auto_map = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    assert type(modelio.load_model(folder)).__name__ == "LlamaForCausalLM"  # the stock class, not the folder's
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": auto_map, "model_type": "evil",
                                                    "architectures": ["EvilForCausalLM"]}))
    with pytest.raises(modelio.UnsupportedModelError, match="auto_map points at the model's own Python code"):
        modelio.load_model(folder)
