"""A 4-bit tied embedding/head: rounded by GPTQ on the head's own inputs, stored once, reloaded by
stock transformers with the head tied to the rounded table."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from services.common.calibration.blocks import capture_first_block_inputs, final_norm, named_blocks, run_block
from services.common.calibration.hessian import relative_output_error
from services.common.contract.engine_api import ProgressReporter
from services.common.datasets.calibration_text import calibration_batches, calibration_text
from services.common.models import modelio
from services.common.models.model_errors import UnsupportedModelError
from services.common.models.packed import Int8Embedding
from services.common.models.stored_bits import stored_bits_per_weight
from services.quantizer.configs import GptqConfig, MixedPrecisionConfig
from services.quantizer.engine import METHODS
from services.quantizer.qscheme import WeightScheme, fake_quantize
from services.quantizer.sequential import head_hessian

CALIBRATION = {"calibration_samples": 4, "calibration_sequence_length": 64}


def test_the_final_norm_is_found_by_structure(tiny_llama_dir):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    assert final_norm(gpt2) is gpt2.transformer.ln_f
    llama = modelio.load_model(tiny_llama_dir, dtype=torch.float32)
    assert final_norm(llama) is llama.model.norm


def test_a_grouped_integer_embedding_looks_up_its_dequantized_rows():
    codes = torch.randint(-8, 8, (10, 8), dtype=torch.int8)
    scales = torch.rand(10, 2) + 0.1
    table = Int8Embedding(10, 8, groups=2)
    table.weight, table.weight_scale = codes, scales
    ids = torch.tensor([[3, 7, 0]])
    expected = codes.float() * scales.repeat_interleave(4, dim=1)
    assert torch.equal(table(ids)[0], expected[ids[0]])
    assert torch.equal(table.dequantize(), expected)


def test_a_4_bit_tied_table_is_gptq_rounded_on_the_head_inputs_and_reloads_tied(tiny_llama_dir, tmp_path):
    config = GptqConfig(group_size=32, embedding_bits=4, **CALIBRATION)
    result = METHODS["gptq"].run(config, tiny_llama_dir, tmp_path / "m", ProgressReporter())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    table = reloaded.get_input_embeddings().weight.detach()
    assert reloaded.lm_head.weight is reloaded.get_input_embeddings().weight  # tied after the load dequantized the packed table

    float_model = modelio.load_model(tiny_llama_dir, dtype=torch.float32).eval()
    original = float_model.get_input_embeddings().weight.detach()
    scheme = WeightScheme(4, 32, True)
    scales = load_file(str(tmp_path / "m" / "model.safetensors"))["model.embed_tokens.weight_scale"].float()
    codes = table.detach().reshape(table.shape[0], -1, 32) / scales[..., None]
    assert torch.allclose(codes, codes.round(), atol=0.01) and codes.abs().max() <= 8  # a 4-bit group-32 grid
    # The head's inputs on the calibration text: the final norm of the last block's outputs.
    batches = calibration_batches(modelio.load_tokenizer(tiny_llama_dir), 4, 64, calibration_text())
    with torch.no_grad():
        inputs = capture_first_block_inputs(float_model, batches)
        for _, block in named_blocks(float_model):
            inputs.hidden = run_block(block, inputs)
        hessian = head_hessian(float_model, inputs.hidden)
    nearest = fake_quantize(original, scheme)[0]
    assert relative_output_error(original, table, hessian) < 0.8 * relative_output_error(original, nearest, hessian)
    # Every stored bit over every weight: the table once, at 4 bits and its scales.
    assert result.metrics["stored_bits_per_weight"] == stored_bits_per_weight(tmp_path / "m") < 5.0


def test_mixed_precision_refuses_a_4_bit_tied_table_before_calibrating(tiny_llama_dir, tmp_path):
    seen = []
    config = MixedPrecisionConfig(group_size=32, embedding_bits=4, **CALIBRATION)
    with pytest.raises(UnsupportedModelError, match="mixed precision with a 4-bit tied embedding"):
        METHODS["mixed-precision"].run(config, tiny_llama_dir, tmp_path / "m", ProgressReporter(sink=seen.append))
    assert not any("sensitivity" in p.message for p in seen)


def test_a_head_rounded_in_row_slices_is_the_head_rounded_whole(monkeypatch):
    from services.quantizer import gptq

    torch.manual_seed(0)
    weight, x = torch.randn(100, 64), torch.randn(500, 64)
    hessian = 2 * x.T @ x / x.shape[0]
    scheme = WeightScheme(4, 32, True)
    whole, _ = gptq.gptq_head_rounding()(weight, hessian, scheme, "Linear")
    monkeypatch.setattr(gptq, "HEAD_ROWS_PER_SLICE", 7)
    sliced, _ = gptq.gptq_head_rounding()(weight, hessian, scheme, "Linear")
    assert torch.equal(whole.codes, sliced.codes) and torch.equal(whole.params.scale, sliced.params.scale)
