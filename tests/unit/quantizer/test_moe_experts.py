"""Routed experts, quantized expert by expert: each expert's projections are Linears whose
statistics come from the tokens the router sends that expert; an expert no calibration token
reached is rounded to nearest and reported."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.common.calibration.blocks import (InputStatsCollector, capture_first_block_inputs, linear_layers,
                                                run_block)
from services.common.calibration.hessian import relative_output_error
from services.common.calibration.streaming import StreamingModel
from services.common.models import families
from services.quantizer.configs import GptqConfig
from services.quantizer.gptq import gptq_block_step, gptq_quantize
from services.quantizer.qscheme import WeightScheme, fake_quantize
from services.quantizer.rtn import round_weight
from services.quantizer.sequential import describe_uncalibrated, quantize_sequential
from services.quantizer.targets import weight_targets
from services.quantizer.weight_only import experts_report
from tests.unit.common.calibration.test_streaming_conversion import tiny_model

BATCHES = torch.randint(1, 64, (4, 16), generator=torch.Generator().manual_seed(1))


def route_to_first_two(folder):
    """Top-1 routing whose router logits are (a, -a, 0, 0): experts 2 and 3 are never chosen."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    for key in [k for k in tensors if k.endswith("block_sparse_moe.gate.weight")]:
        row = tensors[key][0].clone()
        tensors[key] = torch.stack([row, -row, torch.zeros_like(row), torch.zeros_like(row)])
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


def test_an_expert_without_tokens_is_rounded_to_nearest_and_reported(tmp_path):
    folder = route_to_first_two(tiny_model(tmp_path / "mixtral", "mixtral", num_experts_per_tok=1))
    source = StreamingModel(folder)
    config = GptqConfig(group_size=0)
    targets = weight_targets(source.model, config)
    # The router stays float: it is no target.
    assert not any(t.name.endswith("mlp.gate") for t in targets)
    figures = {}
    result = quantize_sequential(source, targets, BATCHES, gptq_block_step(0.01, 128, True),
                                 lambda _i, _n, name, f: figures.setdefault(name, f))
    idle = {f"model.layers.{b}.mlp.experts.{e}.{leaf}" for b in (0, 1) for e in (2, 3) for leaf in ("w1", "w2", "w3")}
    assert set(result.uncalibrated) == idle
    for name in idle:
        assert figures[name] == {**figures[name], "method": "rtn", "no_calibration_tokens": True}
        stored = StreamingModel(folder).reader.get(source.key(f"{name}.weight"))
        expected, _ = round_weight(stored, targets[0].scheme, "Linear")
        assert torch.equal(result.quantized[name].codes, expected.codes)
    reached = [n for n in result.quantized if ".experts.0." in n or ".experts.1." in n]
    assert reached and all(figures[n]["method"] == "gptq" for n in reached)
    assert describe_uncalibrated(result.uncalibrated) == (
        "model.layers.0.mlp.experts: experts 2, 3 (w1, w2, w3); model.layers.1.mlp.experts: experts 2, 3 (w1, w2, w3)")
    compression, notes = experts_report(source, result.uncalibrated)
    assert compression["experts"] == families.FAMILIES["mixtral"].experts.reload
    assert len(notes) == 1 and "12 expert Linears got no calibration tokens" in notes[0] and "experts 2, 3" in notes[0]


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_gptq_on_one_expert_beats_rtn_on_its_routed_tokens(tmp_path, model_type):
    source = StreamingModel(tiny_model(tmp_path / model_type, model_type))
    source.load(exclude=["model.layers"])
    inputs = capture_first_block_inputs(source.model, BATCHES)
    routed = []
    with source.loaded("model.layers.0") as block:
        experts = block.mlp.experts
        leaves = {"w1", "w3"} if model_type == "mixtral" else {"gate_proj", "up_proj"}
        expert = 1
        layers = {n: m for n, m in linear_layers(block).items() if n.startswith(f"mlp.experts.{expert}.")}
        hook = experts.register_forward_pre_hook(lambda _m, args: routed.append((args[0], args[1])))
        collector = InputStatsCollector(layers)
        try:
            run_block(block, inputs, keep=False)
        finally:
            collector.close()
            hook.remove()
        # The gate's Hessian is exactly that of the tokens the router sent to this expert.
        x = torch.cat([hidden[(index == expert).any(dim=-1)] for hidden, index in routed])
        assert 0 < x.shape[0] < sum(h.numel() // h.shape[-1] for h in inputs.hidden)
        gate = next(n for n in layers if n.rpartition(".")[2] in leaves)
        stats = collector.stats[gate]
        assert stats.rows == x.shape[0]
        torch.testing.assert_close(stats.hessian, 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-5)
        scheme = WeightScheme(4, 0, True)
        for name, module in layers.items():
            weight, hessian = module.weight.detach(), collector.stats[name].hessian
            rtn, _ = fake_quantize(weight, scheme)
            gptq = gptq_quantize(weight, hessian, scheme)
            assert not gptq.fell_back_to_rtn
            assert relative_output_error(weight, gptq.weight, hessian) < relative_output_error(weight, rtn, hessian)


def test_w8a8_keeps_experts_weight_only_and_asymmetric_experts_are_refused(tmp_path):
    """Stock transformers reloads experts only from packed symmetric weight-only codes (it dequantizes
    them into its fused tensors): W8A8 quantizes their weights, not their inputs; an asymmetric grid
    for them is refused naming the family."""
    from services.quantizer.configs import W8A8Config, WeightOnlyConfig
    from services.quantizer.smoothquant import w8a8_block_step
    from services.quantizer.weight_only import check_experts_reload

    source = StreamingModel(tiny_model(tmp_path / "qwen3_moe", "qwen3_moe"))
    targets = weight_targets(source.model, WeightOnlyConfig(bits=8, group_size=0))
    result = quantize_sequential(source, targets, BATCHES, w8a8_block_step(W8A8Config(activations="static")),
                                 lambda *_: None)
    experts = [n for n in result.quantized if ".mlp.experts." in n]
    assert len(experts) == 2 * 4 * 3
    assert all(result.quantized[n].activations is None and result.quantized[n].input_scale is None for n in experts)
    assert result.quantized["model.layers.0.self_attn.q_proj"].activations is not None
    check_experts_reload(source, result.quantized)
    # transformers decompresses every expert with one scheme: two among the experts are refused.
    mixed = {**result.quantized, experts[0]: dataclasses.replace(result.quantized[experts[0]],
                                                                 scheme=WeightScheme(4, 0, True))}
    with pytest.raises(families.UnsupportedModelError, match="'qwen3_moe'.*one scheme"):
        check_experts_reload(source, mixed)
    source = StreamingModel(source.reader.folder)
    asymmetric = weight_targets(source.model, WeightOnlyConfig(bits=4, group_size=0, symmetric=False))
    result = quantize_sequential(source, [t for t in asymmetric if t.role == "linear"], BATCHES,
                                 gptq_block_step(0.01, 128, True), lambda *_: None)
    with pytest.raises(families.UnsupportedModelError, match="'qwen3_moe'.*symmetric"):
        check_experts_reload(source, result.quantized)
