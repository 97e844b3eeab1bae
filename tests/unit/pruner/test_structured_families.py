"""Structured cuts on every declared family's tiny random model (tests/compat's configs, built in
memory): removing MLP neurons or heads computes exactly what the uncut model computes with those units
zeroed at their output projection (for fused q/k/v, fused GLU halves and GPT-2's Conv1D alike), the
config's own width field follows, and the saved result reloads in stock transformers to the same
outputs. Families whose models derive the head size refuse heads with that reason."""

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from services.common.calibration.blocks import decoder_blocks
from services.common.contract import model_kinds
from services.common.models.architecture import Architecture
from services.common.models.families import FAMILIES
from services.common.models.modelio import UnsupportedModelError
from services.pruner.configs import StructuredConfig
from services.pruner.importance import score_units
from services.pruner.structured import Shape, current_shape, cut_to, target_shape
from tests.compat.tiny_models import tiny_config

MLP_FAMILIES = sorted(f.model_type for f in FAMILIES.values() if "mlp" in f.structured and f.mlp)
MOE_FAMILIES = sorted(f.model_type for f in FAMILIES.values() if "mlp" in f.structured and f.experts)
# OLMo2's q/k norms span all heads, so a cut renormalises the kept ones: not equal to masking (below).
HEAD_FAMILIES = sorted(f.model_type for f in FAMILIES.values()
                       if "heads" in f.structured and not f.attention.q_norm)
NO_HEADS = sorted(f.model_type for f in FAMILIES.values() if "mlp" in f.structured and "heads" not in f.structured
                  and model_kinds.kind_of_type(f.model_type) == model_kinds.CAUSAL_LM)
VOCAB = 512


def causal(model_type: str) -> bool:
    return model_kinds.kind_of_type(model_type) == model_kinds.CAUSAL_LM


def tiny(model_type: str):
    """The family's tiny model with block weights large enough that every unit moves the output."""
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if causal(model_type) else AutoModel
    model = auto.from_config(tiny_config(model_type, VOCAB), dtype=torch.float32).eval()
    with torch.no_grad():
        for block in decoder_blocks(model):
            for p in block.parameters():
                if p.dim() >= 2:  # Linears and fused experts
                    p.normal_(0.0, 0.15)
    return model


