import math

import numpy as np
import pytest
import torch

from modelpress.v1 import common_pb2
from services.common import corpus, modelio
from services.evaluator import measure
from services.gateway.results import compression_result, seed_result
from services.quantizer.configs import Int8WeightOnlyConfig
from services.quantizer.int8 import quantize_int8_weight_only


@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_percentile_matches_numpy(q):
    values = sorted(np.random.default_rng(0).exponential(size=37).tolist())
    assert measure.percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))


def test_packed_parameters_count_as_their_logical_size(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    before = measure.count_parameters(model)
    assert before == sum(p.numel() for p in model.parameters())  # tied head counted once
    quantize_int8_weight_only(model, Int8WeightOnlyConfig(), lambda *a: None)
    assert measure.count_parameters(model) == before


def test_perplexity_is_exp_of_mean_token_nll(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    windows = measure.heldout_windows(modelio.load_tokenizer(tiny_llama_dir), 2, length=64)
    figures = measure.causal_lm_quality(model, windows)
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert figures.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-4)
    assert figures.tokens == 2 * 63
    assert 0 <= figures.top1_accuracy <= 1


def test_heldout_text_never_overlaps_calibration():
    held = {name for name, _ in corpus.heldout_topics()}
    calib = {name for name, _ in corpus.calibration_topics()}
    assert held and calib and not held & calib


def test_latency_figures_are_ordered(tiny_llama_dir):
    figures = measure.measure_latency(modelio.load_model(tiny_llama_dir), batch_size=2, sequence_length=8,
                                      iterations=12, warmup=1)
    assert 0 < figures.p50_ms <= figures.p95_ms <= figures.p99_ms
    assert (figures.batch_size, figures.sequence_length, figures.iterations) == (2, 8, 12)


def test_compression_result_ratios():
    original = common_pb2.ModelMetrics(size_on_disk_bytes=400, parameters=100, peak_rss_mb=800, perplexity=10.0,
                                       top1_accuracy=0.5, latency=common_pb2.LatencyStats(p50_ms=20))
    compressed = common_pb2.ModelMetrics(size_on_disk_bytes=100, parameters=100, peak_rss_mb=600, perplexity=10.5,
                                         top1_accuracy=0.45, latency=common_pb2.LatencyStats(p50_ms=40))
    result = compression_result("j-1", original, compressed, "a-1")
    assert result.compression_ratio == 4.0
    assert result.latency_improvement == 0.5  # slower shows as < 1, never hidden
    assert result.memory_reduction == pytest.approx(0.25)
    assert result.perplexity_increase == pytest.approx(0.05)
    assert result.accuracy_loss == pytest.approx(0.1)
    seed = seed_result(result)
    assert seed["original_model_size"] == 400 and seed["compressed_latency"] == 40
    assert seed["compressed_model_path"] == "a-1"
