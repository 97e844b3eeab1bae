"""The math of each algorithm on small tensors and tiny models."""

import pytest
import torch
from transformers import BertModel

from services.common.models import modelio
from services.quantizer import activations as acts
from services.quantizer.awq import hessian_loss, module_loss, search_scales
from services.quantizer.clipping import output_error, search_clipping
from services.quantizer.configs import W8A8Config, WeightOnlyConfig
from services.quantizer.mixed import allocate, stored_bits
from services.quantizer.qat import StraightThroughQuantizer
from services.quantizer.qscheme import WeightScheme, compute_qparams, dequantize, fake_quantize, quantize
from services.quantizer.smoothing import fold, smoothing_groups
from services.quantizer.smoothquant import choose_scales, smoothquant_scales, w8a8_error
from services.quantizer.targets import weight_targets


def outlier_inputs(samples=1024, cols=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, cols, generator=g)
    x[:, :3] *= 40  # the outlier channels real LLM activations have
    return x


def test_smoothing_groups_follow_the_architecture(tiny_llama_dir, tiny_bert_dir):
    llama = modelio.load_model(tiny_llama_dir)
    groups = {(g.producer, g.consumers) for g in smoothing_groups(llama.model.layers[0])}
    assert ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")) in groups
    assert ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")) in groups
    assert ("mlp.up_proj", ("mlp.down_proj",)) in groups
    # Grouped-query attention (2 KV heads for 4 heads): v's outputs are not o's inputs.
    assert not any(p == "self_attn.v_proj" for p, _ in groups)
    bert = BertModel.from_pretrained(tiny_bert_dir)
    assert {(g.producer, g.consumers) for g in smoothing_groups(bert.encoder.layer[0])} == {
        ("attention.self.value", ("attention.output.dense",))}


