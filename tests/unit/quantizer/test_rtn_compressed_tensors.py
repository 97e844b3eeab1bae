"""RTN on tiny models, saved as compressed-tensors and reloaded through plain transformers."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from services.common.models import modelio
from services.common.contract.engine_api import ProgressReporter
from services.quantizer.configs import WeightOnlyConfig
from services.quantizer.ct_format import is_compressed_tensors, write_compressed_tensors
from services.quantizer.engine import METHODS
from services.quantizer.qscheme import WeightScheme, compute_qparams, dequantize, fake_quantize, quantize
from services.quantizer.rtn import quantize_rtn
from services.common.calibration.streaming import StreamingModel
from services.quantizer.targets import fallback_report, weight_targets


@pytest.mark.parametrize("scheme", [WeightScheme(4, 64, True), WeightScheme(4, 32, False), WeightScheme(8, 0, True),
                                    WeightScheme(3, 16, False)])
def test_grid_codes_stay_in_range_and_errors_within_half_a_step(scheme):
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    params = compute_qparams(w, scheme)
    codes = quantize(w, params, scheme)
    assert int(codes.min()) >= scheme.qmin and int(codes.max()) <= scheme.qmax
    back = dequantize(codes, params)
    step = params.scale.repeat_interleave(scheme.group_width(128), dim=1)
    # Half a step, plus float16 rounding of the stored scale and of the dequantized value.
    assert bool(((back - w).abs() <= step / 2 * 1.002 + w.abs() * 2**-10).all())
    # Values on the grid stay exactly where they are.
    again, _ = fake_quantize(back, scheme, params)
    assert torch.equal(again, back)


def test_group_that_does_not_divide_falls_back_per_layer():
    scheme = WeightScheme(4, 128, True)
    assert scheme.for_layer(1536).group_size == 128
    assert scheme.for_layer(576).group_size == 64  # SmolLM2's hidden size
    assert scheme.for_layer(100).group_size == 0  # no power-of-two divisor >= 16: per channel


def reference_model(folder, quantized):
    """The FP32 model with every quantized weight replaced by what its codes and scales mean."""
    model = modelio.load_model(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, qw in quantized.items():
            model.get_submodule(name).weight.data = dequantize(qw.codes, qw.params)
    return model


def quantize_to_disk(folder, config, out):
    source = StreamingModel(folder)
    targets = weight_targets(source.model, config)
    quantized = quantize_rtn(lambda t: source.reader.get(source.key(f"{t.name}.weight")), targets)
    write_compressed_tensors(source, quantized, out, source.tied_head)
    return quantized


@pytest.mark.parametrize("config", [
    WeightOnlyConfig(bits=4, group_size=64),
    WeightOnlyConfig(bits=4, group_size=128, symmetric=False),
    WeightOnlyConfig(bits=8, group_size=0),
])
def test_saved_model_reloads_through_transformers_bit_exact(config, tiny_llama_dir, tmp_path):
    quantized = quantize_to_disk(tiny_llama_dir, config, tmp_path / "m")
    ids = torch.randint(0, 30522, (2, 12))
    with torch.no_grad():
        expected = reference_model(tiny_llama_dir, quantized)(input_ids=ids).logits
        plain = modelio.load_model(tiny_llama_dir)(input_ids=ids).logits
    assert is_compressed_tensors(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert not torch.equal(got, plain)  # the weights really moved to the grid


def test_compact_tied_head_is_stored_once_and_int4_is_packed(tiny_llama_dir, tmp_path):
    quantize_to_disk(tiny_llama_dir, WeightOnlyConfig(embedding_bits=8), tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.layers.0.mlp.up_proj.weight_packed").get_dtype() == "I32"
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "I8"
        assert f.get_slice("model.layers.0.mlp.up_proj.weight_scale").get_dtype() == "F16"
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tie_word_embeddings"] is True


def test_rtn_method_reports_group_fallbacks_and_effective_bits(tiny_llama_dir, tmp_path):
    result = METHODS["rtn"].run(WeightOnlyConfig(group_size=128, embedding_bits=8), tiny_llama_dir, tmp_path / "m",
                                ProgressReporter())
    # hidden 64 is not divisible by 128: every layer reading it falls back; down_proj (128 in) keeps 128.
    fallbacks = result.compression["group_fallbacks"]
    assert fallbacks and "model.layers.0.mlp.down_proj" not in fallbacks
    assert all(size == 64 for size in fallbacks.values())
    # 4-bit codes plus one 16-bit scale per group of 64 (or 128) inputs.
    assert 4 + 16 / 128 <= result.metrics["linear_effective_bits"] <= 4 + 16 / 64
    assert result.metrics["effective_bits"] > result.metrics["linear_effective_bits"]  # 8-bit embeddings
    assert (tmp_path / "m" / "tokenizer.json").exists()


def test_compact_targets_cover_every_linear_and_the_embedding(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir, dtype=torch.float32)
    targets = weight_targets(model, WeightOnlyConfig(group_size=64, embedding_bits=8))
    roles = [t.role for t in targets]
    assert roles[0] == "embedding" and roles[-1] == "head" and roles.count("linear") == 14
    assert fallback_report(targets) == {}


def test_reloaded_int4_model_counts_its_logical_parameters(tiny_llama_dir, tmp_path):
    from services.evaluator.measure import count_parameters

    original = count_parameters(modelio.load_model(tiny_llama_dir))
    METHODS["rtn"].run(WeightOnlyConfig(), tiny_llama_dir, tmp_path / "m", ProgressReporter())
    assert count_parameters(modelio.load_model(tmp_path / "m")) == original


@pytest.mark.parametrize("method,config", [("rtn", WeightOnlyConfig()), ("int8-weight-only", None), ("fp16", None)])
def test_an_already_quantized_input_is_refused_by_every_method(method, config, tiny_llama_dir, tmp_path):
    METHODS["rtn"].run(WeightOnlyConfig(), tiny_llama_dir, tmp_path / "q", ProgressReporter())
    chosen = METHODS[method]
    with pytest.raises(ValueError, match="already quantized"):
        chosen.run(config or chosen.config_cls(), tmp_path / "q", tmp_path / "again", ProgressReporter())
