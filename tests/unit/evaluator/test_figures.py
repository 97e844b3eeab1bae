"""The evaluator sets only what it measured and says why the rest was not; reports show "n/a", never 0."""

import json

from modelpress.results import compression_result
from modelpress.v1 import common_pb2
from services.evaluator import report
from services.evaluator.comparison import comparison_row
from services.evaluator.figures import OPTIONAL_MESSAGES, OPTIONAL_SCALARS, metrics_message, stage_figures
from services.evaluator.probe import ProbePlan, not_measured


def _encoder_figures(*, onnx: bool) -> dict:
    plan = ProbePlan(models=["m"], quality_sentences=20, decode_tokens=4)
    figures = {"size_on_disk_bytes": 23_000_000 if onnx else 90_000_000, "parameters": 22_700_000,
               "peak_rss_mb": 300.0, "kind": "encoder", "format": "ONNX" if onnx else "hf-safetensors",
               "latency": {"p50_ms": 4.0, "p95_ms": 5.0, "p99_ms": 6.0, "stdev_ms": 0.5, "samples_ms": [4.0, 5.0]},
               "encoder": {"sentences": 20, "topics": 4, "knn_topic_accuracy": 0.8, "knn_k": 3,
                           "mean_reference_cosine": 0.0, "min_reference_cosine": 0.0, "neighbour_agreement": 0.0,
                           "has_reference": False},
               "not_measured": not_measured(plan, "encoder", "ONNX" if onnx else "hf-safetensors", True)}
    if not onnx:
        figures["flops"] = 2 * 10**9
    return figures


def test_the_probe_says_why_each_figure_is_left_out():
    encoder = not_measured(ProbePlan(models=["m"], quality_sentences=20), "encoder", "ONNX", True)
    assert encoder["perplexity"] == "an encoder has no perplexity" and "decode" in encoder
    assert encoder["flops"].endswith("the FLOPs of an ONNX graph are not counted")
    causal = not_measured(ProbePlan(models=["m"], quality_windows=0, decode_tokens=8), "causal-lm", "ONNX", False)
    assert causal["perplexity"].startswith("quality_windows is 0")
    assert causal["decode"] == "the ONNX graph was exported without its KV cache: it has no per-token decode"
    full = not_measured(ProbePlan(models=["m"], quality_windows=2, decode_tokens=8), "causal-lm", "hf-safetensors",
                        True)
    assert set(full) == {"encoder", "cuda_max_memory_mb"}  # all else is measured on a CPU


def test_metrics_leave_unmeasured_figures_unset_with_a_reason_for_each():
    metrics = metrics_message(_encoder_figures(onnx=True))
    assert not metrics.HasField("flops") and not metrics.HasField("perplexity")
    assert metrics.not_measured["perplexity"] == "an encoder has no perplexity"
    # Without a reference model the reference figures are unset, not 0.
    assert not metrics.encoder.HasField("mean_reference_cosine") and metrics.encoder.knn_topic_accuracy == 0.8
    for name in (*OPTIONAL_SCALARS, *OPTIONAL_MESSAGES):
        assert metrics.HasField(name) or metrics.not_measured[name], name
    flat = stage_figures(metrics)
    assert "flops" not in flat and "perplexity" not in flat and flat["latency_p50_ms"] == 4.0
    assert flat["not_measured"]["flops"].endswith("are not counted")


def test_a_comparison_row_leaves_the_flops_ratio_of_an_onnx_graph_unset():
    original, exported = metrics_message(_encoder_figures(onnx=False)), metrics_message(_encoder_figures(onnx=True))
    row = comparison_row(1, "onnx-int8", exported, original, False, None,
                         [common_pb2.SpeedRatio(phase="forward", speedup=1.5)])
    assert not row.HasField("flops_ratio") and row.not_measured["flops_ratio"].endswith("are not counted")
    assert row.size_ratio == 23 / 90 and row.speedup == 1.5 and row.quality_retention == 1.0


def test_reports_say_n_a_for_what_was_not_measured():
    original, exported = metrics_message(_encoder_figures(onnx=False)), metrics_message(_encoder_figures(onnx=True))
    job = common_pb2.Job(job_id="j-1", recipe="onnx-int8", state=common_pb2.JOB_STATE_SUCCEEDED)
    job.result.CopyFrom(compression_result("j-1", original, exported, "a-1"))
    made = report.job_report(job, [])
    before_after = dict((row[0], row) for row in made.tables[0][2])
    assert before_after["FLOPs per pass (G)"][1:4] == ["2", "n/a", "n/a"]
    assert "perplexity" not in before_after  # an encoder's table holds its own quality figures
    data = json.loads(made.json())
    assert data["job"]["result"]["perplexity_increase"] is None  # the one schema, null not 0
    rows = [comparison_row(0, "fp32", original, original, True, None),
            comparison_row(1, "onnx-int8", exported, original, False, None)]
    table = report.comparison_report(common_pb2.Comparison(rows=rows)).tables[0]
    flops = table[1].index("FLOPs ratio")
    assert [line[flops] for line in table[2]] == ["1", "n/a"]
