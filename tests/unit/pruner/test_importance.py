"""Importance scores are objects in registries: the config allows exactly their names, the
calibration pass gathers what the chosen scores need, and a new score is one class."""

import typing

import pytest
import torch

from services.common.contract.config import describe_method
from services.common.models import modelio
from services.pruner.configs import StructuredConfig
from services.pruner.importance import (BLOCK_SCORES, GRADIENTS, UNIT_SCORES, PassStatistics, UnitScore,
                                        score_units)


def windows(n=2, length=16):
    return torch.randint(1000, 5000, (n, length), generator=torch.Generator().manual_seed(5))


def test_the_configs_allowed_scores_are_the_registered_ones():
    for field, registry in (("importance", UNIT_SCORES), ("layer_importance", BLOCK_SCORES)):
        assert typing.get_args(StructuredConfig.model_fields[field].annotation) == registry.names()
        described = {f.name: f for f in describe_method(2, "structured", "s", StructuredConfig).fields}[field]
        assert tuple(described.choices) == registry.names()
        assert all(f"{name}: {score.description}" in described.help for name, score in registry.items())
    assert set(UNIT_SCORES) >= {"magnitude", "activation", "taylor", "fisher"}
    assert set(BLOCK_SCORES) >= {"cosine", "taylor", "fisher"}


