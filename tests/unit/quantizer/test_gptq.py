import pytest
import torch
from transformers import AutoModelForCausalLM

from services.common.models import modelio
from services.common.contract.engine_api import ProgressReporter, StageCancelled
from services.quantizer.configs import GptqConfig
from services.quantizer.engine import METHODS
from services.quantizer.gptq import gptq_quantize
from services.quantizer.qscheme import WeightScheme, fake_quantize


def correlated_layer(rows=96, cols=128, samples=2048):
    torch.manual_seed(0)
    x = torch.randn(samples, cols) @ torch.randn(cols, cols) * 0.3
    x[:, :4] *= 15  # a few outlier input channels, as in real LLM activations
    return torch.randn(rows, cols), x, 2 * x.T @ x / samples


@pytest.mark.parametrize("scheme", [WeightScheme(4, 32, True), WeightScheme(4, 64, False), WeightScheme(4, 0, True),
                                    WeightScheme(8, 0, True)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_is_below_rtn_on_the_same_data(scheme, act_order):
    w, x, h = correlated_layer()
    rtn, _ = fake_quantize(w, scheme)
    outcome = gptq_quantize(w, h, scheme, act_order=act_order)
    y = x @ w.T
    err_rtn = ((x @ rtn.T - y).norm() / y.norm()).item()
    err_gptq = ((x @ outcome.weight.T - y).norm() / y.norm()).item()
    assert err_gptq < 0.8 * err_rtn
    # The result lies on the stored grid: re-quantizing with its own params changes nothing.
    again, _ = fake_quantize(outcome.weight, scheme, outcome.params)
    assert torch.equal(again, outcome.weight)


@pytest.mark.parametrize("act_order", [False, True])  # dynamic groups, searched as GPTQ reaches them; static ones
def test_clipping_shrinks_ranges_lowers_the_output_error_and_spares_the_rows_it_is_told_to(act_order):
    w, x, h = correlated_layer()
    w[::7, ::9] *= 6  # heavy-tailed weights: a few per group set its range
    scheme = WeightScheme(4, 32, True)
    plain = gptq_quantize(w, h, scheme, act_order=act_order)
    clip = GptqConfig(clip_search=True)
    spared = torch.arange(w.shape[0]) >= 48
    clipped = gptq_quantize(w, h, scheme, act_order=act_order, clip=clip, clipped_rows=~spared)
    assert clipped.loss < plain.loss
    if act_order:  # static groups, from the weights as given: clipped rows only shrink, spared ones stay min-max
        assert (clipped.params.scale[~spared] <= plain.params.scale[~spared] + 1e-6).all()
        assert (clipped.params.scale[~spared] < plain.params.scale[~spared] - 1e-6).any()
        assert torch.equal(clipped.params.scale[spared], plain.params.scale[spared])


def test_a_hessian_that_is_not_positive_definite_is_handled():
    w, _, h = correlated_layer()
    h[5, 5] = -1000.0  # what accumulated round-off or a broken calibration can produce
    outcome = gptq_quantize(w, h, WeightScheme(4, 32, True))
    assert outcome.damping > 0.01 or outcome.fell_back_to_rtn
    assert torch.isfinite(outcome.weight).all()


def test_dead_inputs_do_not_break_the_factorisation():
    w, x, _ = correlated_layer()
    x[:, 10:20] = 0
    h = 2 * x.T @ x / x.shape[0]
    outcome = gptq_quantize(w, h, WeightScheme(4, 32, True))
    assert not outcome.fell_back_to_rtn and torch.isfinite(outcome.weight).all()


def test_gptq_method_on_a_tiny_llama_reloads_through_transformers(tiny_llama_dir, tmp_path):
    config = GptqConfig(calibration_samples=4, calibration_sequence_length=64, group_size=32)
    seen = []
    result = METHODS["gptq"].run(config, tiny_llama_dir, tmp_path / "m", ProgressReporter(sink=seen.append))
    assert result.metrics["calibration_tokens"] == 4 * 64
    assert 0 < result.metrics["mean_layer_loss"] < 1
    gptq_steps = [p for p in seen if p.metrics.get("method") == "gptq"]
    assert len(gptq_steps) == 14 and all(p.metrics["loss"] >= 0 for p in gptq_steps)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 30522, (1, 16))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        base = modelio.load_model(tiny_llama_dir)(input_ids=ids).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, base)


