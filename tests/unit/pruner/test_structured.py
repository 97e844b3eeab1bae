"""Structured pruning on tiny random models: physically cut models reload with stock transformers
and compute what the original computes with the same units masked; FLOPs drop as counted; what
an architecture cannot reload is refused with the reason."""

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from services.common.models import modelio
from services.common.contract.config import parse_config
from services.common.contract.engine_api import ProgressReporter
from services.common.measure.flops import forward_flops
from services.common.models.modelio import UnsupportedModelError
from services.common.models.architecture import Architecture
from services.pruner.configs import StructuredConfig
from services.pruner.engine import METHODS
from services.pruner.importance import score_units
from services.pruner.structured import Shape, cut_to, refit_columns, schedule_shapes

CALIBRATION = {"calibration_samples": 4, "calibration_sequence_length": 32}


def run(method, folder, dst, **config):
    m = METHODS[method]
    return m.run(parse_config(m.config_cls, {**CALIBRATION, **config}), folder, dst, ProgressReporter())


def ids(n=24):
    return torch.randint(1000, 5000, (1, n), generator=torch.Generator().manual_seed(3))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def test_removed_mlp_neurons_equal_masking_them(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    masked = copy.deepcopy(model)
    config = StructuredConfig(mlp_keep=0.5, importance="magnitude")
    scores = score_units(model, ids(32).repeat(2, 1), "magnitude", "cosine", "kv-group", want_heads=False)
    cut_to(model, Shape(2, 64, 2), scores, config)
    with torch.no_grad():
        for layer, s in zip(masked.model.layers, scores.mlp):
            dropped = s.argsort()[:64]
            layer.mlp.down_proj.weight[:, dropped] = 0
    x = ids()
    assert torch.allclose(logits(model, x), logits(masked, x), atol=1e-5)
    assert model.model.layers[0].mlp.up_proj.out_features == 64 and model.config.intermediate_size == 64


@pytest.mark.parametrize("unit", ["kv-group", "query-head"])
def test_removed_heads_equal_masking_them(unit, tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    masked = copy.deepcopy(model)
    arch = Architecture(model)
    config = StructuredConfig(heads_keep=0.5, head_unit=unit, importance="magnitude")
    scores = score_units(model, ids(32).repeat(2, 1), "magnitude", "cosine", unit, want_heads=True)
    cut_to(model, Shape(2, 128, 1), scores, config)
    d = arch.head_dim
    with torch.no_grad():
        for layer, s in zip(masked.model.layers, scores.heads):
            dropped = int(s.argmin())
            heads = [dropped * 2, dropped * 2 + 1] if unit == "kv-group" else [dropped, 2 + dropped]
            for h in heads:
                layer.self_attn.o_proj.weight[:, h * d:(h + 1) * d] = 0
    x = ids()
    assert torch.allclose(logits(model, x), logits(masked, x), atol=1e-5)
    expected = (2, 1) if unit == "kv-group" else (2, 2)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == expected


def test_a_refit_is_the_least_squares_solution_and_beats_slicing():
    torch.manual_seed(0)
    # Inputs of rank 6 (and a little noise) in 12 columns: the 7 kept columns can carry the 5 cut ones.
    x = torch.randn(400, 6) @ torch.randn(6, 12) + 0.01 * torch.randn(400, 12)
    weight = torch.randn(5, 12)
    keep = torch.tensor([0, 2, 3, 5, 7, 8, 11])
    fitted, errors = refit_columns(weight, x.t() @ x, keep)
    best = torch.linalg.lstsq(x[:, keep].double(), (x @ weight.t()).double()).solution.t().float()
    relative = lambda w: float(((x @ weight.t() - x[:, keep] @ w.t()).norm() / (x @ weight.t()).norm()) ** 2)  # noqa: E731
    # The ridge costs a little against the unregularized optimum, and the figures are the errors they name.
    assert relative(best) <= relative(fitted) <= relative(best) + 0.01 * relative(weight[:, keep])
    assert errors["sliced"] == pytest.approx(relative(weight[:, keep]), rel=1e-4)
    assert errors["refit"] == pytest.approx(relative(fitted), rel=1e-3, abs=1e-6)
    assert errors["refit"] < 0.5 * errors["sliced"]


@pytest.mark.parametrize("heads", [False, True])
def test_a_reconstructed_cut_stays_closer_to_the_uncut_model(heads, tiny_llama_dir):
    uncut = modelio.load_model(tiny_llama_dir)
    calibration = torch.randint(1000, 5000, (8, 32), generator=torch.Generator().manual_seed(1))
    shape = Shape(2, 128, 1) if heads else Shape(2, 64, 2)
    config = StructuredConfig(heads_keep=0.5) if heads else StructuredConfig(mlp_keep=0.5)
    outputs = {}
    for reconstruct in (False, True):
        model = copy.deepcopy(uncut)
        scores = score_units(model, calibration, "activation", "cosine", "kv-group", want_heads=heads,
                             grams=reconstruct)
        figures = cut_to(model, shape, scores, config)
        outputs[reconstruct] = logits(model, calibration)
    key = "attention_error" if heads else "mlp_error"
    assert all(layer[f"{key}_refit"] < layer[f"{key}_sliced"] for layer in figures["per_layer"])
    reference = logits(uncut, calibration)
    error = {r: float((out - reference).norm()) for r, out in outputs.items()}
    assert error[True] < error[False]


@pytest.mark.parametrize("method,config", [
    ("mlp-neurons", {"mlp_keep": 0.5}),
    ("mlp-neurons", {"mlp_keep": 0.5, "reconstruct": True}),
    ("layers", {"layers_keep": 1}),
    ("heads", {"heads_keep": 0.5}),
    ("heads", {"heads_keep": 0.5, "head_unit": "query-head", "importance": "taylor"}),
    ("mlp-neurons", {"mlp_keep": 0.5, "importance": "fisher", "schedule_steps": 2}),
    ("layers", {"layers_keep": 1, "layer_importance": "taylor"}),
])
def test_cut_decoders_reload_with_stock_transformers(method, config, tiny_llama_dir, tmp_path):
    result = run(method, tiny_llama_dir, tmp_path / "out", **config)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert result.metrics["reload_max_abs_difference"] <= 1e-5
    assert sum(p.numel() for p in reloaded.parameters()) == result.metrics["parameters"]
    assert result.metrics["flops_after"] < result.metrics["flops_before"]
    assert forward_flops(reloaded, 128)[0] == result.metrics["flops_after"]
    reloaded.generate(ids(4), max_new_tokens=3, do_sample=False)  # the KV cache still lines up


def test_flops_drop_by_exactly_the_removed_mlp(tiny_llama_dir, tmp_path):
    model = modelio.load_model(tiny_llama_dir)
    total, per_module = forward_flops(model, 128)
    mlp = sum(v for k, v in per_module.items() if k.endswith(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")))
    result = run("mlp-neurons", tiny_llama_dir, tmp_path / "out", mlp_keep=0.5)
    assert result.metrics["flops_after"] == total - mlp // 2


def test_a_flops_target_is_met_on_an_encoder(tiny_bert_dir, tmp_path):
    result = run("structured", tiny_bert_dir, tmp_path / "out", target_flops=0.5, width_multiple=8)
    assert result.metrics["flops_ratio"] <= 0.5
    reloaded = AutoModel.from_pretrained(tmp_path / "out")
    assert reloaded.config.num_hidden_layers == result.metrics["shape_after"]["layers"]
    assert reloaded.config.intermediate_size == result.metrics["shape_after"]["mlp_width"]


def test_bert_heads_and_encoder_gradients_are_refused_with_the_reason(tiny_bert_dir, tmp_path):
    with pytest.raises(UnsupportedModelError, match="hidden_size / num_attention_heads"):
        run("heads", tiny_bert_dir, tmp_path / "a")
    with pytest.raises(ValueError, match="taylor needs a training loss"):
        run("mlp-neurons", tiny_bert_dir, tmp_path / "b", importance="taylor", width_multiple=8)


def test_encoder_recovery_moves_toward_the_teacher(tiny_bert_dir, tmp_path):
    result = run("mlp-neurons", tiny_bert_dir, tmp_path / "out", mlp_keep=0.25, width_multiple=8,
                 recovery_minutes=1.0, recovery_steps=40, recovery_batch=8, recovery_sequence_length=32,
                 recovery_learning_rate=1e-3)
    recovery = result.metrics["recovery"][0]
    assert recovery["steps"] == 40 and recovery["last_loss"] < recovery["first_loss"]


def test_cubic_shapes_end_at_the_target():
    shapes = schedule_shapes(Shape(30, 1536, 3), Shape(22, 1024, 2), 3)
    assert shapes[-1] == Shape(22, 1024, 2)
    assert shapes[0].layers < 30 and shapes[0].mlp_width > shapes[1].mlp_width > 1024
