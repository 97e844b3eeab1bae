"""The input Hessian computed from tensors agrees with the one the block hooks gather."""

import torch
from torch import nn

from services.common.calibration.blocks import InputStatsCollector
from services.common.calibration.hessian import inputs_hessian


def test_a_hessian_from_tensors_is_the_one_the_block_hooks_gather():
    torch.manual_seed(0)
    layer = nn.Linear(8, 3)
    batches = [torch.randn(2, 5, 8), torch.randn(1, 7, 8)]
    collector = InputStatsCollector({"l": layer})
    for x in batches:
        layer(x)
    collector.close()
    assert torch.allclose(inputs_hessian(batches), collector.hessians["l"], atol=1e-5)