def test_gptq_cancel_stops_between_layers(tiny_llama_dir, tmp_path):
    reporter = ProgressReporter()

    def sink(progress):
        if progress.metrics.get("method") == "gptq":
            reporter.cancelled.set()

    reporter.sink = sink
    with pytest.raises(StageCancelled):
        METHODS["gptq"].run(GptqConfig(calibration_samples=2, calibration_sequence_length=32), tiny_llama_dir,
                            tmp_path / "m", reporter)
    assert not (tmp_path / "m").exists()


def test_gptq_runs_on_an_encoder(tiny_bert_dir, tmp_path):
    config = GptqConfig(calibration_samples=4, calibration_sequence_length=64, group_size=32)
    result = METHODS["gptq"].run(config, tiny_bert_dir, tmp_path / "m", ProgressReporter())
    assert result.metrics["quantized_modules"] >= 12  # 6 Linear per layer × 2 layers, + embeddings/pooler
    reloaded = modelio.load_model(tmp_path / "m")
    assert type(reloaded).__name__ == "BertModel"


def test_gptq_keeps_the_zeros_of_a_pruned_weight():
    torch.manual_seed(0)
    weight = torch.randn(32, 128) * (torch.rand(32, 128) > 0.5)
    x = torch.randn(512, 128) @ torch.randn(128, 128)
    hessian = 2.0 / 512 * x.T @ x
    outcome = gptq_quantize(weight, hessian, WeightScheme(4, 32, True))
    assert (outcome.weight[weight == 0] == 0).all()
    dense = gptq_quantize(torch.randn(32, 128), hessian, WeightScheme(4, 32, True))
    assert float((dense.weight == 0).float().mean()) < 0.2  # dense weights are not forced anywhere


def test_the_callers_hessian_is_left_as_it_was_and_the_factor_is_the_damped_inverses():
    """inverse_cholesky damps its argument in place (no identity, no damped copy of a matrix as large as
    the widest input squared): GPTQ hands it a permuted copy, so a Hessian shared by q/k/v stays whole."""
    from services.common.calibration.hessian import inverse_cholesky

    torch.manual_seed(0)
    x = torch.randn(300, 96)
    x[:, 5] = 0  # a dead input
    hessian = 2 * x.T @ x / 300
    before = hessian.clone()
    gptq_quantize(torch.randn(32, 96), hessian, WeightScheme(4, 32, True))
    assert torch.equal(hessian, before)

    live = hessian[1:, 1:].double().clone() + 0.0
    live_before = live.clone()
    upper, damping = inverse_cholesky(live, 0.01, lambda into: into.copy_(live_before))
    assert upper.data_ptr() == live.data_ptr()  # factored in the caller's copy, no second matrix
    damped = live_before + damping * float(torch.diagonal(live_before).mean()) * torch.eye(95, dtype=torch.float64)
    assert torch.allclose(upper.T @ upper, torch.linalg.inv(damped), rtol=1e-8, atol=1e-10)


def test_a_failed_factorisation_refills_the_hessian_and_the_factor_is_that_of_the_raised_damping():
    """The factor is computed in the caller's buffer; an attempt that fails overwrote it, so the next one
    starts from a refilled H, and the factor returned is that of H damped by what is returned."""
    from services.common.calibration.hessian import inverse_cholesky

    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))[0]
    eigenvalues = torch.linspace(0.5, 2.0, 64, dtype=torch.float64)
    eigenvalues[0] = -0.3  # not positive definite until the damping exceeds 0.3 / mean(diag)
    hessian = basis @ torch.diag(eigenvalues) @ basis.T
    refills = []
    buffer = hessian.clone()
    factored = inverse_cholesky(buffer, 0.01, lambda into: refills.append(1) or into.copy_(hessian))
    assert factored is not None and refills
    upper, damping = factored
    assert damping > 0.01 and upper.data_ptr() == buffer.data_ptr()
    damped = hessian + damping * float(torch.diagonal(hessian).mean()) * torch.eye(64, dtype=torch.float64)
    assert torch.allclose(upper.T @ upper, torch.linalg.inv(damped), rtol=1e-8, atol=1e-10)
