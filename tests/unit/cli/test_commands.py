"""The CLI's commands against a fake gateway client: Ctrl-C detaches, a closed pipe ends quietly,
events and results on stdout, download by job or artifact id, one JSON document, --version, the
message when nothing listens (against a real refused connection), and mesh-certs' files."""

from __future__ import annotations

import json
import socket

import grpc
import pytest

import modelpress
from modelpress.errors import NotFound
from modelpress.results import job_document
from modelpress.v1 import common_pb2
from services.cli import main as cli

K = common_pb2
JOB_ID, ARTIFACT_ID = "j-5d548277faa745cb", "a-e1a2a1c942ba43f98eed"


def _job(state=K.JOB_STATE_SUCCEEDED) -> common_pb2.Job:
    job = common_pb2.Job(job_id=JOB_ID, recipe="int8-weight-only", state=state,
                         model=common_pb2.ModelRef(builtin="smollm2-135m"),
                         output=common_pb2.ArtifactRef(id=ARTIFACT_ID))
    job.result.compressed_model_size_bytes = 120_000_000
    job.result.compressed_artifact_id = ARTIFACT_ID
    return job


def _events(interrupt: bool):
    yield common_pb2.JobEvent(job_id=JOB_ID, kind=K.EVENT_KIND_JOB_STATE, job_state=K.JOB_STATE_RUNNING,
                              message="running")
    yield common_pb2.JobEvent(job_id=JOB_ID, kind=K.EVENT_KIND_STAGE_STARTED, stage_name="quantize")
    if interrupt:
        raise KeyboardInterrupt
    yield common_pb2.JobEvent(job_id=JOB_ID, kind=K.EVENT_KIND_STAGE_FINISHED, stage_name="quantize",
                              stage_progress=1.0)
    yield common_pb2.JobEvent(job_id=JOB_ID, kind=K.EVENT_KIND_JOB_STATE, job_state=K.JOB_STATE_SUCCEEDED)


