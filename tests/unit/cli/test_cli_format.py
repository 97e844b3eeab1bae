"""What the CLI prints for people: integers as integers, choices shown, job rows in 100 columns."""

from google.protobuf import struct_pb2

from modelpress.v1 import common_pb2
from services.cli import main as cli


def test_method_fields_print_integers_and_choices():
    size = common_pb2.ConfigField(name="group_size", default_value=struct_pb2.Value(number_value=64),
                                  choices=["0", "32", "64", "128"])
    samples = common_pb2.ConfigField(name="calibration_samples", default_value=struct_pb2.Value(number_value=16),
                                     minimum=1, maximum=1024)
    damping = common_pb2.ConfigField(name="damping", default_value=struct_pb2.Value(number_value=0.01))
    assert cli._field_text(size) == "group_size=64 (0|32|64|128)"
    assert cli._field_text(samples) == "calibration_samples=16 [1..1024]"
    assert cli._field_text(damping) == "damping=0.01"


def test_jobs_list_fits_100_columns_with_long_models(monkeypatch, capsys):
    job = common_pb2.Job(job_id="j-5d548277faa745cb", recipe="w4a16-gptq-compact",
                         model=common_pb2.ModelRef(path="/srv/models/customers/very-long-model-folder-name-v2"),
                         state=common_pb2.JOB_STATE_CANCELLED, output=common_pb2.ArtifactRef(id="a-e1a2a1c942ba43f98eed"))

    class Fake:
        def __init__(self, *_a, **_k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return None

        def list_jobs(self):
            return [job]

    monkeypatch.setattr(cli, "Client", Fake)
    args = cli.build_parser().parse_args(["jobs", "list"])
    assert cli.cmd_jobs(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert any(cli._middle(cli._model_text(job.model), 22) in line and "w4a16-gptq-compact" in line for line in lines)
