import pytest
import torch
from torch import nn

from services.common.models import modelio
from services.common.store import packaging
from services.common.models import packed
from services.common.contract.engine_api import ProgressReporter, StageCancelled
from services.quantizer.configs import Int8WeightOnlyConfig
from services.quantizer.engine import METHODS
from services.quantizer.int8 import QMAX, quantize_int8_weight_only, quantize_per_row


def test_per_row_quantization_error_is_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(64, 96) * torch.linspace(0.01, 5, 64)[:, None]  # rows of very different range
    q, scale = quantize_per_row(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    assert int(q.abs().max()) <= QMAX
    # Each row's largest magnitude maps to ±127 exactly, and every error is at most scale/2.
    assert torch.equal(q.abs().amax(dim=1), torch.full((64,), QMAX, dtype=torch.int8))
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-6).all())


def test_values_on_the_grid_round_trip_exactly_and_zero_rows_survive():
    scale = torch.tensor([0.5, 2.0, 1.0])
    grid = torch.tensor([[-127, 0, 64, 127], [3, -127, 0, 1], [0, 0, 0, 0]], dtype=torch.float32)
    q, s = quantize_per_row(grid * scale[:, None])
    assert torch.equal(q[:2].float(), grid[:2])
    assert torch.allclose(s[:2], scale[:2])
    assert torch.equal(q[2], torch.zeros(4, dtype=torch.int8)) and bool(torch.isfinite(s).all())


def test_int8_linear_matches_dequantized_float_linear():
    torch.manual_seed(0)
    linear = nn.Linear(48, 24)
    model = nn.Sequential(linear)
    quantize_int8_weight_only(model, Int8WeightOnlyConfig(), lambda *a: None)
    packed_linear = model[0]
    assert isinstance(packed_linear, packed.Int8Linear)
    x = torch.randn(5, 7, 48)
    expected = x @ packed_linear.dequantize().T + linear.bias
    assert torch.allclose(packed_linear(x), expected, atol=1e-5)


def test_tiny_llama_quantizes_saves_and_reloads_bit_exact(tiny_llama_dir, tmp_path):
    model = modelio.load_model(tiny_llama_dir)
    ids = torch.randint(0, 30522, (2, 16))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    layers = []
    figures = quantize_int8_weight_only(model, Int8WeightOnlyConfig(), lambda i, n, name, e: layers.append(name))
    # Every Linear plus the embedding; the tied head shares the embedding's int8 tensors.
    n_linear = sum(1 for _ in range(2)) * 7 + 1  # q,k,v,o,gate,up,down per layer + lm_head
    assert figures["quantized_modules"] == n_linear + 1 == len(layers)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        quantized = model(input_ids=ids).logits
    packed.save_packed(model, tmp_path / "m", scheme="int8-weight-only")
    reloaded = modelio.load_model(tmp_path / "m")
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
    assert torch.equal(quantized, again), "a reloaded packed model must compute exactly what was saved"
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert (quantized - reference).abs().max() < 0.05 * reference.abs().max()


def test_int8_method_writes_a_packed_folder_a_quarter_of_fp32(tiny_llama_dir, tmp_path):
    steps = []
    result = METHODS["int8-weight-only"].run(Int8WeightOnlyConfig(), tiny_llama_dir, tmp_path / "out",
                                             ProgressReporter(sink=steps.append))
    assert packed.is_packed(tmp_path / "out")
    weights_fp32 = (tiny_llama_dir / "model.safetensors").stat().st_size
    weights_int8 = (tmp_path / "out" / "model.safetensors").stat().st_size
    assert weights_int8 < 0.27 * weights_fp32
    assert result.metrics["quantized_modules"] == 16
    assert steps[-1].fraction == 1.0 and [s.step for s in steps] == sorted(s.step for s in steps)
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_cancel_stops_between_layers(tiny_llama_dir, tmp_path):
    reporter = ProgressReporter()
    seen = []

    def sink(progress):
        seen.append(progress)
        if len(seen) == 3:
            reporter.cancelled.set()

    reporter.sink = sink
    with pytest.raises(StageCancelled):
        METHODS["int8-weight-only"].run(Int8WeightOnlyConfig(), tiny_llama_dir, tmp_path / "out", reporter)
    assert len(seen) == 3 and not (tmp_path / "out").exists()


def test_skipping_embeddings_leaves_them_float(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    quantize_int8_weight_only(model, Int8WeightOnlyConfig(include_embeddings=False, include_lm_head=False),
                              lambda *a: None)
    assert isinstance(model.model.embed_tokens, nn.Embedding)
    assert isinstance(model.lm_head, nn.Linear)
    assert isinstance(model.model.layers[0].mlp.up_proj, packed.Int8Linear)


@pytest.mark.parametrize("method,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_casts_halve_the_weights(method, dtype, tiny_llama_dir, tmp_path):
    from services.quantizer.configs import CastConfig

    METHODS[method].run(CastConfig(), tiny_llama_dir, tmp_path / "out", ProgressReporter())
    model = modelio.load_model(tmp_path / "out", dtype=dtype)
    assert model.model.layers[0].mlp.up_proj.weight.dtype == dtype
    ratio = packaging.folder_size_bytes(tmp_path / "out") / packaging.folder_size_bytes(tiny_llama_dir)
    assert 0.45 < ratio < 0.6
