import pytest

from modelpress.v1 import common_pb2
from services.evaluator.comparison import comparison_row, quality_retention
from services.common.recommend import Candidate, Constraints, rank
from services.evaluator.thresholds import THRESHOLD_SETS, threshold_set, UnknownThresholdSet

FP16 = Candidate("fp16", size_mb=269, latency_p50_ms=60, quality_retention=1.0, compression_ratio=2, speedup=0.8)
INT8 = Candidate("int8", size_mb=140, latency_p50_ms=70, quality_retention=0.999, compression_ratio=3.9, speedup=0.7)
W4 = Candidate("w4", size_mb=86, latency_p50_ms=75, quality_retention=0.90, compression_ratio=6, speedup=0.65)
SLOW_BIG = Candidate("bad", size_mb=300, latency_p50_ms=90, quality_retention=0.95)


def test_edge_prefers_the_smallest_feasible_and_names_the_binding_constraint():
    ranked = rank([FP16, INT8, W4], Constraints("edge", max_size_mb=150, min_quality_retention=0.95))
    assert [r.candidate.recipe for r in ranked] == ["int8", "w4", "fp16"]
    best = ranked[0]
    assert best.feasible and best.rank == 1 and "binding: quality kept 99.9% >= 95.0%" in best.reason
    assert ranked[1].violated == ["min_quality_retention"] and "quality kept 90.0% < 95.0%" in ranked[1].reason
    assert ranked[2].violated == ["max_size_mb"]


def test_cloud_prefers_speed_and_mobile_prefers_size():
    assert rank([INT8, W4, FP16], Constraints("cloud"))[0].candidate is FP16
    assert rank([INT8, FP16, W4], Constraints("mobile"))[0].candidate is W4


def test_pareto_front_excludes_dominated_candidates():
    ranked = {r.candidate.recipe: r for r in rank([FP16, INT8, W4, SLOW_BIG], Constraints("cloud"))}
    assert ranked["fp16"].pareto_optimal and ranked["int8"].pareto_optimal and ranked["w4"].pareto_optimal
    assert not ranked["bad"].pareto_optimal and "dominated by fp16" in ranked["bad"].reason


def test_infeasible_candidates_rank_by_how_badly_they_miss():
    ranked = rank([FP16, W4], Constraints("cloud", max_latency_ms=50))
    assert not any(r.feasible for r in ranked)
    assert ranked[0].candidate is FP16  # 20 % over beats 50 % over


@pytest.mark.parametrize("kwargs, field", [({"target": "desktop"}, "target"), ({"max_size_mb": -1}, "max_size_mb"),
                                           ({"min_quality_retention": 1.5}, "min_quality_retention")])
def test_bad_constraints_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Constraints(**kwargs)


def _lm(size, ppl, top1, p50, rss=1000, params=100, flops=1000):
    return common_pb2.ModelMetrics(kind="causal-lm", size_on_disk_bytes=size, perplexity=ppl, top1_accuracy=top1,
                                   peak_rss_mb=rss, parameters=params, flops=flops,
                                   latency=common_pb2.LatencyStats(p50_ms=p50))


def test_quality_retention_takes_the_worse_view():
    base = _lm(1000, 10.0, 0.40, 50)
    assert quality_retention(_lm(500, 11.0, 0.39, 50), base)[0] == pytest.approx(10 / 11)
    assert quality_retention(_lm(500, 10.1, 0.30, 50), base)[0] == pytest.approx(0.75)
    encoder_base = common_pb2.ModelMetrics(kind="encoder", encoder=common_pb2.EncoderQuality(knn_topic_accuracy=0.8))
    drifted = common_pb2.ModelMetrics(kind="encoder", encoder=common_pb2.EncoderQuality(
        knn_topic_accuracy=0.8, has_reference=True, mean_reference_cosine=0.97))
    assert quality_retention(drifted, encoder_base)[0] == pytest.approx(0.97)


def test_comparison_row_checks_the_seed_int4_criteria():
    base = _lm(1000, 10.0, 0.40, 50)
    row = comparison_row(1, "w4", _lm(240, 10.4, 0.395, 40), base, False, THRESHOLD_SETS["seed-int4"])
    assert row.size_ratio == 0.24 and row.speedup == pytest.approx(1.25) and row.latency_ratio == 0.8
    assert [(c.metric, c.passed) for c in row.checks] == [("size_ratio", True), ("quality_retention", True)]
    assert row.passed
    worse = comparison_row(1, "w4", _lm(260, 12.0, 0.395, 40), base, False, THRESHOLD_SETS["seed-int4"])
    assert [c.passed for c in worse.checks] == [False, False] and not worse.passed


def test_unknown_threshold_set_lists_the_known_ones():
    assert threshold_set("") is None
    with pytest.raises(UnknownThresholdSet, match="seed-int8"):
        threshold_set("seed-int3")


def test_a_few_bytes_are_no_smaller_and_a_few_percent_no_faster():
    rtn = Candidate("rtn", size_mb=19.10, latency_p50_ms=255.0, quality_retention=0.947)
    gptq = Candidate("gptq", size_mb=19.11, latency_p50_ms=229.0, quality_retention=0.968)
    assert rank([rtn, gptq], Constraints("edge"))[0].candidate is gptq  # same size: 11 % faster wins
    noisy = Candidate("gptq", size_mb=19.11, latency_p50_ms=256.0, quality_retention=0.968)
    assert rank([rtn, noisy], Constraints("edge"))[0].candidate is noisy  # 0.4 % slower is a tie: quality wins
