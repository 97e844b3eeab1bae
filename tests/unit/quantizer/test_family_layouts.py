"""Families whose quantized modules stock transformers reloads only dequantized at load
(ct_format's module docstring): GPT-2's Conv1D projections, written in their own [in, out]
orientation, and Falcon's packed Linears, whose weight init reads each Linear's `.weight`."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from services.common.calibration.streaming import StreamingModel
from services.common.contract.engine_api import ProgressReporter
from services.common.models import modelio
from services.common.models.model_errors import UnsupportedModelError
from services.quantizer.configs import GptqConfig, WeightOnlyConfig
from services.quantizer.ct_format import write_compressed_tensors
from services.quantizer.engine import METHODS
from services.quantizer.qscheme import dequantize
from services.quantizer.rtn import quantize_rtn
from services.quantizer.targets import Conv1DLinear, linear_weight, weight_targets

VOCAB = 96


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import _copy_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    # MiniLM's tokenizer (the calibration text for GPTQ), so its vocabulary.
    config = GPT2Config(vocab_size=30522, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    _copy_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_falcon_dir(tmp_path_factory):
    from transformers import FalconConfig, FalconForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("falcon")
    config = FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_kv_heads=2)
    FalconForCausalLM(config).save_pretrained(folder)
    return folder


def quantize_to_disk(folder, config, out, conv1d=True):
    source = StreamingModel(folder)
    targets = weight_targets(source.model, config, conv1d=conv1d)
    quantized = quantize_rtn(lambda t: linear_weight(t, source.reader.get(source.key(f"{t.name}.weight"))),
                             targets)
    write_compressed_tensors(source, quantized, out, source.tied_head)
    return quantized


def in_memory(folder, quantized):
    """The float model with each quantized module computing what its codes and scales mean (a
    Conv1D's Linear-oriented grid transposed into its [in, out] weight), rounded to float16 as
    transformers' dequantizing load computes them (codes times float16 scales)."""
    from transformers.pytorch_utils import Conv1D

    model = modelio.load_model(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, qw in quantized.items():
            module = model.get_submodule(name)
            weight = dequantize(qw.codes, qw.params).half().float()
            module.weight.data = weight.t().contiguous() if isinstance(module, Conv1D) else weight
    return model


def quantization_config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())["quantization_config"]


CONFIGS = [WeightOnlyConfig(bits=4, group_size=32), WeightOnlyConfig(bits=8, group_size=0),
           WeightOnlyConfig(bits=4, group_size=32, symmetric=False)]


@pytest.mark.parametrize("config", CONFIGS, ids=["w4-g32", "w8-channel", "w4-g32-asym"])
def test_gpt2_conv1d_reloads_in_stock_transformers_as_quantized_in_memory(config, tiny_gpt2_dir, tmp_path):
    quantized = quantize_to_disk(tiny_gpt2_dir, config, tmp_path / "m")
    assert {qw.kind for qw in quantized.values()} == {"Conv1D"}
    assert len(quantized) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        expected = in_memory(tiny_gpt2_dir, quantized)(input_ids=ids).logits
        plain = modelio.load_model(tiny_gpt2_dir)(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)  # the weights really moved to the grid


def test_gpt2_conv1d_tensors_are_stored_in_its_own_orientation(tiny_gpt2_dir, tmp_path):
    quantized = quantize_to_disk(tiny_gpt2_dir, WeightOnlyConfig(bits=4, group_size=32), tmp_path / "m")
    qw = quantized["transformer.h.0.mlp.c_fc"]
    assert qw.codes.shape == (256, 64)  # rounded as the Linear it computes: [out, in]
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        shape = f.get_tensor("transformer.h.0.mlp.c_fc.weight_shape").tolist()
        scale = f.get_tensor("transformer.h.0.mlp.c_fc.weight_scale")
        assert "transformer.h.0.mlp.c_fc.weight" not in set(f.keys())
    assert shape == [64, 256]  # Conv1D's [in, out]
    assert scale.shape == (64 // 32, 256)  # one scale per output column and group of 32 input rows
    torch.testing.assert_close(scale.float(), qw.params.scale.t().float())
    config = quantization_config(tmp_path / "m")
    group = config["config_groups"]["group_0"]
    assert config["dequantize"] is True
    assert group["targets"] == ["Conv1D"] and group["format"] == "pack-quantized"
    assert group["weights"]["strategy"] == "block" and group["weights"]["block_structure"] == [32, 1]


def test_a_method_that_does_not_take_conv1d_refuses_gpt2_naming_the_family(tiny_gpt2_dir):
    source = StreamingModel(tiny_gpt2_dir)
    with pytest.raises(UnsupportedModelError, match="'gpt2'.*Conv1D"):
        weight_targets(source.model, WeightOnlyConfig(bits=4, group_size=32))


def test_conv1d_linear_loads_the_conv1d_checkpoint_and_computes_what_it_does():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(48, 32)  # nf=48 outputs, nx=32 inputs: weight [32, 48]
    torch.nn.init.normal_(conv.bias)
    with torch.device("meta"):
        skeleton = torch.nn.Sequential(Conv1D(48, 32))
    from services.quantizer.targets import linear_conv1d

    assert linear_conv1d(skeleton) == 1
    skeleton.load_state_dict({f"0.{k}": v for k, v in conv.state_dict().items()}, assign=True)
    linear = skeleton[0]
    assert isinstance(linear, Conv1DLinear) and linear.weight.shape == (48, 32)
    x = torch.randn(3, 32)
    torch.testing.assert_close(linear(x), conv(x))


def test_gpt2_gptq_reloads_with_its_conv1d_weights_on_the_grid_in_their_orientation(tiny_gpt2_dir, tmp_path):
    config = GptqConfig(bits=4, group_size=32, calibration_samples=4, calibration_sequence_length=16)
    METHODS["gptq"].run(config, tiny_gpt2_dir, tmp_path / "m", ProgressReporter())
    assert quantization_config(tmp_path / "m")["config_groups"]["group_0"]["targets"] == ["Conv1D"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    weight = reloaded.get_submodule("transformer.h.1.mlp.c_fc").weight  # Conv1D: [in 64, out 256]
    assert weight.shape == (64, 256)
    # One scale per output column and group of 32 input rows: at most 16 values in each such group.
    groups = weight.detach().reshape(2, 32, 256).permute(0, 2, 1).reshape(-1, 32)
    assert max(len(torch.unique(g)) for g in groups) <= 16
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        got, want = (m(input_ids=ids).logits.flatten() for m in (reloaded, modelio.load_model(tiny_gpt2_dir)))
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.95


@pytest.mark.parametrize("family_dir", ["tiny_gpt2_dir", "tiny_falcon_dir"])
def test_more_than_one_scheme_is_refused_where_transformers_must_dequantize(family_dir, request, tmp_path):
    folder = request.getfixturevalue(family_dir)
    family = "gpt2" if family_dir == "tiny_gpt2_dir" else "falcon"
    with pytest.raises(UnsupportedModelError, match=f"'{family}'.*one scheme"):
        quantize_to_disk(folder, WeightOnlyConfig(bits=4, group_size=32, embedding_bits=8), tmp_path / "m")


@pytest.mark.parametrize("config", CONFIGS[:2], ids=["w4-g32", "w8-channel"])
def test_falcon_packed_linears_reload_dequantized_in_stock_transformers(config, tiny_falcon_dir, tmp_path):
    quantized = quantize_to_disk(tiny_falcon_dir, config, tmp_path / "m", conv1d=False)
    assert quantization_config(tmp_path / "m")["dequantize"] is True
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert "transformer.h.0.mlp.dense_h_to_4h.weight_packed" in set(f.keys())  # still packed on disk
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        expected = in_memory(tiny_falcon_dir, quantized)(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_falcon_unpacked_codes_keep_weight_and_need_no_dequantize_flag(tiny_falcon_dir, tmp_path):
    """Asymmetric codes are written int-quantized (`.weight` stays): the flag is only where needed."""
    quantize_to_disk(tiny_falcon_dir, CONFIGS[2], tmp_path / "m", conv1d=False)
    assert "dequantize" not in quantization_config(tmp_path / "m")
    AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
