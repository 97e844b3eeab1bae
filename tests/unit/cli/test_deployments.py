"""`modelpress deploy` and `modelpress deployments ...` against a fake gateway client: a job id or an
artifact id told apart by looking, --config and --set merged into the request's config, --wait,
a deployment named by id or name, and what `get` and `list` print (state, replicas, endpoints,
requests, latency percentiles, batch sizes) for people and as JSON."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format

from modelpress.errors import NotFound
from modelpress.results import message_document
from modelpress.structs import to_struct
from modelpress.v1 import common_pb2
from services.cli import deployments as cli_deployments
from services.cli import main as cli

K = common_pb2
JOB_ID, ARTIFACT_ID = "j-5d548277faa745cb", "a-e1a2a1c942ba43f98eed"
DEP_ID = "dep-0123456789abcdef"


def _served() -> common_pb2.Deployment:
    d = common_pb2.Deployment(deployment_id=DEP_ID, name="bert-tiny", artifact_id=ARTIFACT_ID, job_id=JOB_ID,
                              state=K.DEPLOYMENT_STATE_SERVING, replicas=2, ready_replicas=2, model_kind="encoder",
                              format=K.ARTIFACT_FORMAT_ONNX, config=to_struct({"max_batch_size": 4}))
    for replica, grpc_port, http_port in (("serving@a:50057", 50057, 8000), ("serving@b:50157", 50157, 8100)):
        d.endpoints.add(protocol="http", address=f"127.0.0.1:{http_port}", replica=replica)
        d.endpoints.add(protocol="oip-grpc", address=f"127.0.0.1:{grpc_port}", replica=replica)
    json_format.ParseDict({"requests": {"ok": 118, "error": 2}, "batch_sizes": {"1": 40, "16": 3, "4": 10},
                           "replicas": [{"latency_ms": {"p50": 1.25, "p95": 3.5, "p99": 7.0}},
                                        {}]}, d.status)
    return d


class FakeClient:
    """The gateway's deployment RPCs as the CLI sees them; records every call."""

    jobs: set[str] = set()
    artifacts: set[str] = set()
    deployments: dict[str, common_pb2.Deployment] = {}
    calls: list[tuple] = []
    wait_error: BaseException | None = None

    def __init__(self, *_a, **_k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return None

    def get_job(self, job_id):
        if job_id not in self.jobs:
            raise NotFound(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
        return common_pb2.Job(job_id=job_id, output=common_pb2.ArtifactRef(id=ARTIFACT_ID))

    def deploy(self, *, job_id="", artifact_id="", name="", replicas=1, config=None, shadow_share=0.0):
        self.calls.append(("deploy", {"job_id": job_id, "artifact_id": artifact_id, "name": name,
                                      "replicas": replicas, "config": dict(config or {}),
                                      **({"shadow_share": shadow_share} if shadow_share else {})}))
        if artifact_id and artifact_id not in self.artifacts:
            raise NotFound(grpc.StatusCode.NOT_FOUND, f"artifact_id: artifact {artifact_id!r} not found")
        return common_pb2.Deployment(deployment_id=DEP_ID, name=name or job_id or artifact_id, job_id=job_id,
                                     artifact_id=artifact_id or ARTIFACT_ID, replicas=replicas,
                                     state=K.DEPLOYMENT_STATE_PENDING, config=to_struct(config))

    def wait_deployment(self, deployment_id, *, replicas=1, timeout_s=300.0, poll_s=1.0):
        self.calls.append(("wait", {"deployment_id": deployment_id, "replicas": replicas, "timeout_s": timeout_s}))
        if self.wait_error is not None:
            raise self.wait_error
        return self.deployments[deployment_id]

    def list_deployments(self):
        return list(self.deployments.values())

    def get_deployment(self, deployment_id):
        if deployment_id not in self.deployments:
            raise NotFound(grpc.StatusCode.NOT_FOUND, f"deployment_id: deployment {deployment_id!r} not found")
        return self.deployments[deployment_id]

    def update_deployment(self, deployment_id, *, replicas=0, config=None):
        self.calls.append(("update", {"deployment_id": deployment_id, "replicas": replicas,
                                      "config": dict(config or {})}))
        d = common_pb2.Deployment()
        d.CopyFrom(self.get_deployment(deployment_id))
        if replicas:
            d.replicas = replicas
        if config:
            d.config.update(config)
        return d

    def delete_deployment(self, deployment_id):
        self.calls.append(("delete", {"deployment_id": deployment_id}))
        self.get_deployment(deployment_id)


@pytest.fixture
def gateway(monkeypatch):
    FakeClient.jobs = {JOB_ID}
    FakeClient.artifacts = {ARTIFACT_ID}
    FakeClient.deployments = {DEP_ID: _served()}
    FakeClient.calls = []
    FakeClient.wait_error = None
    monkeypatch.setattr(cli, "Client", FakeClient)
    monkeypatch.delenv("MODELPRESS_GATEWAY", raising=False)
    return FakeClient


def _deployed(gateway) -> list[dict]:
    return [call for kind, call in gateway.calls if kind == "deploy"]


# ---- deploy ---------------------------------------------------------------------------------------


def test_deploy_serves_a_jobs_output_or_an_artifact_told_apart_by_looking(gateway, capsys):
    assert cli.main(["deploy", JOB_ID]) == 0
    assert cli.main(["deploy", ARTIFACT_ID, "--name", "bert-tiny", "--replicas", "3"]) == 0
    assert cli.main(["deploy", f"artifact:{ARTIFACT_ID}"]) == 0
    assert cli.main(["deploy", JOB_ID, "--shadow-share", "0.25"]) == 0
    assert _deployed(gateway) == [
        {"job_id": JOB_ID, "artifact_id": "", "name": "", "replicas": 1, "config": {}},
        {"job_id": "", "artifact_id": ARTIFACT_ID, "name": "bert-tiny", "replicas": 3, "config": {}},
        {"job_id": "", "artifact_id": ARTIFACT_ID, "name": "", "replicas": 1, "config": {}},
        {"job_id": JOB_ID, "artifact_id": "", "name": "", "replicas": 1, "config": {}, "shadow_share": 0.25}]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"deployment {DEP_ID} ({JOB_ID}) pending: job {JOB_ID} (artifact {ARTIFACT_ID}) on "
                        f"1 replica(s); follow with `modelpress deployments get {DEP_ID}`")
    assert lines[1].startswith(f"deployment {DEP_ID} (bert-tiny) pending: artifact {ARTIFACT_ID} on 3 replica(s)")
    assert not [kind for kind, _ in gateway.calls if kind == "wait"]  # no --wait, no waiting


def test_deploy_of_an_unknown_id_names_both_kinds(gateway, capsys):
    assert cli.main(["deploy", "a-0000"]) == 2
    err = capsys.readouterr().err
    assert "NOT_FOUND" in err and "neither a job" in err and "nor an artifact" in err and "'a-0000'" in err


def test_config_json_and_set_pairs_merge_with_set_winning(gateway):
    assert cli.main(["deploy", ARTIFACT_ID, "--config", '{"max_batch_size": 8, "threads": 4}',
                     "--set", "max_batch_size=32", "--set", "max_wait_ms=2.5"]) == 0
    (call,) = _deployed(gateway)
    assert call["config"] == {"max_batch_size": 32, "threads": 4, "max_wait_ms": 2.5}
    assert isinstance(call["config"]["max_batch_size"], int)  # a whole number stays one for the strict config


@pytest.mark.parametrize("argv, message", [
    (["--config", "[1, 2]"], "JSON object"), (["--config", "{max_batch_size: 8}"], "JSON object"),
    (["--set", "max_batch_size"], "key=value"),
])
def test_malformed_config_arguments_are_refused_before_any_call(gateway, argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["deploy", ARTIFACT_ID, *argv])
    assert _deployed(gateway) == []


@pytest.mark.parametrize("argv", [["deploy", ARTIFACT_ID, "--replicas", "0"], ["deployments", "scale", DEP_ID, "0"],
                                  ["deployments", "scale", DEP_ID, "two"], ["deployments"]])
def test_replica_counts_below_one_and_a_missing_action_are_usage_errors(gateway, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2 and gateway.calls == []


def test_deploy_wait_waits_for_every_replica_asked_and_prints_the_deployment(gateway, capsys):
    assert cli.main(["deploy", JOB_ID, "--replicas", "2", "--wait", "--timeout", "30"]) == 0
    assert ("wait", {"deployment_id": DEP_ID, "replicas": 2, "timeout_s": 30.0}) in gateway.calls
    out = capsys.readouterr().out
    assert out.startswith(f"deployment {DEP_ID} (bert-tiny): serving, 2/2 replica(s) ready\n")
    assert "http      127.0.0.1:8000  (replica serving@a:50057)" in out


def test_deploy_wait_that_fails_says_how_to_look_and_remove_it(gateway, capsys):
    gateway.wait_error = RuntimeError(f"deployment {DEP_ID} failed: ValueError: no weights")
    assert cli.main(["--gateway", "10.0.0.7:50051", "deploy", JOB_ID, "--wait"]) == 1
    err = capsys.readouterr().err
    assert f"deployment {DEP_ID} failed: ValueError: no weights" in err
    assert f"modelpress --gateway 10.0.0.7:50051 deployments get {DEP_ID}" in err
    assert f"modelpress --gateway 10.0.0.7:50051 deployments delete {DEP_ID}" in err


def test_ctrl_c_during_deploy_wait_leaves_the_deployment_and_exits_130(gateway, capsys):
    gateway.wait_error = KeyboardInterrupt()
    assert cli.main(["deploy", JOB_ID, "--wait"]) == 130
    err = capsys.readouterr().err
    assert f"deployment {DEP_ID} stays" in err and "Traceback" not in err


def test_deploy_json_prints_the_deployment_document(gateway, capsys):
    assert cli.main(["deploy", JOB_ID, "--wait", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == message_document(_served())
    assert document["state"] == "DEPLOYMENT_STATE_SERVING" and document["status"]["requests"]["ok"] == 118


# ---- deployments ----------------------------------------------------------------------------------


def test_get_shows_state_replicas_endpoints_requests_latency_and_batch_sizes(gateway, capsys):
    assert cli.main(["deployments", "get", DEP_ID]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"deployment {DEP_ID} (bert-tiny): serving, 2/2 replica(s) ready",
        f"  serves job {JOB_ID} (artifact {ARTIFACT_ID}), encoder, onnx",
        "  config max_batch_size=4",
        "  endpoints:",
        "    http      127.0.0.1:8000  (replica serving@a:50057)",
        "    oip-grpc  127.0.0.1:50057  (replica serving@a:50057)",
        "    http      127.0.0.1:8100  (replica serving@b:50157)",
        "    oip-grpc  127.0.0.1:50157  (replica serving@b:50157)",
        "  requests: 120 (error 2, ok 118)",
        "  latency p50 / p95 / p99 on serving@a:50057: 1.2 / 3.5 / 7.0 ms",
        "  latency p50 / p95 / p99 on serving@b:50157: n/a (no request answered yet)",
        "  batch sizes (size: engine calls or decode steps): 1: 40, 4: 10, 16: 3"]


def test_get_of_a_pending_deployment_says_why_and_that_nothing_was_measured(gateway, capsys):
    pending = common_pb2.Deployment(deployment_id=DEP_ID, name="m", artifact_id=ARTIFACT_ID, replicas=1,
                                    state=K.DEPLOYMENT_STATE_PENDING,
                                    message="no serving replica has taken it yet (is the serving service running?)")
    gateway.deployments = {DEP_ID: pending}
    assert cli.main(["deployments", "get", DEP_ID]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [f"deployment {DEP_ID} (m): pending, 0/1 replica(s) ready", f"  serves artifact {ARTIFACT_ID}",
                         "  no serving replica has taken it yet (is the serving service running?)"]
    assert "  config defaults" in lines and "  endpoints: none yet" in lines and "  requests: 0" in lines
    assert lines[-1].endswith(": none yet")


def test_causal_lm_figures_show_the_kv_cache_and_queue(gateway, capsys):
    d = gateway.deployments[DEP_ID]
    d.model_kind = "causal-lm"
    json_format.ParseDict({"requests": {}, "batch_sizes": {}, "replicas": [
        {"latency_ms": {"p50": 10, "p95": 20, "p99": 30}, "kv_tokens_in_use": 512, "queued": 3}]}, d.status)
    assert cli.main(["deployments", "get", "bert-tiny"]) == 0  # by name too
    out = capsys.readouterr().out
    assert ("latency p50 / p95 / p99 on serving@a:50057: 10.0 / 20.0 / 30.0 ms, KV-cache tokens in use 512, "
            "queued 3") in out


def test_a_shadowed_deployment_shows_the_original_and_how_often_they_agree(gateway, capsys):
    d = gateway.deployments[DEP_ID]
    d.shadow.builtin, d.shadow_share = "minilm-l6", 0.1
    json_format.ParseDict({"requests": {"ok": 3}, "batch_sizes": {}, "replicas": [
        {"shadow": {"share": 0.1, "compared": 40, "failed": 0, "mean_cosine": 0.99123, "min_cosine": 0.9504}}]},
        d.status)
    assert cli.main(["deployments", "get", DEP_ID]) == 0
    out = capsys.readouterr().out
    assert "  shadow: the original builtin:minilm-l6 on 10% of requests\n" in out
    assert ("  shadow agreement on serving@a:50057: compared 40, failed 0, mean cosine 0.9912, "
            "min cosine 0.9504\n") in out


def test_get_json_is_the_deployment_document(gateway, capsys):
    assert cli.main(["deployments", "get", DEP_ID, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == message_document(gateway.deployments[DEP_ID])
    assert document["config"] == {"max_batch_size": 4} and document["endpoints"][1]["protocol"] == "oip-grpc"


def test_list_prints_one_line_per_deployment_ids_whole(gateway, capsys):
    assert cli.main(["deployments", "list"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["deployment", "name", "state", "ready", "kind", "requests", "serves"]
    assert row.split() == [DEP_ID, "bert-tiny", "serving", "2/2", "encoder", "120", JOB_ID]
    assert cli.main(["deployments", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [message_document(gateway.deployments[DEP_ID])]


def test_scale_update_and_delete_take_an_id_or_a_name(gateway, capsys):
    assert cli.main(["deployments", "scale", "bert-tiny", "3"]) == 0
    assert cli.main(["deployments", "update", DEP_ID, "--set", "max_wait_ms=2", "--set", "threads=4"]) == 0
    assert cli.main(["deployments", "delete", "bert-tiny"]) == 0
    assert [call for call in gateway.calls] == [
        ("update", {"deployment_id": DEP_ID, "replicas": 3, "config": {}}),
        ("update", {"deployment_id": DEP_ID, "replicas": 0, "config": {"max_wait_ms": 2, "threads": 4}}),
        ("delete", {"deployment_id": DEP_ID})]
    assert capsys.readouterr().out.splitlines() == [
        f"deployment {DEP_ID} (bert-tiny): 3 replica(s) asked, 2 ready",
        f"deployment {DEP_ID} (bert-tiny): max_wait_ms=2, threads=4; its replicas load it again with the new config",
        f"deleted deployment {DEP_ID}"]


def test_scale_wait_waits_for_the_new_count(gateway):
    assert cli.main(["deployments", "scale", DEP_ID, "2", "--wait"]) == 0
    assert gateway.calls[-1] == ("wait", {"deployment_id": DEP_ID, "replicas": 2, "timeout_s": 300.0})


def test_an_unknown_name_and_an_update_without_fields_are_refused_without_a_change(gateway, capsys):
    assert cli.main(["deployments", "delete", "no-such-model"]) == 2
    assert "no deployment has the id or name 'no-such-model'" in capsys.readouterr().err
    assert cli.main(["deployments", "update", DEP_ID]) == 2
    assert "--set FIELD=VALUE" in capsys.readouterr().err
    assert gateway.calls == []


def test_an_unknown_id_is_the_gateways_not_found(gateway, capsys):
    assert cli.main(["deployments", "get", "dep-ffffffffffffffff"]) == 2
    assert "error: NOT_FOUND: deployment_id: deployment 'dep-ffffffffffffffff' not found" in capsys.readouterr().err


def test_the_help_lists_every_config_field_from_its_declaration():
    from services.common.contract.deployment_config import DeploymentConfig

    text = cli_deployments.config_fields_text()
    for name, info in DeploymentConfig.model_fields.items():
        assert f"  {name}={json.dumps(info.default)}: {info.description}" in text


def test_bundle_writes_a_triton_repository_from_a_local_artifact_and_refuses_a_mismatch(tmp_path, capsys):
    """`modelpress bundle` needs no mesh: the folder's engine format picks the layout; a target that
    cannot serve it is refused with the reason, and nothing is written."""
    from tests.unit.common.test_bundles import onnx_artifact

    artifact = onnx_artifact(tmp_path / "artifact")
    assert cli.main(["bundle", str(artifact), "--target", "triton", "--name", "bert-tiny", "--out",
                     str(tmp_path / "repo"), "--set", "max_batch_size=8"]) == 0
    config = (tmp_path / "repo" / "bert-tiny" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in config and "onnxruntime" in config
    assert "triton bundle" in capsys.readouterr().out
    assert cli.main(["bundle", str(artifact), "--target", "vllm", "--name", "bert-tiny", "--out",
                     str(tmp_path / "vllm")]) == 2
    assert "vllm" in capsys.readouterr().err and not (tmp_path / "vllm").exists() or \
        not any((tmp_path / "vllm").iterdir())
