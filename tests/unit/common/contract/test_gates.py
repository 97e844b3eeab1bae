"""A gate is never passed by a figure that was not measured: it fails, naming why."""

from modelpress.results import compression_result
from modelpress.v1 import common_pb2
from services.common.contract.gates import failed_checks, gate_figures, gate_not_measured, parse_gate
from services.evaluator.comparison import comparison_row


def _minilm(size: int, *, onnx: bool) -> common_pb2.ModelMetrics:
    """MiniLM as the evaluator measures it: an encoder (no perplexity, no decode); as ONNX, no FLOPs."""
    metrics = common_pb2.ModelMetrics(kind="encoder", size_on_disk_bytes=size, parameters=22_700_000,
                                      peak_rss_mb=400.0, latency=common_pb2.LatencyStats(p50_ms=5.0),
                                      encoder=common_pb2.EncoderQuality(knn_topic_accuracy=0.8))
    metrics.not_measured.update(perplexity="an encoder has no perplexity", decode="an encoder has no per-token decode")
    if onnx:
        metrics.not_measured["flops"] = ("torch's flop counter sees PyTorch ops only: the FLOPs of an ONNX graph "
                                         "are not counted")
    else:
        metrics.flops = 2 * 10**9
    return metrics


def _onnx_int8_on_minilm() -> tuple[common_pb2.ComparisonRow, common_pb2.CompressionResult]:
    original, exported = _minilm(90_900_000, onnx=False), _minilm(23_000_000, onnx=True)
    speed = [common_pb2.SpeedRatio(phase="forward", speedup=1.8)]
    row = comparison_row(1, "onnx-int8", exported, original, False, None, speed)
    return row, compression_result("j-1", original, exported, "a-1", speed=speed)


def test_the_reported_case_fails_on_both_unmeasured_figures_naming_why():
    """`perplexity_increase<=0.10, flops_ratio<=0.5` on MiniLM after onnx-int8 once passed on two zeros."""
    row, result = _onnx_int8_on_minilm()
    figures = gate_figures(row, result)
    assert "perplexity_increase" not in figures and "flops_ratio" not in figures
    failures = failed_checks(parse_gate("perplexity_increase<=0.10, flops_ratio<=0.5"), figures,
                             gate_not_measured(row, result))
    assert failures == [
        "perplexity_increase was not measured: an encoder has no perplexity (bound <= 0.1)",
        "flops_ratio was not measured: torch's flop counter sees PyTorch ops only: the FLOPs of an ONNX graph are "
        "not counted (bound <= 0.5)"]


def test_measured_figures_still_pass_and_decode_of_an_encoder_fails():
    row, result = _onnx_int8_on_minilm()
    figures, why = gate_figures(row, result), gate_not_measured(row, result)
    assert failed_checks(parse_gate("size_ratio<=0.3, speedup>=1.5, quality_retention>=0.99"), figures, why) == []
    assert failed_checks(parse_gate("decode_speedup>=1"), figures, why) == [
        "decode_speedup was not measured: an encoder has no per-token decode (bound >= 1)"]


def test_a_set_zero_is_a_measurement_and_an_unset_figure_is_not():
    row = common_pb2.ComparisonRow(size_ratio=0.0)
    figures = gate_figures(row, common_pb2.CompressionResult())
    assert figures == {"size_ratio": 0.0}
    assert failed_checks(parse_gate("flops_ratio<=0.5"), figures) == ["flops_ratio was not measured (bound <= 0.5)"]


def test_a_threshold_set_check_on_an_unmeasured_figure_fails_in_a_comparison():
    from services.common.contract.thresholds import THRESHOLD_SETS

    original, exported = _minilm(90_900_000, onnx=False), _minilm(23_000_000, onnx=True)
    row = comparison_row(1, "onnx-int8", exported, original, False, THRESHOLD_SETS["seed-pruning"],
                         [common_pb2.SpeedRatio(phase="forward", speedup=2.0)])
    flops, speed = row.checks
    assert not flops.HasField("value") and not flops.passed and "ONNX graph" in flops.not_measured
    assert speed.passed and not row.passed
