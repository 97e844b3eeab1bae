"""Transform-only methods: AWQ and SmoothQuant scales folded into a float model that an engine's
own quantizer rounds later. The float function is kept (up to AWQ's clamp), the output reloads in
plain transformers, and the engine's rounding loses less on it than on the untransformed model."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from modelpress.v1 import common_pb2
from services.common.datasets.calibration_text import calibration_batches, calibration_text
from services.common.contract.engine_api import ProgressReporter
from services.common.models import modelio
from services.quantizer import activations as acts
from services.quantizer.configs import AwqTransformConfig, SmoothQuantTransformConfig
from services.quantizer.engine import METHODS
from services.quantizer.qscheme import WeightScheme, compute_qparams, fake_quantize
from services.quantizer.transforms import clamp_to_grid, grid_range

CALIBRATION = {"calibration_samples": 4, "calibration_sequence_length": 64}


@pytest.fixture(scope="module")
def outlier_llama_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with a few input channels of every norm 30x larger: the activation outliers
    real LLMs carry, which AWQ and SmoothQuant exist for."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                channels = torch.randperm(norm.weight.numel(), generator=generator)[:4]
                norm.weight[channels] *= 30.0
    folder = tmp_path_factory.mktemp("outlier-llama")
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_llama_dir / name).exists():
            (folder / name).write_bytes((tiny_llama_dir / name).read_bytes())
    return folder


def _run(method: str, config, src, dst):
    events = []
    result = METHODS[method].run(config, src, dst, ProgressReporter(sink=events.append))
    return result, events


def _tokens(folder):
    return calibration_batches(modelio.load_tokenizer(folder), 2, 64, calibration_text(None))


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _rounded(folder, scheme: WeightScheme):
    """The model as an engine's min/max quantizer would compute it: every block Linear on the grid."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, module in model.model.layers.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.data = fake_quantize(module.weight.data, scheme.for_layer(module.in_features))[0]
    return model


def _relative_error(logits, reference):
    return float((logits - reference).pow(2).mean() / reference.pow(2).mean())


def test_transforms_declare_float_in_and_out():
    for name in ("awq-transform", "smoothquant-transform"):
        assert METHODS[name].accepts == (common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS,)
        assert METHODS[name].produces == (common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS,)


def test_awq_scales_alone_keep_the_float_function_and_reload_in_transformers(outlier_llama_dir, tmp_path):
    config = AwqTransformConfig(group_size=32, clip_search=False, **CALIBRATION)
    result, events = _run("awq-transform", config, outlier_llama_dir, tmp_path)
    assert result.format == common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
    assert result.compression["rounded"] is False
    assert result.metrics["scaled_modules"] > 0 and result.metrics["rewritten_tensors"] > 0
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    tokens = _tokens(outlier_llama_dir)
    before = AutoModelForCausalLM.from_pretrained(outlier_llama_dir, dtype=torch.float32).eval()
    after = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert _relative_error(_logits(after, tokens), _logits(before, tokens)) < 1e-8
    changed = [n for n, p in after.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert any("layernorm" in n for n in changed) and any("proj" in n for n in changed)
    assert any(e.metrics.get("layer") for e in events)


def test_awq_transform_makes_the_engines_rounding_lose_less(outlier_llama_dir, tmp_path):
    scheme = WeightScheme(4, 32, True)
    _run("awq-transform", AwqTransformConfig(group_size=32, **CALIBRATION), outlier_llama_dir, tmp_path)
    tokens = _tokens(outlier_llama_dir)
    reference = _logits(AutoModelForCausalLM.from_pretrained(outlier_llama_dir, dtype=torch.float32).eval(), tokens)
    plain = _relative_error(_logits(_rounded(outlier_llama_dir, scheme), tokens), reference)
    transformed = _relative_error(_logits(_rounded(tmp_path, scheme), tokens), reference)
    assert transformed < 0.8 * plain, (transformed, plain)


def test_clamp_keeps_every_group_inside_the_range_its_grid_spans():
    torch.manual_seed(0)
    weight = torch.randn(8, 64)
    for scheme in (WeightScheme(4, 32, True), WeightScheme(4, 32, False)):
        params = compute_qparams(weight, scheme, torch.full((8, 2), 0.7))
        clamped, share = clamp_to_grid(weight, params, scheme)
        lo, hi = grid_range(params, scheme)
        groups = clamped.reshape(8, 2, 32)
        assert (groups >= lo[..., None] - 1e-6).all() and (groups <= hi[..., None] + 1e-6).all()
        assert 0 < share < 1
        # A min/max quantizer of the clamped weights spans (about) the searched range again.
        again = compute_qparams(clamped, scheme)
        assert torch.allclose(again.scale, params.scale, rtol=2e-3)


def test_smoothquant_transform_keeps_the_function_and_eases_per_tensor_int8(outlier_llama_dir, tmp_path):
    result, _ = _run("smoothquant-transform", SmoothQuantTransformConfig(**CALIBRATION), outlier_llama_dir, tmp_path)
    assert result.metrics["scaled_modules"] > 0
    tokens = _tokens(outlier_llama_dir)
    before = AutoModelForCausalLM.from_pretrained(outlier_llama_dir, dtype=torch.float32).eval()
    after = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reference = _logits(before, tokens)
    assert _relative_error(_logits(after, tokens), reference) < 1e-8
    scheme = acts.ActivationScheme(dynamic=True, per_tensor=True)

    def w8a8(model):
        layers = {n: m for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}
        with torch.no_grad():
            for m in layers.values():
                m.weight.data = fake_quantize(m.weight.data, WeightScheme(8, 0, True))[0]
        with acts.simulated(layers, scheme):
            return _logits(model, tokens)

    assert _relative_error(w8a8(after), reference) < 0.8 * _relative_error(w8a8(before), reference)
