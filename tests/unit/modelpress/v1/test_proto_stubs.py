"""The committed stubs in modelpress/v1 must be exactly what proto/generate.py produces now."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]


def test_generated_stubs_are_current(tmp_path):
    subprocess.run([sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "modelpress" / "v1").glob("*.py*"))
    committed = sorted(p.relative_to(REPO) for p in (REPO / "modelpress" / "v1").glob("*_pb2*.py*"))
    assert fresh == committed, "stub files differ: run `python proto/generate.py`"
    stale = [str(rel) for rel in fresh if (tmp_path / rel).read_bytes() != (REPO / rel).read_bytes()]
    assert not stale, f"stale generated stubs (run `python proto/generate.py`): {stale}"


def test_every_technique_service_has_run_and_describe():
    from modelpress.v1 import distiller_pb2, evaluator_pb2, optimizer_pb2, pruner_pb2, quantizer_pb2

    for module in (quantizer_pb2, pruner_pb2, distiller_pb2, evaluator_pb2, optimizer_pb2):
        (service,) = module.DESCRIPTOR.services_by_name.values()
        methods = service.methods_by_name
        assert methods["Run"].server_streaming, service.name
        assert "Describe" in methods, service.name


def test_gateway_covers_the_seed_endpoints():
    from modelpress.v1 import gateway_pb2

    rpcs = set(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].methods_by_name)
    seed = {"CreateJob", "ListJobs", "GetJob", "CancelJob", "DeleteJob", "WatchJob", "ListMethods",
            "ValidateConfig", "ListStrategies", "RecommendStrategy", "Evaluate", "Compare", "ListBenchmarks",
            "RunBenchmark", "GetResult", "DownloadArtifact", "DeployResult", "GetReport", "OptimizeModel",
            "ListEngines", "UploadModel"}
    assert seed <= rpcs, seed - rpcs
