"""SparseGPT over routed experts: each expert pruned from the Hessian of its routed tokens; an expert
no calibration token reached is pruned on the identity (magnitude masks), said in its figures; the
router and Qwen2-MoE's shared-expert gate stay dense."""

import torch

from services.common.calibration.streaming import StreamingModel
from services.pruner.unstructured import block_linears, calibrated_step, prune_calibrated, sparsegpt_layer
from tests.unit.common.calibration.test_streaming_conversion import tiny_model
from tests.unit.quantizer.test_moe_experts import BATCHES, route_to_first_two


def test_sparsegpt_prunes_an_expert_without_tokens_by_magnitude(tmp_path):
    folder = route_to_first_two(tiny_model(tmp_path / "mixtral", "mixtral", num_experts_per_tok=1))
    source = StreamingModel(folder)
    figures = {}
    step = calibrated_step("sparsegpt", lambda _i: 0.5, sparsegpt_layer(None, damping=0.01, block_size=128))
    changed = prune_calibrated(source, BATCHES, step, lambda _i, _n, name, f: figures.setdefault(name, f),
                               lambda: None)
    idle = [n for n, f in figures.items() if f.get("no_calibration_tokens")]
    assert sorted(idle) == sorted(f"model.layers.{b}.mlp.experts.{e}.{leaf}" for b in (0, 1) for e in (2, 3)
                                  for leaf in ("w1", "w2", "w3"))
    for name in idle:
        before = source.reader.get(source.key(f"{name}.weight"))
        after = changed[f"{name}.weight"]
        kept = after != 0
        assert abs(float(kept.float().mean()) - 0.5) < 0.02
        assert torch.equal(after[kept], before[kept])  # no update: the identity couples no columns
        assert before[kept].abs().min() >= before[~kept].abs().max()  # one magnitude threshold per layer
    assert all(figures[n]["method"] == "sparsegpt" for n in figures if ".experts.0." in n)


def test_routers_and_expert_gates_stay_dense(tmp_path):
    source = StreamingModel(tiny_model(tmp_path / "qwen2_moe", "qwen2_moe"))
    names = block_linears(source.model)
    assert "model.layers.0.mlp.shared_expert.up_proj" in names and "model.layers.0.mlp.experts.3.down_proj" in names
    assert not any(n.endswith(("mlp.gate", "shared_expert_gate")) for n in names)
