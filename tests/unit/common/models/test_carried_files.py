"""What a model folder holds beside its weights travels into each output: a compressed
sentence-transformers model still loads with its pooling and normalisation."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest

from services.common.models.carried_files import carried_files, copy_carried
from tests.conftest import minilm_folder

SERVICES = Path(__file__).resolve().parents[4] / "services"


def _write(folder: Path, relative: str, content: str | bytes = "x") -> None:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def test_everything_but_weights_code_exports_and_our_own_files_is_carried(tmp_path):
    src = tmp_path / "src"
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    kept = ["modules.json", "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors",
            "sentence_bert_config.json", "config_sentence_transformers.json", "README.md", "chat_template.jinja",
            "generation_config.json", "data_config.json", "tokenizer.json"]
    dropped = ["model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
               "pytorch_model.bin", "original/consolidated.00.pth", "2_Dense/pytorch_model.bin", "onnx/model.onnx", "onnx/config.json",
               "openvino/openvino_model.xml", "modeling_custom.py", ".git/HEAD", ".cache/x.lock", ".gitattributes",
               "modelpress.json", "HOW_TO_LOAD.md", "quantization.json", "onnx_model.json", "model.gguf"]
    for name in kept + dropped:
        _write(src, name, json.dumps(modules) if name == "modules.json" else "x")
    assert carried_files(src) == sorted(PurePosixPath(name) for name in kept)


def test_what_the_engine_wrote_is_never_overwritten_and_pooling_states_the_new_width(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _write(src, "modules.json", json.dumps([{"path": ""}, {"path": "1_Pooling"}]))
    _write(src, "1_Pooling/config.json", json.dumps({"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True}))
    _write(src, "config.json", json.dumps({"hidden_size": 384}))
    _write(src, "README.md", "the original's card")
    _write(dst, "config.json", json.dumps({"hidden_size": 256}))  # a narrower student
    copied = copy_carried(src, dst)
    assert PurePosixPath("config.json") not in copied
    assert json.loads((dst / "config.json").read_text()) == {"hidden_size": 256}
    assert (dst / "README.md").read_text() == "the original's card"
    assert json.loads((dst / "1_Pooling/config.json").read_text()) == {"word_embedding_dimension": 256,
                                                                      "pooling_mode_mean_tokens": True}


def test_no_engine_copies_the_tokenizer_alone():
    """Every engine writes its output beside carry_beside_weights, never copy_tokenizer alone (which
    would drop modules.json, pooling and the model card again)."""
    callers = [path.relative_to(SERVICES).as_posix() for path in SERVICES.rglob("*.py")
               if re.search(r"\bcopy_tokenizer\(", path.read_text(encoding="utf-8"))
               and path.name not in ("tokenizer_files.py", "carried_files.py")]
    assert callers == []


TEXTS = ["A man is eating food.", "The new movie is awesome.", "def f(x): return x ** 2",
         "Quantization keeps the weights in eight bits."]


def _compressed(tmp_path_factory, recipe: str) -> Path:
    import modelpress

    out = tmp_path_factory.mktemp("minilm") / recipe
    modelpress.compress(minilm_folder(), recipe, out)
    return out


@pytest.fixture(scope="module")
def original():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder()))


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`")
def test_an_int8_minilm_loads_as_a_sentence_transformer_with_the_originals_pooling(tmp_path_factory, original):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import CompressedTensorsConfig

    folder = _compressed(tmp_path_factory, "int8-weight-only")
    loaded = SentenceTransformer(str(folder))
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in original] == \
        ["Transformer", "Pooling", "Normalize"]
    assert next(m for m in loaded if isinstance(m, Pooling)).pooling_mode == "mean"
    assert any(isinstance(m, Normalize) for m in loaded)
    # As HOW_TO_LOAD.md says: sentence-transformers calls forward past compressed-tensors' decompressing
    # hook, so the weights are dequantized at load.
    guide = (folder / "HOW_TO_LOAD.md").read_text()
    assert "CompressedTensorsConfig(dequantize=True)" in guide
    model = SentenceTransformer(str(folder), model_kwargs={
        "quantization_config": CompressedTensorsConfig(dequantize=True)})
    a, b = original.encode(TEXTS, convert_to_tensor=True), model.encode(TEXTS, convert_to_tensor=True)
    assert (b.norm(dim=1) - 1).abs().max() < 1e-4  # normalised, as the original is
    assert (a * b).sum(dim=1).min() > 0.99


def test_a_float_minilm_encodes_with_a_plain_sentence_transformer_call(tmp_path_factory, original):
    from sentence_transformers import SentenceTransformer

    folder = _compressed(tmp_path_factory, "fp16")
    a = original.encode(TEXTS, convert_to_tensor=True)
    b = SentenceTransformer(str(folder)).encode(TEXTS, convert_to_tensor=True).float()
    assert (b.norm(dim=1) - 1).abs().max() < 1e-2 and (a * b).sum(dim=1).min() > 0.999
    assert "SentenceTransformer(folder).encode" in (folder / "HOW_TO_LOAD.md").read_text()
