"""The pruner's methods end to end on tiny random models: exact sparsity and structure in the
written checkpoint, data-aware masks losing less than magnitude, gradual schedules, recovery that
keeps pruned weights at zero, and refusals before any work."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from services.common.models import modelio
from services.common.contract.config import ConfigError, parse_config
from services.common.contract.engine_api import ProgressReporter
from services.pruner.engine import METHODS, cubic_sparsities
from services.pruner.unstructured import block_linears

CALIBRATION = {"calibration_samples": 8, "calibration_sequence_length": 64}


def run(method, folder, dst, **config):
    events = []
    m = METHODS[method]
    result = m.run(parse_config(m.config_cls, {**CALIBRATION, **config}), folder, dst,
                   ProgressReporter(sink=events.append))
    return result, events


def output_error(folder, reference) -> float:
    """Relative error of the last block's output against the unpruned model on held-out text
    (a random model's logits are near uniform whatever is pruned; its hidden states are not)."""
    from services.common.datasets import corpus

    ids = modelio.load_tokenizer(folder)(corpus.heldout_text()[:4000], return_tensors="pt").input_ids[:, :256]
    with torch.no_grad():
        outputs = [modelio.load_model(f).model(input_ids=ids).last_hidden_state for f in (folder, reference)]
    return float((outputs[0] - outputs[1]).norm() / outputs[1].norm())


@pytest.fixture(scope="module")
def wide_llama_dir(tmp_path_factory, tiny_llama_dir):
    """A tiny Llama wide enough (256 inputs per Linear) for SparseGPT's block of 128 columns."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("wide-llama")
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    for f in tiny_llama_dir.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_each_method_zeros_exactly_half_of_every_block_linear_and_reloads(method, wide_llama_dir, tmp_path):
    result, events = run(method, wide_llama_dir, tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    source = AutoModelForCausalLM.from_pretrained(wide_llama_dir)
    for name, linear in block_linears(model).items():
        assert float((linear.weight == 0).float().mean()) == 0.5, name
    assert torch.equal(model.model.embed_tokens.weight, source.model.embed_tokens.weight)
    assert result.metrics["sparsity"] == 0.5 and result.compression["storage"] == "dense-zeros"
    assert result.metrics["pruned_linear_bytes_bitmask"] < 0.6 * result.metrics["pruned_linear_bytes_dense"]
    layers = {e.metrics["layer"] for e in events if "sparsity" in e.metrics and "layer" in e.metrics}
    assert layers == set(block_linears(model))


def test_data_aware_masks_lose_less_than_magnitude(wide_llama_dir, tmp_path):
    losses = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        run(method, wide_llama_dir, tmp_path / method, sparsity=0.6)
        losses[method] = output_error(tmp_path / method, wide_llama_dir)
    assert losses["sparsegpt"] < losses["magnitude"] and losses["wanda"] < losses["magnitude"], losses


@pytest.mark.parametrize("method,structure", [("magnitude", "4:8"), ("wanda", "2:4"), ("sparsegpt", "2:4")])
def test_n_of_m_keeps_n_in_every_group_of_m_inputs(method, structure, wide_llama_dir, tmp_path):
    kept, group = (int(x) for x in structure.split(":"))
    result, _ = run(method, wide_llama_dir, tmp_path / "out", structure=structure)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, linear in block_linears(model).items():
        w = linear.weight
        assert ((w != 0).view(w.shape[0], -1, group).sum(-1) <= kept).all(), name
    assert result.metrics["sparsity"] == pytest.approx(1 - kept / group, abs=1e-3)


def test_n_of_m_on_a_width_it_does_not_divide_is_refused_before_any_work(tmp_path, tiny_llama_dir):
    config = LlamaConfig(vocab_size=30522, hidden_size=36, intermediate_size=72, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    folder = tmp_path / "odd"
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    events = []
    m = METHODS["sparsegpt"]
    with pytest.raises(ValueError, match="4:8 needs input widths that are multiples of 8; not: model.layers.0"):
        m.run(parse_config(m.config_cls, {"structure": "4:8"}), folder, tmp_path / "out",
              ProgressReporter(sink=events.append))
    assert len(events) == 1 and not (tmp_path / "out").exists()


def test_bad_combinations_are_config_errors():
    for method, values, field in [("sparsegpt", {"structure": "2:4", "sparsity": 0.3}, "sparsity"),
                                  ("magnitude", {"scope": "global", "structure": "2:4"}, "scope"),
                                  ("wanda", {"owl": True, "structure": "4:8"}, "owl"),
                                  ("structured", {"target_flops": 0.5, "mlp_keep": 0.5}, "target_flops"),
                                  ("mlp-neurons", {"mlp_keep": 1.0}, "nothing to prune"),
                                  ("layers", {"layers_keep_share": 1.0}, "nothing to prune"),
                                  ("sparsegpt", {"structure": "2:4", "schedule_steps": 3}, "schedule_steps")]:
        with pytest.raises(ConfigError, match=field):
            parse_config(METHODS[method].config_cls, values)


def test_gradual_follows_the_cubic_schedule_and_ends_at_the_target(wide_llama_dir, tmp_path):
    assert cubic_sparsities(0.5, 3) == pytest.approx([0.5 * (1 - (2 / 3) ** 3), 0.5 * (1 - (1 / 3) ** 3), 0.5])
    result, events = run("wanda", wide_llama_dir, tmp_path / "out", schedule_steps=3)
    assert result.metrics["schedule"] == pytest.approx(cubic_sparsities(0.5, 3))
    assert result.metrics["sparsity"] == 0.5
    assert any(e.message.startswith("step 1/3") for e in events) and any(e.message.startswith("step 3/3")
                                                                          for e in events)


def test_recovery_trains_toward_the_teacher_and_keeps_pruned_weights_zero(wide_llama_dir, tmp_path):
    result, events = run("magnitude", wide_llama_dir, tmp_path / "out", sparsity=0.5, recovery_minutes=1.0,
                         recovery_steps=12, recovery_batch=2, recovery_sequence_length=64)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, linear in block_linears(model).items():
        assert float((linear.weight == 0).float().mean()) == 0.5, name
    recovery = result.metrics["recovery"][0]
    assert recovery["steps"] == 12 and recovery["last_loss"] < recovery["first_loss"]
    assert sum("recovery_loss" in e.metrics for e in events) == 12


def test_a_cancel_lands_inside_recovery(wide_llama_dir, tmp_path):
    from services.common.contract.engine_api import StageCancelled

    reporter = ProgressReporter()

    def sink(progress):
        if "recovery_loss" in progress.metrics:
            reporter.cancelled.set()

    reporter.sink = sink
    m = METHODS["magnitude"]
    config = parse_config(m.config_cls, {"recovery_minutes": 5.0, "recovery_batch": 1,
                                         "recovery_sequence_length": 32})
    with pytest.raises(StageCancelled):
        m.run(config, wide_llama_dir, tmp_path / "out", reporter)
