import pytest
import torch
from safetensors import safe_open

from services.common.models.safetensors_writer import write_safetensors


def test_written_file_reads_back_bit_exact_with_the_reference_reader(tmp_path):
    tensors = {
        "w.f32": torch.randn(7, 3), "w.f16": torch.randn(5).half(), "w.bf16": torch.randn(2, 2).bfloat16(),
        "codes": torch.randint(-8, 8, (4, 6), dtype=torch.int8), "packed": torch.randint(0, 2**30, (3,), dtype=torch.int32),
        "shape": torch.tensor([4, 6]), "scalar": torch.tensor(1.5), "empty": torch.zeros(0, 4),
        "strided": torch.arange(12.0).reshape(3, 4).T,  # not contiguous
    }
    write_safetensors(tmp_path / "m.safetensors", tensors, {"format": "pt"})
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(tensors)
        for name, tensor in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), name


def test_unsupported_dtype_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="bad: dtype"):
        write_safetensors(tmp_path / "m.safetensors", {"bad": torch.zeros(2, dtype=torch.complex64)})