def ids(n=16, seed=3):
    return torch.randint(4, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def outputs(model, x):
    with torch.no_grad():
        if causal(model.config.model_type):
            return model(input_ids=x, use_cache=False).logits
        return model(input_ids=x).last_hidden_state


def zero_columns(arch: Architecture, block, name: str, columns) -> None:
    """Zeroes input columns of a block Linear (rows of a Conv1D's [in, out] weight)."""
    weight = block.get_submodule(name).weight
    with torch.no_grad():
        if arch.conv1d:
            weight[columns, :] = 0
        else:
            weight[:, columns] = 0


def close(a, b) -> bool:
    return torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def reloads_the_same(model, tmp_path) -> None:
    model.save_pretrained(tmp_path, safe_serialization=True)
    auto = AutoModelForCausalLM if causal(model.config.model_type) else AutoModel
    reloaded = auto.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = ids(seed=5)
    assert close(outputs(reloaded, x), outputs(model, x))


@pytest.mark.parametrize("model_type", MLP_FAMILIES)
def test_removed_mlp_neurons_equal_zeroing_them(model_type, tmp_path):
    model = tiny(model_type)
    original = copy.deepcopy(model)
    arch = Architecture(model)
    config = StructuredConfig(mlp_keep=0.5, importance="magnitude", width_multiple=8)
    now = current_shape(model, config)
    scores = score_units(model, ids(16).repeat(2, 1), "magnitude", "cosine", "kv-group", want_heads=False)
    cut_to(model, Shape(now.layers, now.mlp_width // 2, now.head_units), scores, config)
    masked = copy.deepcopy(original)
    for block, s in zip(decoder_blocks(masked), scores.mlp):
        zero_columns(arch, block, arch.mlp.output, s.argsort()[:now.mlp_width // 2])
    x = ids()
    assert not close(outputs(model, x), outputs(original, x))  # the cut neurons mattered
    assert close(outputs(model, x), outputs(masked, x))
    assert getattr(model.config, arch.mlp.width_key) == now.mlp_width // 2
    assert all(arch.mlp_width(b) == now.mlp_width // 2 for b in decoder_blocks(model))
    reloads_the_same(model, tmp_path)


@pytest.mark.parametrize("model_type", MOE_FAMILIES)
@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_removed_expert_neurons_equal_zeroing_them(model_type, importance, tmp_path):
    """Every expert keeps the same number of its own best neurons (one width in the config); that is
    the uncut model with the others' down-projection columns zeroed, expert by expert."""
    model = tiny(model_type)
    original = copy.deepcopy(model)
    arch = Architecture(model)
    config = StructuredConfig(mlp_keep=0.5, importance=importance, width_multiple=8)
    now = current_shape(model, config)
    experts = model.config.num_local_experts if model_type == "mixtral" else model.config.num_experts
    scores = score_units(model, ids(16).repeat(2, 1), importance, "cosine", "kv-group", want_heads=False)
    assert all(s.shape == (experts, now.mlp_width) for s in scores.mlp)
    cut_to(model, Shape(now.layers, now.mlp_width // 2, now.head_units), scores, config)
    masked = copy.deepcopy(original)
    for block, s in zip(decoder_blocks(masked), scores.mlp):
        down = arch.weight(block, arch.mlp.output)
        with torch.no_grad():
            for e in range(experts):  # the complement of what the cut keeps (topk: ties broken as it breaks them)
                dropped = torch.ones(now.mlp_width, dtype=torch.bool)
                dropped[s[e].topk(now.mlp_width // 2).indices] = False
                down[e][:, dropped] = 0
    x = ids()
    assert not close(outputs(model, x), outputs(original, x))
    assert close(outputs(model, x), outputs(masked, x))
    assert getattr(model.config, arch.mlp.width_key) == now.mlp_width // 2
    kept = [set(s.topk(now.mlp_width // 2).indices.tolist()) for s in scores.mlp[0]]
    assert len({frozenset(k) for k in kept}) > 1  # experts keep different neurons
    reloads_the_same(model, tmp_path)


@pytest.mark.parametrize("unit", ["kv-group", "query-head"])
@pytest.mark.parametrize("model_type", HEAD_FAMILIES)
def test_removed_heads_equal_zeroing_them(model_type, unit, tmp_path):
    model = tiny(model_type)
    original = copy.deepcopy(model)
    arch = Architecture(model)
    heads, kv, d = arch.heads, arch.kv_heads, arch.head_dim
    per_group = heads // kv
    config = StructuredConfig(heads_keep=0.5, head_unit=unit, importance="magnitude")
    now = current_shape(model, config)
    scores = score_units(model, ids(16).repeat(2, 1), "magnitude", "cosine", unit, want_heads=True)
    cut_to(model, Shape(now.layers, now.mlp_width, now.head_units // 2), scores, config)
    masked = copy.deepcopy(original)
    for block, s in zip(decoder_blocks(masked), scores.heads):
        dropped = s.argsort()[:now.head_units // 2].tolist()
        if unit == "kv-group":
            q_heads = [g * per_group + p for g in dropped for p in range(per_group)]
        else:
            q_heads = [g * per_group + p for g in range(kv) for p in dropped]
        zero_columns(arch, block, arch.attention.o, [h * d + i for h in q_heads for i in range(d)])
    x = ids()
    assert not close(outputs(model, x), outputs(original, x))
    assert close(outputs(model, x), outputs(masked, x))
    expected = (heads // 2, kv // 2) if unit == "kv-group" else (heads // 2, kv)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == expected
    assert model.config.head_dim == d
    reloads_the_same(model, tmp_path)


def test_a_fused_qkv_cut_keeps_exactly_the_kept_heads_rows():
    """Phi-3 stacks all q heads, then the k heads, then the v heads in one Linear."""
    model = tiny("phi3")
    arch = Architecture(model)
    h, kv, d = arch.heads, arch.kv_heads, arch.head_dim  # 4, 2, 16
    block = decoder_blocks(model)[0]
    before = block.self_attn.qkv_proj.weight.detach().clone()
    arch.cut_heads(block, torch.tensor([1]), "kv-group")  # KV group 1: query heads 2, 3
    q = before[2 * d:4 * d]
    k = before[h * d + d:h * d + 2 * d]
    v = before[(h + kv) * d + d:(h + kv) * d + 2 * d]
    assert torch.equal(block.self_attn.qkv_proj.weight, torch.cat([q, k, v]))


def test_olmo2_heads_cut_their_norms_rows_and_reload(tmp_path):
    model = tiny("olmo2")
    arch = Architecture(model)
    d = arch.head_dim
    block = decoder_blocks(model)[0]
    q_norm, k_norm = block.self_attn.q_norm.weight.detach().clone(), block.self_attn.k_norm.weight.detach().clone()
    config = StructuredConfig(heads_keep=0.5, importance="magnitude")
    scores = score_units(model, ids(16).repeat(2, 1), "magnitude", "cosine", "kv-group", want_heads=True)
    cut_to(model, Shape(2, current_shape(model, config).mlp_width, 1), scores, config)
    group = int(scores.heads[0].argmax())
    assert torch.equal(block.self_attn.q_norm.weight, q_norm[group * 2 * d:(group + 1) * 2 * d])
    assert torch.equal(block.self_attn.k_norm.weight, k_norm[group * d:(group + 1) * d])
    reloads_the_same(model, tmp_path)


@pytest.mark.parametrize("model_type", NO_HEADS)
def test_families_that_derive_the_head_size_refuse_heads_saying_so(model_type):
    model = tiny(model_type)
    with pytest.raises(UnsupportedModelError, match=rf"heads_keep: model family '{model_type}' derives the head "
                                                    r"size from .*/"):
        target_shape(model, StructuredConfig(heads_keep=0.5))


def test_taylor_scores_read_conv1d_and_fused_glu_weights_the_right_way_round():
    """Gradient scores of GPT-2 (Conv1D) and Phi-3 (fused gate_up) have one entry per neuron and per
    head unit; a neuron whose weights are zeroed everywhere scores 0."""
    for model_type in ("gpt2", "phi3"):
        model = tiny(model_type)
        arch = Architecture(model)
        block = decoder_blocks(model)[0]
        width = arch.mlp_width(block)
        with torch.no_grad():
            arch.oriented(block, arch.mlp.output, lambda w: w)[:, 3] = 0  # a view: zeroes the weight
            for name in arch.mlp.inputs:
                rows = arch.oriented(block, name, lambda w: w)
                for part in range(arch.mlp.stacked):
                    rows[part * width + 3] = 0
        scores = score_units(model, ids(16).repeat(2, 1), "taylor", "cosine", "kv-group", want_heads=True)
        assert scores.mlp[0].shape == (width,) and float(scores.mlp[0][3]) == 0.0
        assert float(scores.mlp[0].sum()) > 0
        if arch.attention is not None:
            assert scores.heads[0].shape == (arch.kv_heads,)


def test_moe_refusals_name_the_family_and_say_why():
    model = tiny("mixtral")
    with pytest.raises(UnsupportedModelError, match=r"target_flops: model family 'mixtral' computes its MLP where "
                                                    r"the FLOPs counter sees none"):
        target_shape(model, StructuredConfig(target_flops=0.5))
    ids = torch.randint(0, VOCAB, (1, 8))
    for importance, grams, named in (("activation", True, "reconstruct"), ("obs", False, "importance")):
        with pytest.raises(UnsupportedModelError, match=rf"{named}: model family 'mixtral' routes its MLPs to experts"):
            score_units(model, ids, importance, "cosine", "kv-group", want_heads=False, grams=grams)
    torch.manual_seed(0)
    config = tiny_config("qwen2_moe", VOCAB)
    config.mlp_only_layers = [0]
    mixed = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedModelError, match=r"model family 'qwen2_moe' mixes dense MLPs and experts"):
        Architecture(mixed)
