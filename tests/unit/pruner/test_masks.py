"""Pruning masks and SparseGPT on single layers: exact counts and structures, and the order of the
layer errors the field expects (SparseGPT ≤ Wanda ≤ magnitude) on inputs with outlier channels."""

import pytest
import torch

from services.common.calibration.hessian import relative_output_error
from services.pruner.masks import (global_threshold, layer_mask, magnitude_scores, nm_mask, owl_sparsities,
                                   row_mask, wanda_scores)
from services.pruner.sparsegpt import sparsegpt_prune


@pytest.fixture(scope="module")
def layer():
    """A 64 × 256 weight and 2048 correlated input rows (as a layer's real inputs are: what
    SparseGPT's update exploits) whose channels differ in scale (what Wanda's ‖x‖ sees)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, generator=generator)
    scales = torch.exp(torch.randn(256, generator=generator) * 1.2)
    mixed = torch.randn(2048, 32, generator=generator) @ torch.randn(32, 256, generator=generator)
    x = (mixed + 0.5 * torch.randn(2048, 256, generator=generator)) * scales
    return weight, 2.0 / x.shape[0] * x.T @ x


def test_row_mask_prunes_exactly_the_share_of_every_row():
    scores = torch.rand(8, 100)
    mask = row_mask(scores, 0.37)
    assert (mask.sum(1) == 100 - 37).all()
    # what is pruned is the lowest of each row
    assert (scores.masked_fill(~mask, float("inf")).min(1).values >= scores.masked_fill(mask, -1).max(1).values).all()


def test_layer_and_nm_masks_meet_their_structure_exactly():
    scores = torch.rand(16, 64)
    assert int((~layer_mask(scores, 0.5)).sum()) == 16 * 64 // 2
    for kept, group in ((2, 4), (4, 8)):
        mask = nm_mask(scores, kept, group)
        assert (mask.view(16, 64 // group, group).sum(-1) == kept).all()
    with pytest.raises(ValueError, match="multiple of 8"):
        nm_mask(torch.rand(2, 12), 4, 8)


def test_global_threshold_prunes_the_share_over_all_layers():
    weights = [torch.randn(10, 10), torch.randn(10, 30) * 3]
    threshold = global_threshold([w.abs() for w in weights], 0.5)
    pruned = sum(int((w.abs() <= threshold).sum()) for w in weights)
    assert pruned == 200
    # the small-magnitude layer loses more than half, the large one less
    assert (weights[0].abs() <= threshold).float().mean() > 0.5 > (weights[1].abs() <= threshold).float().mean()


def test_owl_keeps_the_mean_and_prunes_outlier_heavy_blocks_less():
    sparsities = owl_sparsities([0.01, 0.03, 0.02], 0.5, 0.08)
    assert sum(sparsities) / 3 == pytest.approx(0.5)
    assert sparsities[1] < sparsities[2] < sparsities[0]
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    assert owl_sparsities([0.2, 0.2], 0.6, 0.08) == [0.6, 0.6]


def test_sparsegpt_beats_wanda_beats_magnitude_on_the_same_layer(layer):
    weight, hessian = layer
    magnitude = weight * row_mask(magnitude_scores(weight), 0.5)
    wanda = weight * row_mask(wanda_scores(weight, hessian), 0.5)
    sparse = sparsegpt_prune(weight, hessian, 0.5, block_size=128)
    errors = [relative_output_error(weight, w, hessian) for w in (sparse.weight, wanda, magnitude)]
    assert errors[0] < errors[1] < errors[2], errors
    assert not sparse.fell_back
    assert int((sparse.weight == 0).sum()) == weight.numel() // 2


def test_sparsegpt_two_of_four_keeps_two_in_every_group_and_beats_wanda(layer):
    weight, hessian = layer
    sparse = sparsegpt_prune(weight, hessian, 0.5, nm=(2, 4), block_size=128)
    assert ((sparse.weight != 0).view(64, 64, 4).sum(-1) == 2).all()
    wanda = weight * nm_mask(wanda_scores(weight, hessian), 2, 4)
    assert relative_output_error(weight, sparse.weight, hessian) < relative_output_error(weight, wanda, hessian)


def test_sparsegpt_handles_dead_inputs(layer):
    weight, hessian = layer
    hessian = hessian.clone()
    hessian[:, :8] = 0
    hessian[:8, :] = 0
    outcome = sparsegpt_prune(weight, hessian, 0.5)
    assert torch.isfinite(outcome.weight).all()
    assert (outcome.weight[:, :8] == 0).all()
