"""Bits per weight of a checkpoint, everything stored counted."""

import torch
from safetensors.torch import save_file

from services.common.models.stored_bits import stored_bits_per_weight


def test_a_float_checkpoint_is_its_dtype_width(tmp_path):
    save_file({"a.weight": torch.zeros(8, 4, dtype=torch.float16), "n.weight": torch.zeros(4, dtype=torch.float16)},
              str(tmp_path / "model.safetensors"))
    assert stored_bits_per_weight(tmp_path) == 16.0


def test_packed_codes_count_the_weights_they_unpack_to_and_scales_count_as_bits_only(tmp_path):
    # A 4-bit 16x64 Linear packed in int32 words (8 codes each) with one fp16 scale per 32 columns,
    # beside a float32 norm of 64: (16*64*4 + 16*2*16 + 2*64 (the int64 shape) + 64*32) / (16*64 + 64).
    save_file({"l.weight_packed": torch.zeros(16, 8, dtype=torch.int32),
               "l.weight_scale": torch.zeros(16, 2, dtype=torch.float16),
               "l.weight_shape": torch.tensor([16, 64]),
               "n.weight": torch.zeros(64)}, str(tmp_path / "model.safetensors"))
    expected = (16 * 64 * 4 + 16 * 2 * 16 + 2 * 64 + 64 * 32) / (16 * 64 + 64)
    assert stored_bits_per_weight(tmp_path) == expected


def test_shards_are_summed(tmp_path):
    save_file({"a.weight": torch.zeros(10, dtype=torch.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": torch.zeros(30, dtype=torch.bfloat16)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    assert stored_bits_per_weight(tmp_path) == (10 * 32 + 30 * 16) / 40
