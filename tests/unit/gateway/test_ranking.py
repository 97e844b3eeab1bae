import pytest

from modelpress.v1 import common_pb2
from services.evaluator.comparison import comparison_row, quality_retention
from services.gateway.ranking import Candidate, Constraints, rank
from services.common.contract.thresholds import THRESHOLD_SETS, threshold_set, UnknownThresholdSet

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


# ---- recommending for a machine: stored outcomes carry their ISA -------------------------------

AVX2 = ["sse4_2", "avx", "avx2", "fma", "f16c"]
AMX = AVX2 + ["avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]


def _outcome(recipe: str, flags: list[str], latency_ms: float, size: int = 100) -> common_pb2.Job:
    job = common_pb2.Job(job_id=f"j-{recipe}-{flags[-1]}", recipe=recipe, model=common_pb2.ModelRef(builtin="m"),
                         state=common_pb2.JOB_STATE_SUCCEEDED)
    result = job.result
    result.original_model_size_bytes, result.compressed_model_size_bytes = 400, size
    result.original_latency_ms, result.compressed_latency_ms = 100.0, latency_ms
    result.compression_ratio, result.latency_improvement = 400 / size, 100.0 / latency_ms
    for metrics in (result.original, result.compressed):
        metrics.kind, metrics.perplexity, metrics.top1_accuracy = "causal-lm", 10.0, 0.5
        metrics.machine.isa_features[:] = flags
    result.original.size_on_disk_bytes = 400
    job.evaluation.batch_size, job.evaluation.sequence_length, job.evaluation.threads = 1, 128, 2
    return job


class _Outcomes:
    def __init__(self, jobs):
        self._jobs = jobs

    async def for_model(self, model, device=""):
        return self._jobs


class _StoredOnly:
    """A runner with stored outcomes and nothing to run: submitting fails the test."""

    def __init__(self, jobs):
        self.outcomes = _Outcomes(jobs)

    async def submit(self, **_):
        raise AssertionError("nothing may be measured now in this test")


def _hardware(flags) -> common_pb2.WorkerHardware:
    from services.common.measure.isa import isa_class

    return common_pb2.WorkerHardware(worker="evaluator-1", isa_class=isa_class(flags),
                                     machine=common_pb2.MachineInfo(isa_features=flags))


def _recommend(jobs, evaluator_flags, model_kind=None, methods=None, **request):
    import asyncio

    from modelpress.v1 import gateway_pb2
    from services.common.runtime.auth import OPEN
    from services.gateway.recommender import recommend

    message = gateway_pb2.RecommendStrategyRequest(
        model=common_pb2.ModelRef(builtin="m"), target="cloud",
        evaluation=common_pb2.EvaluationSpec(batch_size=1, sequence_length=128), **request)

    async def no_stages(recipe):
        raise AssertionError("nothing may be measured now in this test")

    def no_admission():
        raise AssertionError("no job may be admitted in this test")

    return asyncio.run(recommend(message, _StoredOnly(jobs), no_stages, _hardware(evaluator_flags), viewer=OPEN,
                                 admit=no_admission, model_kind=model_kind, methods=methods))


def _described_methods():
    """What the four engine services' Describe answers: every registered method with the kinds it takes."""
    from services.common.contract.config import describe_registry
    from services.distiller.engine import METHODS as DISTILLER
    from services.optimizer.engine import METHODS as OPTIMIZER
    from services.pruner.engine import METHODS as PRUNER
    from services.quantizer.engine import METHODS as QUANTIZER

    return {(d.technique, d.name): d for technique, registry in (
        (common_pb2.TECHNIQUE_QUANTIZER, QUANTIZER), (common_pb2.TECHNIQUE_OPTIMIZER, OPTIMIZER),
        (common_pb2.TECHNIQUE_PRUNER, PRUNER), (common_pb2.TECHNIQUE_DISTILLER, DISTILLER))
        for d in describe_registry(technique, registry)}


def test_default_candidates_are_cpu_serving_paths_for_the_kind_never_an_emulated_compute():
    from services.gateway.recommender import default_candidates

    methods = _described_methods()
    avx2 = default_candidates("causal-lm", AVX2, methods)
    assert {"onnx-int8", "openvino-int8", "onnx"} <= set(avx2)
    # Emulated compute on an AVX2 CPU, weight-only quantizers computing in FP32, calibration or training: not defaults.
    assert not {"bf16", "fp16", "openvino-bf16", "int8-weight-only", "w4a16-rtn", "w4a16-gptq",
                "smoothquant-onnx-int8", "minilm-edge", "fastest-cpu", "gguf-q8_0"} & set(avx2)
    amx = default_candidates("causal-lm", AMX, methods)
    assert {"bf16", "openvino-bf16", "openvino-int8-bf16"} <= set(amx) and set(avx2) < set(amx)
    encoder = default_candidates("encoder", AVX2, methods)
    assert "onnx-int8" in encoder and "openvino-int8" in encoder


def test_without_named_candidates_the_defaults_are_ranked_and_stored_only_ranks_what_it_has():
    jobs = [_outcome("onnx-int8", AVX2, 60.0), _outcome("int8-weight-only", AVX2, 90.0, size=150)]
    response = _recommend(jobs, AVX2, model_kind="causal-lm", methods=_described_methods(), stored_only=True)
    ranked = [r.strategy.recipe for r in response.recommendations]
    # The stored outcomes are ranked (int8-weight-only too: stored for this model); defaults with nothing stored
    # are listed as not measured rather than failing the request.
    assert ranked[:2] == ["onnx-int8", "int8-weight-only"]
    unmeasured = {r.strategy.recipe: r.reason for r in response.recommendations[2:]}
    assert "openvino-int8" in unmeasured and all("no stored outcome" in why for why in unmeasured.values())
    # A named list is what is ranked: a stored outcome of an unnamed recipe stays out.
    named = _recommend(jobs, AVX2, candidate_recipes=["onnx-int8"], stored_only=True)
    assert [r.strategy.recipe for r in named.recommendations] == ["onnx-int8"]


def test_on_an_avx2_cpu_a_bf16_path_is_never_picked_even_when_its_figures_are_the_fastest():
    # Recorded on the AVX2-only EPYC: bf16 figures that would win the cloud ranking on latency.
    jobs = [_outcome("openvino-bf16", AVX2, 40.0, size=200), _outcome("onnx-int8", AVX2, 60.0),
            _outcome("bf16", AVX2, 30.0, size=200)]
    response = _recommend(jobs, AVX2, candidate_recipes=["openvino-bf16", "onnx-int8", "bf16"], stored_only=True)
    ranked = [r.strategy.recipe for r in response.recommendations]
    assert ranked[0] == "onnx-int8" and response.isa_class == "avx2"
    assert [s.recipe for s in response.strategies] == ["onnx-int8"]
    for r in response.recommendations[1:]:
        assert not r.feasible and "isa_class" in r.violated_constraints and "emulated" in r.reason
        assert r.compute_precision == "bf16" and r.isa_class == "avx2"


def test_on_an_amx_cpu_the_bf16_path_wins_and_avx2_outcomes_are_not_mixed_in():
    jobs = [_outcome("openvino-bf16", AMX, 30.0, size=200), _outcome("onnx-int8", AMX, 60.0),
            _outcome("onnx-int8", AVX2, 20.0)]  # a faster figure from another machine must not count
    response = _recommend(jobs, AMX, candidate_recipes=["openvino-bf16", "onnx-int8"], stored_only=True)
    assert [r.strategy.recipe for r in response.recommendations] == ["openvino-bf16", "onnx-int8"]
    assert response.recommendations[1].latency_p50_ms == 60.0
    assert "outcomes from other machines not used (1 on avx2)" in response.note


def test_asking_for_a_class_with_no_outcomes_says_so_and_measures_nothing_on_the_wrong_cpu():
    jobs = [_outcome("openvino-bf16", AMX, 30.0, size=200), _outcome("onnx-int8", AMX, 60.0)]
    from services.gateway.recommender import NoCandidateMeasured

    with pytest.raises(NoCandidateMeasured, match="this mesh's evaluator is amx"):
        _recommend(jobs, AMX, candidate_recipes=["onnx-int8"], isa_class="avx2")
    jobs.append(_outcome("onnx-int8", AVX2, 50.0))
    response = _recommend(jobs, AMX, candidate_recipes=["onnx-int8", "openvino-bf16"], isa_class="avx2")
    assert response.isa_class == "avx2" and response.recommendations[0].strategy.recipe == "onnx-int8"
    assert not response.recommendations[1].feasible and "emulated" in response.recommendations[1].reason


def test_an_unknown_isa_class_is_refused_naming_the_known_ones():
    from services.common.contract.chain import InvalidArgument

    with pytest.raises(InvalidArgument, match="isa_class: 'sse9'.*avx512-bf16"):
        _recommend([_outcome("onnx-int8", AVX2, 50.0)], AVX2, isa_class="sse9")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_constraint_that_is_not_a_finite_number_is_refused_not_taken_as_no_limit(value):
    for field in ("max_size_mb", "max_latency_ms"):
        with pytest.raises(ValueError, match=f"{field}: must be a finite number"):
            Constraints("edge", **{field: value})
    with pytest.raises(ValueError, match="min_quality_retention"):
        Constraints("edge", min_quality_retention=value)