@pytest.mark.parametrize("importance", list(UNIT_SCORES))
def test_every_unit_score_scores_every_neuron_and_head_unit(importance, tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    scores = score_units(model, windows(), importance, "cosine", "kv-group", want_heads=True)
    assert [tuple(s.shape) for s in scores.mlp] == [(128,), (128,)]
    assert [tuple(h.shape) for h in scores.heads] == [(2,), (2,)]
    assert all(bool(torch.isfinite(s).all()) and float(s.min()) >= 0 for s in scores.mlp + scores.heads)


@pytest.mark.parametrize("layer_importance", list(BLOCK_SCORES))
def test_every_block_score_scores_every_block(layer_importance, tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    scores = score_units(model, windows(), "magnitude", layer_importance, "kv-group", want_heads=False)
    assert scores.blocks.shape == (2,) and bool(torch.isfinite(scores.blocks).all())


def test_a_score_that_needs_gradients_on_an_encoder_is_refused_naming_its_field(tiny_bert_dir):
    model = modelio.load_model(tiny_bert_dir)
    with pytest.raises(ValueError, match="^layer_importance: fisher needs a training loss"):
        score_units(model, windows(), "activation", "fisher", "kv-group", want_heads=False)
    with pytest.raises(ValueError, match="^importance: unknown unit importance 'entropy'; allowed: magnitude"):
        score_units(model, windows(), "entropy", "cosine", "kv-group", want_heads=False)


def test_a_new_score_is_one_class_and_gets_the_statistics_it_asks_for(tiny_llama_dir, monkeypatch):
    seen: list[PassStatistics] = []

    class GradientNorm(UnitScore):
        name = "gradient-norm"
        description = "toy: the Fisher sums, square-rooted"
        needs = frozenset({GRADIENTS})

        def score(self, arch, block, index, head_unit, stats, want_heads):
            seen.append(stats)
            mlp, heads = stats.fisher[index]
            return mlp.sqrt(), heads.sqrt() if heads is not None else None

    monkeypatch.setitem(UNIT_SCORES, GradientNorm.name, GradientNorm())
    model = modelio.load_model(tiny_llama_dir)
    scores = score_units(model, windows(), "gradient-norm", "cosine", "kv-group", want_heads=True)
    fisher = score_units(model, windows(), "fisher", "cosine", "kv-group", want_heads=True)
    assert all(torch.allclose(a, b.sqrt()) for a, b in zip(scores.mlp, fisher.mlp))
    assert seen[0].fisher[0] is not None and not seen[0].mlp_square  # activations were not asked for


def test_fluctuation_ranks_a_steady_neuron_last_whatever_its_weights(tiny_llama_dir):
    from services.common.models.architecture import Architecture
    from services.pruner.importance import Fluctuation

    model = modelio.load_model(tiny_llama_dir)
    arch, block = Architecture(model), model.model.layers[0]
    down = block.mlp.down_proj.weight
    with torch.no_grad():
        down[:, 0] *= 100  # the largest output weights: magnitude keeps neuron 0 first
    rows, mean = 10, torch.full((128,), 0.5)
    variance = torch.linspace(0.1, 2.0, 128)
    variance[0] = 0.0  # neuron 0 always outputs its mean
    stats = PassStatistics(mlp_moments={0: (mean * rows, (variance + mean ** 2) * rows, rows)})
    mlp, heads = Fluctuation().score(arch, block, 0, "kv-group", stats, want_heads=False)
    assert heads is None and int(mlp.argmin()) == 0 and float(mlp[0]) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(mlp[1:], variance[1:] * down[:, 1:].detach().pow(2).sum(0), rtol=1e-4)
    magnitude, _ = UNIT_SCORES["magnitude"].score(arch, block, 0, "kv-group", stats, want_heads=False)
    assert int(magnitude.argmax()) == 0


def test_a_structured_cut_by_fluctuation_reloads(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from services.common.contract.config import parse_config
    from services.common.contract.engine_api import ProgressReporter
    from services.pruner.engine import METHODS

    entry = METHODS["heads"]
    config = parse_config(entry.config_cls, {"heads_keep": 0.5, "mlp_keep": 0.5, "importance": "fluctuation",
                                             "calibration_samples": 2, "calibration_sequence_length": 32})
    result = entry.run(config, tiny_llama_dir, tmp_path / "out", ProgressReporter())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert (reloaded.config.intermediate_size, reloaded.config.num_key_value_heads) == (64, 1)
    assert result.metrics["reload_max_abs_difference"] <= 1e-5


def _refit_errors(weight, gram, groups):
    """Brute force: the output error of removing each group with the rest refitted by least squares."""
    from services.pruner.structured import refit_columns

    errors = []
    for c in groups:
        keep = torch.tensor([j for j in range(weight.shape[1]) if j not in set(c.tolist())])
        errors.append(refit_columns(weight, gram, keep)[1]["refit"])
    return torch.tensor(errors)


def test_obs_removes_first_what_the_refit_carries_and_agrees_with_brute_force():
    from services.pruner.importance import obs_order

    torch.manual_seed(0)
    x = torch.randn(500, 8)
    x[:, 5] = x[:, 0] + 0.01 * torch.randn(500)  # input 5 nearly repeats input 0: the refit carries either
    weight = torch.randn(4, 8)
    weight[:, 0] *= 10  # the largest output weights: a size-based score keeps neuron 0 first
    gram = (x.t() @ x).double()
    columns = [torch.tensor([j]) for j in range(8)]
    order = obs_order(weight, gram, columns)
    assert sorted(order.tolist()) == list(range(8))
    assert int(order.argmin()) in (0, 5)
    assert int(order.argmin()) == int(_refit_errors(weight, gram, columns).argmin())
    # Groups of columns (head units): the first group removed is the one brute force picks.
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 6]), torch.tensor([5, 7])]
    grouped = obs_order(weight, gram, groups)
    assert sorted(grouped.tolist()) == [0, 1, 2, 3]
    assert int(grouped.argmin()) == int(_refit_errors(weight, gram, groups).argmin())


def test_obs_without_the_refit_it_orders_for_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="importance: 'obs' orders units for a refitted cut; set reconstruct=true"):
        StructuredConfig(mlp_keep=0.5, importance="obs")
    assert StructuredConfig(mlp_keep=0.5, importance="obs", reconstruct=True).importance == "obs"


def test_obs_then_refit_leaves_less_output_error_than_activation(tiny_llama_dir):
    import copy

    from services.pruner.structured import Shape, cut_to

    uncut = modelio.load_model(tiny_llama_dir)
    calibration = windows(8, 32)
    errors = {}
    for importance in ("activation", "obs"):
        model = copy.deepcopy(uncut)
        scores = score_units(model, calibration, importance, "cosine", "kv-group", want_heads=False, grams=True)
        figures = cut_to(model, Shape(2, 48, 2), scores, StructuredConfig(mlp_keep=0.375))
        errors[importance] = [layer["mlp_error_refit"] for layer in figures["per_layer"]]
    assert all(o < a for o, a in zip(errors["obs"], errors["activation"])), errors
