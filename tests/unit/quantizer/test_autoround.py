"""Learned rounding (AutoRound): what trains is each weight's rounding offset and each group's scale
gain; the stored codes are what the block computed with, and a block is never left worse than the
grid it started from."""

import torch
from safetensors.torch import load_file

from services.common.contract.engine_api import ProgressReporter
from services.quantizer.autoround import LearnedRoundingQuantizer
from services.quantizer.configs import AutoRoundConfig, AwqConfig
from services.quantizer.engine import METHODS
from services.quantizer.qscheme import WeightScheme, compute_qparams, dequantize, quantize

CALIBRATION = {"calibration_samples": 4, "calibration_sequence_length": 64, "group_size": 32}


def test_the_codes_it_stores_are_the_weights_it_trained_with():
    torch.manual_seed(0)
    scheme = WeightScheme(4, 32, True)
    weight = torch.randn(8, 64)
    params = compute_qparams(weight, scheme)
    quantizer = LearnedRoundingQuantizer(params, scheme, weight.shape)
    with torch.no_grad():
        quantizer.offset.uniform_(-0.5, 0.5)
    codes, grid = quantizer.rounded(weight)
    assert torch.equal(dequantize(codes, grid), quantizer(weight).detach())
    # The offsets moved codes off round-to-nearest, by one step at most.
    nearest = quantize(weight, params, scheme)
    moved = (codes.int() - nearest.int()).abs()
    assert moved.max() == 1 and 0 < moved.float().mean() < 1


def test_the_offsets_and_gains_follow_the_sign_of_their_gradient_within_their_ranges():
    scheme = WeightScheme(4, 32, False)
    weight = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    quantizer = LearnedRoundingQuantizer(compute_qparams(weight, scheme), scheme, weight.shape)
    # A loss that wants every weight larger: each offset rises, whatever the grid's zero point.
    loss = quantizer(weight).sum()
    loss.backward()
    assert (quantizer.offset.grad > 0).all()
    with torch.no_grad():
        quantizer.offset.sub_(quantizer.offset.grad.sign() * -2.0)
        quantizer.gain.add_(5.0)
    quantizer.constrain()
    assert quantizer.offset.max() == 0.5 and quantizer.gain.max() == 1.25


def test_each_block_ends_with_a_lower_error_than_its_starting_grid(tiny_llama_dir, tmp_path):
    seen = []
    config = AutoRoundConfig(steps_per_block=30, **CALIBRATION)
    METHODS["autoround"].run(config, tiny_llama_dir, tmp_path / "m", ProgressReporter(sink=seen.append))
    blocks = {p.metrics["block"]: p.metrics for p in seen if p.metrics.get("method") == "autoround"}
    assert sorted(blocks) == [0, 1]
    for figures in blocks.values():
        assert figures["learned_rounding_kept"] is True
        assert figures["block_loss_after"] < figures["block_loss_before"]


def test_a_step_too_large_to_help_leaves_the_starting_grid_as_it_was(tiny_llama_dir, tmp_path):
    METHODS["awq"].run(AwqConfig(**CALIBRATION), tiny_llama_dir, tmp_path / "awq", ProgressReporter())
    config = AutoRoundConfig(steps_per_block=3, learning_rate=1.0, **CALIBRATION)
    METHODS["autoround"].run(config, tiny_llama_dir, tmp_path / "ar", ProgressReporter())
    awq, learned = load_file(tmp_path / "awq" / "model.safetensors"), load_file(tmp_path / "ar" / "model.safetensors")
    assert awq.keys() == learned.keys()
    assert all(torch.equal(awq[k], learned[k]) for k in awq)
