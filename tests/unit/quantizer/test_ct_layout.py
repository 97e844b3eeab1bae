"""The default compressed-tensors checkpoints against what llm-compressor 0.14 writes for the same
scheme (tests/fixtures/llmcompressor/*.json, made by make_fixtures.py in the anchors' venv on a tiny
tied Llama of the same shape as the one built here)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from services.common.contract.engine_api import ProgressReporter
from services.quantizer.configs import W8A8Config, WeightOnlyConfig
from services.quantizer.engine import METHODS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "llmcompressor"
# The fields of a scheme group that decide how vLLM and transformers read the tensors.
WEIGHT_FIELDS = ("num_bits", "type", "symmetric", "strategy", "group_size", "dynamic")
ACTIVATION_FIELDS = ("num_bits", "type", "symmetric", "strategy", "dynamic")


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def anchor_shaped_llama(tmp_path_factory) -> Path:
    """The fixtures' model: tied Llama, hidden 128 (so group 128 divides), 2 layers, MiniLM's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import _copy_tokenizer

    torch.manual_seed(0)
    made = fixture("w4a16")["model"]
    config = LlamaConfig(vocab_size=made["vocab_size"], hidden_size=made["hidden_size"], intermediate_size=made["intermediate_size"],
                         num_hidden_layers=made["layers"], num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=made["tie_word_embeddings"])
    folder = tmp_path_factory.mktemp("anchor-llama")
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    _copy_tokenizer(folder)
    return folder


def stored(folder: Path) -> dict[str, dict]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: {"dtype": f.get_slice(k).get_dtype(), "shape": list(f.get_slice(k).get_shape())} for k in f.keys()}


def run(method: str, config, src: Path, dst: Path) -> tuple[dict, dict]:
    METHODS[method].run(config, src, dst, ProgressReporter())
    return json.loads((dst / "config.json").read_text())["quantization_config"], stored(dst)


CASES = {
    "w4a16": ("rtn", WeightOnlyConfig(bits=4, group_size=128)),
    "w8a16": ("rtn", WeightOnlyConfig(bits=8, group_size=128)),
    "w8a8": ("w8a8", W8A8Config(activations="dynamic", weight_algorithm="rtn", calibration_samples=2,
                                calibration_sequence_length=32)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_default_layout_matches_llm_compressor_field_by_field(name, anchor_shaped_llama, tmp_path):
    method, config = CASES[name]
    theirs = fixture(name)
    ours_config, ours_tensors = run(method, config, anchor_shaped_llama, tmp_path / name)
    expected = theirs["quantization_config"]
    for key in ("quant_method", "format", "ignore", "quantization_status"):
        assert ours_config[key] == expected[key], key
    assert list(ours_config["config_groups"]) == list(expected["config_groups"]) == ["group_0"]
    ours_group, their_group = ours_config["config_groups"]["group_0"], expected["config_groups"]["group_0"]
    assert ours_group["targets"] == their_group["targets"] == ["Linear"]
    assert ours_group["format"] == their_group["format"]
    for key in WEIGHT_FIELDS:
        assert ours_group["weights"][key] == their_group["weights"][key], f"weights.{key}"
    if their_group["input_activations"] is None:
        assert ours_group["input_activations"] is None
    else:
        for key in ACTIVATION_FIELDS:
            assert ours_group["input_activations"][key] == their_group["input_activations"][key], f"activations.{key}"
    # The same tensors under the same names and shapes; codes in the same integer types. Scales follow
    # the checkpoint's float type in llm-compressor and are float16 here: both load.
    assert set(ours_tensors) == set(theirs["tensors"])
    for key, spec in theirs["tensors"].items():
        assert ours_tensors[key]["shape"] == spec["shape"], key
        if not key.endswith("_scale"):
            assert ours_tensors[key]["dtype"] == spec["dtype"], key


def test_compact_variant_quantizes_embeddings_and_says_it_is_not_vllm_standard(anchor_shaped_llama, tmp_path):
    config, tensors = run("rtn", WeightOnlyConfig(bits=4, group_size=128, embedding_bits=8), anchor_shaped_llama,
                          tmp_path / "compact")
    assert tensors["model.embed_tokens.weight"]["dtype"] == "I8"
    targets = [t for group in config["config_groups"].values() for t in group["targets"]]
    assert "Linear" not in targets and any("embed_tokens" in t for t in targets)
    assert config["ignore"] == []


def test_stage_result_says_which_layout_it_wrote(anchor_shaped_llama, tmp_path):
    standard = METHODS["rtn"].run(WeightOnlyConfig(bits=4, group_size=128), anchor_shaped_llama, tmp_path / "s",
                                  ProgressReporter())
    compact = METHODS["rtn"].run(WeightOnlyConfig(bits=4, group_size=128, embedding_bits=8), anchor_shaped_llama,
                                 tmp_path / "c", ProgressReporter())
    assert standard.compression["layout"] == "vllm" and compact.compression["layout"] == "transformers-only"
    assert (tmp_path / "c" / "model.safetensors").stat().st_size < (tmp_path / "s" / "model.safetensors").stat().st_size
