"""The streamed loader reads checkpoints through transformers' own conversion mapping: renamed
tensors (GPT-NeoX's embed_out → lm_head) and per-expert tensors transformers merges into fused 3-D
expert tensors (Mixtral, Qwen MoE), kept split as per-expert Linears that compute the same."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from services.common.calibration.blocks import named_blocks
from services.common.calibration.streaming import ExpertLinear, SplitExperts, StreamingModel

TINY = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 64, "max_position_embeddings": 64}
MOE = {"mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
       "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
                     "shared_expert_intermediate_size": 24},
       "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24}}
IDS = torch.tensor([[5, 17, 42, 9, 7, 60, 21, 33, 12, 50, 8, 3]])


def tiny_model(folder, model_type: str, **extra):
    """A random tiny model saved by transformers' own save_pretrained (per-expert tensors for MoE)."""
    known = AutoConfig.for_model(model_type)
    values = {k: v for k, v in TINY.items() if hasattr(known, k)} | MOE.get(model_type, {}) | extra
    if model_type == "gpt_neox":
        values |= {"rotary_pct": 1.0}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values), dtype=torch.float32)
    model.eval().save_pretrained(folder)
    return folder


def stock(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("model_type", sorted(MOE))
def test_streamed_moe_block_equals_the_transformers_loaded_block(tmp_path, model_type):
    folder = tiny_model(tmp_path / model_type, model_type)
    reference = stock(folder)
    source = StreamingModel(folder)
    assert source.split_experts == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    for block_name, _ in named_blocks(source.model):
        want = dict(reference.get_submodule(block_name).named_parameters())
        with source.loaded(block_name) as block:
            experts = block.mlp.experts
            assert isinstance(experts, SplitExperts)
            assert all(isinstance(experts.expert(e).get_submodule(leaf), ExpertLinear)
                       for e in range(experts.num_experts) for leaf in (*experts.gate_up, experts.down))
            for param, value in experts.fused().items():
                assert torch.equal(value, want[f"mlp.experts.{param}"]), (block_name, param)
            got = dict(block.named_parameters())
            for name, value in want.items():
                if not name.startswith("mlp.experts."):
                    assert torch.equal(got[name], value), (block_name, name)
            assert not any(p.is_meta for p in block.parameters())
        assert all(p.is_meta for p in source.model.get_submodule(block_name).parameters())
    source.load()
    with torch.no_grad():
        torch.testing.assert_close(source.model(input_ids=IDS).logits, reference(input_ids=IDS).logits,
                                   rtol=1e-5, atol=1e-5)


def test_split_experts_keep_the_checkpoint_names(tmp_path):
    """Mixtral's checkpoint says block_sparse_moe.experts.N.w1: transformers renames and fuses it; the
    streamed model names the expert's Linear after it, and maps back to the stored key."""
    source = StreamingModel(tiny_model(tmp_path / "mixtral", "mixtral"))
    name = "model.layers.1.mlp.experts.2.w3.weight"
    assert dict(source.model.named_parameters())[name].shape == (48, 32)
    assert source.key(name) == "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    assert source.name_of(source.key(name)) == name
    assert source.key("model.layers.0.self_attn.q_proj.weight") == "model.layers.0.self_attn.q_proj.weight"


def test_renamed_head_streams(tmp_path):
    """GPT-NeoX stores its head as embed_out, which transformers loads as lm_head."""
    folder = tiny_model(tmp_path / "neox", "gpt_neox")
    source = StreamingModel(folder)
    assert source.key("lm_head.weight") == "embed_out.weight" and source.split_experts == []
    source.load()
    assert torch.equal(source.model.lm_head.weight, source.reader.get("embed_out.weight"))
    with torch.no_grad():
        torch.testing.assert_close(source.model(input_ids=IDS).logits, stock(folder)(input_ids=IDS).logits)
