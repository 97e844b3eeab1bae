"""A compressed-tensors INT4 checkpoint into ONNX Runtime's 4-bit operators with its own codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from services.common.contract.engine_api import ProgressReporter
from services.common.engines.onnx_session import open_session
from services.optimizer.engine import METHODS
from services.optimizer.nbits_codes import pack_4bit, read_grids
from services.optimizer.onnx_runtime import op_counts
from services.quantizer.configs import GptqConfig
from services.quantizer.engine import METHODS as QUANTIZER
from tests.unit.optimizer.test_onnx import _causal_feeds

CALIBRATION = {"calibration_samples": 4, "calibration_sequence_length": 64}


def test_4_bit_codes_pack_two_per_byte_low_nibble_first_offset_by_8():
    codes = np.array([[-8, 7, 0, -1]], dtype=np.int8)
    packed = pack_4bit(codes, block_size=4)
    assert packed.shape == (1, 1, 2)
    assert packed.tolist() == [[[0x00 | (15 << 4), 8 | (7 << 4)]]]


@pytest.fixture(scope="module")
def gptq_int4(tiny_llama_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("gptq-int4")
    config = GptqConfig(group_size=32, embedding_bits=4, **CALIBRATION)
    QUANTIZER["gptq"].run(config, tiny_llama_dir, dst, ProgressReporter())
    return dst


def test_onnx_int4_of_a_gptq_checkpoint_computes_its_codes(gptq_int4, tmp_path):
    entry = METHODS["onnx-int4"]
    result = entry.run(entry.config_cls(accuracy_level=0), gptq_int4, tmp_path, ProgressReporter())
    # 2 blocks x 7 Linears and the tied head as MatMulNBits, the table's lookup as GatherBlockQuantized.
    assert result.metrics["matmul_nbits"] == 15 and result.metrics["gather_block_quantized"] == 1
    assert result.metrics["modules_not_in_graph"] == []
    counts = op_counts(tmp_path / "model.onnx")
    assert counts.get("MatMul", 0) <= 4 and "Gather" not in counts  # only activation x activation products left
    reference = AutoModelForCausalLM.from_pretrained(gptq_int4).eval()  # dequantized at load: the codes' values
    ids = torch.randint(5, 30522, (1, 24), generator=torch.Generator().manual_seed(3))
    session = open_session(tmp_path / "model.onnx")
    got = session.run(None, _causal_feeds(session, ids))[0]
    with torch.no_grad():
        want = reference(input_ids=ids).logits.numpy()
    # Float compute (accuracy level 0) on the same integers: the logits agree to float rounding.
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()


def test_the_grids_are_read_back_as_written(gptq_int4):
    grids = read_grids(gptq_int4)
    table = grids["model.embed_tokens"]
    assert table.bits == 4 and table.block_size == 32 and table.codes.min() >= -8 and table.codes.max() <= 7
    reference = AutoModelForCausalLM.from_pretrained(gptq_int4).eval()
    assert np.allclose(table.dequantized(), reference.get_input_embeddings().weight.detach().numpy(), atol=1e-3)


def test_a_grid_asked_for_that_is_not_the_checkpoints_is_refused_naming_it(gptq_int4, tmp_path):
    entry = METHODS["onnx-int4"]
    with pytest.raises(ValueError, match=r"group_size: 64 asked, but the input is a compressed-tensors checkpoint "
                                         r"with groups of 32"):
        entry.run(entry.config_cls(group_size=64), gptq_int4, tmp_path, ProgressReporter())


def test_the_qat_onnx_int4_recipe_runs_in_process_and_keeps_the_codes(tiny_llama_dir, tmp_path):
    import modelpress

    run = modelpress.compress(tiny_llama_dir, "qat-onnx-int4", tmp_path / "out",
                              overrides={"calibration_samples": 2, "calibration_sequence_length": 32,
                                         "steps_per_block": 2})
    assert [s.method for s in run.stages] == ["qat", "onnx-int4"]
    counts = op_counts(tmp_path / "out" / "model.onnx")
    assert counts.get("MatMulNBits") == 15 and counts.get("GatherBlockQuantized") == 1, counts
