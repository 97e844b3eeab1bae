"""What the CLI prints for people: integers as integers, choices shown, job rows in 100 columns."""

from google.protobuf import struct_pb2

from modelpress.v1 import common_pb2
from services.cli import main as cli
from services.cli.evaluation import print_comparison, print_metrics
from services.cli.output import figure


def test_method_fields_print_integers_and_choices():
    size = common_pb2.ConfigField(name="group_size", default_value=struct_pb2.Value(number_value=64),
                                  choices=["0", "32", "64", "128"])
    samples = common_pb2.ConfigField(name="calibration_samples", default_value=struct_pb2.Value(number_value=16),
                                     minimum=1, maximum=1024)
    damping = common_pb2.ConfigField(name="damping", default_value=struct_pb2.Value(number_value=0.01))
    assert cli._field_text(size) == "group_size=64 (0|32|64|128)"
    assert cli._field_text(samples) == "calibration_samples=16 [1..1024]"
    assert cli._field_text(damping) == "damping=0.01"


JOB = common_pb2.Job(job_id="j-5d548277faa745cb", recipe="w4a16-gptq-compact",
                     model=common_pb2.ModelRef(path="/srv/models/customers/very-long-model-folder-name-v2"),
                     state=common_pb2.JOB_STATE_CANCELLED,
                     output=common_pb2.ArtifactRef(id="a-e1a2a1c942ba43f98eed"))


def test_jobs_list_on_a_terminal_fits_100_columns_and_keeps_ids_whole():
    lines = cli.job_lines([cli._job_row(JOB)], terminal=True)
    assert max(len(line) for line in lines) <= 100
    row = lines[1]
    assert "j-5d548277faa745cb" in row and "a-e1a2a1c942ba43f98eed" in row  # whole, never "a-e1…f98eed"
    assert cli._middle(cli._model_text(JOB.model), 18) in row and "w4a16-gptq-compact" in row


def test_jobs_list_off_a_terminal_cuts_nothing(monkeypatch, capsys):
    class Fake:
        def __init__(self, *_a, **_k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return None

        def list_jobs(self):
            return [JOB]

    monkeypatch.setattr(cli, "Client", Fake)
    assert cli.main(["jobs", "list"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["job", "model", "recipe", "status", "done", "artifact"]
    assert row.split() == ["j-5d548277faa745cb", "path:/srv/models/customers/very-long-model-folder-name-v2",
                           "w4a16-gptq-compact", "cancelled", "0%", "a-e1a2a1c942ba43f98eed"]


def test_a_figure_that_was_not_measured_is_n_a_never_0():
    assert figure(None) == figure(0) == figure(0.0) == "n/a"
    assert figure(134_515_008, "{:.2f} M", 1e6) == "134.52 M"


def _measured(metrics: common_pb2.ModelMetrics, *, size, ppl, rss) -> None:
    metrics.CopyFrom(common_pb2.ModelMetrics(kind="causal-lm", size_on_disk_bytes=size, parameters=1_000_000,
                                             perplexity=ppl, top1_accuracy=0.4 if ppl else 0.0,
                                             peak_rss_mb=rss,
                                             latency=common_pb2.LatencyStats(phase="prefill", p50_ms=3.0,
                                                                             stdev_ms=0.1, batch_size=1,
                                                                             sequence_length=128)))


def test_the_result_table_shows_unmeasured_figures_as_n_a(capsys):
    job = common_pb2.Job(job_id="j-1", recipe="onnx-int8", state=common_pb2.JOB_STATE_SUCCEEDED)
    result = job.result
    _measured(result.original, size=540_000_000, ppl=13.5, rss=700.0)
    _measured(result.compressed, size=270_000_000, ppl=0.0, rss=0.0)  # an engine that measured neither
    cli.print_result(job)
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.count("│") >= 5}
    perplexity = next(v for k, v in rows.items() if k.startswith("perplexity"))
    assert perplexity[:3] == ["13.500", "n/a", "n/a"]
    assert rows["peak RSS (MB)"][:3] == ["700", "n/a", "n/a"]
    assert rows["size on disk (MB)"][:3] == ["540.0", "270.0", "0.500"]
    assert not any(cell in ("0", "0.000", "0.0") for cells in rows.values() for cell in cells)


def test_evaluate_prints_no_flops_as_n_a(capsys):
    metrics = common_pb2.ModelMetrics(kind="encoder", size_on_disk_bytes=90_000_000, parameters=22_000_000,
                                      flops=0, latency=common_pb2.LatencyStats(phase="forward", p50_ms=4.0))
    print_metrics("artifact:a-1", metrics)
    flops = next(line for line in capsys.readouterr().out.splitlines() if "FLOPs" in line)
    assert "n/a" in flops and "0.00 G" not in flops


def test_a_comparison_shows_unmeasured_ratios_as_n_a_and_whole_model_ids(capsys):
    base = common_pb2.ComparisonRow(model="builtin:minilm-l6", baseline=True, metrics=common_pb2.ModelMetrics(
        size_on_disk_bytes=90_000_000, latency=common_pb2.LatencyStats(p50_ms=4.0, stdev_ms=0.1)))
    onnx = common_pb2.ComparisonRow(model="artifact:a-e1a2a1c942ba43f98eed", size_ratio=0.3, speedup=1.8,
                                    quality_retention=0.99, metrics=common_pb2.ModelMetrics(
                                        size_on_disk_bytes=27_000_000,
                                        latency=common_pb2.LatencyStats(p50_ms=2.2, stdev_ms=0.1)))
    print_comparison(common_pb2.Comparison(comparison_id="c-1", rows=[base, onnx], interleaved_rounds=3))
    row = next(line for line in capsys.readouterr().out.splitlines() if "a-e1a2" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[0] == "artifact:a-e1a2a1c942ba43f98eed"  # off a terminal nothing is cut
    assert cells[2:4] == ["0.300", "n/a"]  # the size ratio, and FLOPs not counted for an ONNX graph