def test_folding_smoothing_scales_keeps_the_float_model_exactly(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir).double()
    ids = torch.randint(0, 30522, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        g = torch.Generator().manual_seed(1)
        for block in model.model.layers:
            for group in smoothing_groups(block):
                consumers = [block.get_submodule(c) for c in group.consumers]
                x_max = torch.rand(consumers[0].in_features, generator=g, dtype=torch.float64) * 10
                weight = torch.cat([c.weight for c in consumers])
                fold(block.get_submodule(group.producer), consumers, smoothquant_scales(x_max, weight, 0.5))
        after = model(input_ids=ids).logits
        changed = model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(changed, torch.ones_like(changed))
    assert torch.allclose(after, before, atol=1e-10, rtol=1e-10)


def test_smoothing_makes_static_w8a8_better_on_outlier_activations():
    x = outlier_inputs()
    w = torch.randn(64, 128) * 0.05
    static = acts.ActivationScheme(dynamic=False)
    plain = w8a8_error(x, w, torch.ones(128), static)
    scales, alpha, searched = choose_scales(x, x.abs().amax(dim=0), w, W8A8Config(), static)
    assert alpha is not None and searched < 0.5 * plain
    # A fixed alpha is used as given.
    _, fixed_alpha, _ = choose_scales(x, x.abs().amax(dim=0), w, W8A8Config(alpha_search=False, alpha=0.8), static)
    assert fixed_alpha == 0.8


def test_activation_fake_quantization_matches_the_int8_grid():
    x = outlier_inputs(8, 16)
    dyn = acts.fake_quantize_activations(x, acts.ActivationScheme(dynamic=True))
    step = x.abs().amax(dim=-1, keepdim=True) / acts.HALF_RANGE
    assert torch.allclose(dyn / step, torch.round(dyn / step), atol=1e-4)
    assert ((dyn - x).abs() <= step / 2 * 1.001 + 1e-6).all()
    scale = acts.static_scale(x.abs().amax(dim=0))
    static = acts.fake_quantize_activations(x, acts.ActivationScheme(dynamic=False), scale)
    assert ((static - x).abs() <= scale / 2 * 1.001 + 1e-6).all()


def test_awq_scales_and_clipping_cut_output_error_below_rtn():
    x = outlier_inputs()
    h = 2 * x.T @ x / x.shape[0]
    w = torch.randn(96, 128) * 0.05
    scheme = WeightScheme(4, 32, True)
    rtn_error = float(output_error(fake_quantize(w, scheme)[0] - w, h) / output_error(w, h))
    scales, form, exponent, vs_unscaled = search_scales(w, x.abs().mean(dim=0), scheme, 20, hessian_loss(w, h))
    assert form != "none" and exponent > 0
    # The scaled grid, mapped back, is what the folded model computes; it beats RTN clearly.
    back = fake_quantize(w * scales, scheme)[0] / scales
    scaled_error = float(output_error(back - w, h) / output_error(w, h))
    assert scaled_error < 0.7 * rtn_error
    assert abs(scaled_error / rtn_error - vs_unscaled) < 1e-3

    ratio = search_clipping(w * scales, h / torch.outer(scales, scales), scheme, grid=20, max_shrink=0.5)
    assert ratio.shape == (96, 4) and float(ratio.min()) >= 0.5 and float(ratio.max()) <= 1.0
    hs = h / torch.outer(scales, scales)
    params = compute_qparams(w * scales, scheme, ratio)
    clipped = dequantize(quantize(w * scales, params, scheme), params)
    unclipped = fake_quantize(w * scales, scheme)[0]
    assert output_error(clipped - w * scales, hs) <= output_error(unclipped - w * scales, hs)


def test_straight_through_estimator_rounds_forward_and_passes_gradients():
    w = torch.randn(8, 32, requires_grad=True)
    scheme = WeightScheme(4, 32, True)
    params = compute_qparams(w.detach(), scheme)
    out = StraightThroughQuantizer(params, scheme)(w)
    assert torch.equal(out.detach(), dequantize(quantize(w.detach(), params, scheme), params))
    (out * torch.arange(32.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(32.0).expand(8, 32))


def test_mixed_precision_spends_the_budget_on_the_most_sensitive_layers(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    targets = weight_targets(model, WeightOnlyConfig(bits=4, group_size=32))
    linear = [t for t in targets if t.role == "linear"]
    sensitivity = {t.name: 0.001 for t in linear}
    sensitivity["model.layers.1.mlp.down_proj"] = 1.0
    sensitivity["model.layers.0.self_attn.k_proj"] = 0.2  # per extra stored bit, still below down_proj
    chosen, promoted = allocate(targets, sensitivity, average_bits=5.5)
    assert promoted[:2] == ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.k_proj"]
    chosen_linear = [t for t in chosen if t.role == "linear"]
    total = sum(stored_bits(t, t.scheme) for t in chosen_linear) / sum(t.module.weight.numel() for t in chosen_linear)
    assert total <= 5.5
    assert {t.name for t in chosen_linear if t.scheme.bits == 8} == set(promoted)
    # No budget beyond the base grid (4 bits + a 16-bit scale per 32): nothing is promoted.
    assert allocate(targets, sensitivity, average_bits=4.5)[1] == []


@pytest.mark.parametrize("dynamic", [True, False])
def test_w8a8_error_is_small_on_well_behaved_inputs(dynamic):
    x = torch.randn(512, 64)
    w = torch.randn(32, 64)
    assert w8a8_error(x, w, torch.ones(64), acts.ActivationScheme(dynamic)) < 1e-3


def test_awq_module_loss_scores_through_the_mlp_and_restores_the_weights(tiny_llama_dir):
    mlp = modelio.load_model(tiny_llama_dir).model.layers[0].mlp
    layers = [mlp.gate_proj, mlp.up_proj]
    before = [layer.weight.detach().clone() for layer in layers]
    sample = torch.randn(256, 64)
    loss = module_loss(mlp, layers, sample)
    stacked = torch.cat(before)
    assert loss(stacked) == 0.0
    assert loss(fake_quantize(stacked, WeightScheme(4, 32, True))[0]) > 0.0
    assert all(torch.equal(layer.weight, b) for layer, b in zip(layers, before))