class FakeClient:
    """The gateway as the CLI sees it; `interrupt` raises KeyboardInterrupt mid-watch (Ctrl-C)."""

    interrupt = False
    jobs: dict[str, common_pb2.Job] = {}
    artifacts: set[str] = set()
    downloads: list[dict] = []

    def __init__(self, *_a, **_k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return None

    def create_job(self, *_a, **_k):
        return _job(K.JOB_STATE_PENDING)

    def watch(self, job_id):
        return _events(self.interrupt)

    def get_job(self, job_id):
        if job_id not in self.jobs:
            raise NotFound(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
        return self.jobs[job_id]

    def list_jobs(self):
        return list(self.jobs.values())

    def download(self, folder, *, job_id="", artifact_id=""):
        if artifact_id and artifact_id not in self.artifacts:
            raise NotFound(grpc.StatusCode.NOT_FOUND, f"artifact_id: artifact {artifact_id!r} not found")
        self.downloads.append({"job_id": job_id, "artifact_id": artifact_id})
        return common_pb2.ArtifactRef(id=artifact_id or self.jobs[job_id].output.id, size_bytes=10,
                                      sha256="ab" * 32)


@pytest.fixture
def gateway(monkeypatch):
    FakeClient.interrupt = False
    FakeClient.jobs = {JOB_ID: _job()}
    FakeClient.artifacts = {ARTIFACT_ID}
    FakeClient.downloads = []
    monkeypatch.setattr(cli, "Client", FakeClient)
    monkeypatch.delenv("MODELPRESS_GATEWAY", raising=False)
    return FakeClient


def test_ctrl_c_during_wait_detaches_with_the_commands_to_come_back(gateway, capsys):
    gateway.interrupt = True
    assert cli.main(["compress", "builtin:smollm2-135m", "--recipe", "int8-weight-only", "--wait"]) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "KeyboardInterrupt" not in captured.err
    assert f"modelpress watch {JOB_ID}" in captured.err and f"modelpress jobs cancel {JOB_ID}" in captured.err
    assert f"job {JOB_ID}: running" in captured.out  # the events came on stdout


def test_ctrl_c_during_watch_detaches_too(gateway, capsys):
    gateway.interrupt = True
    assert cli.main(["--gateway", "10.0.0.7:50051", "watch", JOB_ID]) == 130
    assert f"modelpress --gateway 10.0.0.7:50051 jobs cancel {JOB_ID}" in capsys.readouterr().err


def test_watch_writes_its_events_to_stdout_and_nothing_to_stderr(gateway, capsys):
    assert cli.main(["watch", JOB_ID]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines() == [f"job {JOB_ID}: running", "stage 0 quantize started",
                                         "stage 0 quantize finished in 0 s", f"job {JOB_ID}: succeeded"]


def test_a_closed_pipe_ends_quietly_with_141(gateway, monkeypatch, capsys):
    def closed(*_a, **_k):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "job_lines", closed)
    assert cli.main(["jobs", "list"]) == 141
    assert capsys.readouterr().err == ""


def test_download_takes_a_job_id_or_an_artifact_id(gateway, tmp_path, capsys):
    assert cli.main(["download", JOB_ID, "--out", str(tmp_path / "by-job")]) == 0
    assert cli.main(["download", ARTIFACT_ID, "--out", str(tmp_path / "by-artifact")]) == 0
    assert gateway.downloads == [{"job_id": JOB_ID, "artifact_id": ""},
                                 {"job_id": "", "artifact_id": ARTIFACT_ID}]
    assert capsys.readouterr().out.count(f"artifact {ARTIFACT_ID} ") == 2


def test_download_of_an_unknown_id_names_both_kinds(gateway, tmp_path, capsys):
    assert cli.main(["download", "a-0000", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "NOT_FOUND" in err and "neither a job" in err and "nor an artifact" in err and "a-0000" in err


def test_compress_json_and_jobs_get_json_print_the_same_document(gateway, capsys):
    compress = ["compress", "builtin:smollm2-135m", "--recipe", "int8-weight-only", "--wait", "--json"]
    assert cli.main(compress) == 0
    from_compress = json.loads(capsys.readouterr().out)
    assert cli.main(["jobs", "get", JOB_ID, "--json"]) == 0
    from_get = json.loads(capsys.readouterr().out)
    assert from_compress == from_get == job_document(gateway.jobs[JOB_ID])
    assert from_get["job_id"] == JOB_ID and from_get["state"] == "JOB_STATE_SUCCEEDED"
    assert from_get["output"]["id"] == ARTIFACT_ID and "headline" in from_get["result"]
    assert from_get["result"]["compressed_model_size_bytes"] == 120_000_000  # an int64 as a number
    assert from_get["result"]["original_model_size_bytes"] is None  # not measured: null, never 0
    assert cli.main(["jobs", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [from_get]


def test_jobs_get_for_people_shows_the_job_not_json(gateway, capsys):
    assert cli.main(["jobs", "get", JOB_ID]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"job {JOB_ID}: succeeded, builtin:smollm2-135m with int8-weight-only")
    assert ARTIFACT_ID in text and "not evaluated" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"modelpress {modelpress.__version__}\n"


def test_with_nothing_listening_it_says_to_start_the_mesh(monkeypatch, capsys):
    monkeypatch.delenv("MODELPRESS_GATEWAY", raising=False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["--gateway", f"127.0.0.1:{port}", "jobs", "list"]) == 1
    err = capsys.readouterr().err
    assert err == (f"no modelpress gateway answers at 127.0.0.1:{port}: start it with `modelpress up` "
                   "(or pass --gateway HOST:PORT)\n")


def test_mesh_certs_writes_what_up_auth_makes_and_prints_the_kubectl_commands(tmp_path, capsys):
    assert cli.main(["mesh-certs", str(tmp_path / "mesh"), "--hostname", "quantizer.modelpress.svc"]) == 0
    printed = capsys.readouterr().out.splitlines()
    tls = tmp_path / "mesh" / "tls"
    assert printed == [f"kubectl create secret generic modelpress-mesh-tls --from-file={tls}",
                       "kubectl create secret generic modelpress-mesh-secret "
                       f"--from-file=mesh.secret={tmp_path / 'mesh' / 'mesh.secret'}"]
    assert {p.name for p in tls.iterdir()} >= {"ca.crt", "gateway.crt", "gateway.key", "quantizer.crt", "quantizer.key"}
    assert not list(tls.glob("ca.key"))  # the CA's key is never written
