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
    """One contract for every technique: a single TechniqueService, and no technique-named copy of it."""
    import importlib
    import pkgutil

    import modelpress.v1
    from modelpress.v1 import technique_pb2

    service = technique_pb2.DESCRIPTOR.services_by_name["TechniqueService"]
    assert service.full_name == "modelpress.v1.TechniqueService"
    methods = service.methods_by_name
    assert set(methods) == {"Run", "Describe", "CheckConfig"}
    assert methods["Run"].server_streaming and not methods["Describe"].server_streaming
    assert methods["Run"].input_type.fields_by_name["stage"].message_type.name == "StageRequest"
    assert methods["Run"].output_type.fields_by_name["update"].message_type.name == "StageUpdate"
    described = methods["Describe"].output_type.fields_by_name["description"]
    assert described.message_type.name == "ServiceDescription"
    assert methods["CheckConfig"].input_type.fields_by_name["stage"].message_type.name == "StageSpec"
    assert set(methods["CheckConfig"].output_type.fields_by_name) == {"errors", "over_budget"}

    # No other service of the package declares a stage RPC: the technique services serve this one.
    others = {}
    for info in pkgutil.iter_modules(modelpress.v1.__path__):
        if info.name.endswith("_pb2") and info.name != "technique_pb2":
            module = importlib.import_module(f"modelpress.v1.{info.name}")
            for other in module.DESCRIPTOR.services_by_name.values():
                others[other.name] = set(other.methods_by_name)
    assert set(others) == {"GatewayService", "EvaluatorService", "OptimizerService"}
    assert others["OptimizerService"] == {"ListEngines"}
    for name in ("EvaluatorService", "OptimizerService"):
        assert not others[name] & {"Run", "Describe", "CheckConfig"}, name


def test_gateway_covers_the_seed_endpoints():
    from modelpress.v1 import gateway_pb2

    rpcs = set(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].methods_by_name)
    seed = {"CreateJob", "ListJobs", "GetJob", "CancelJob", "DeleteJob", "WatchJob", "ListMethods",
            "ValidateConfig", "ListStrategies", "RecommendStrategy", "Evaluate", "Compare", "ListBenchmarks",
            "RunBenchmark", "GetResult", "DownloadArtifact", "DeployResult", "GetReport", "OptimizeModel",
            "ListEngines", "UploadModel"}
    assert seed <= rpcs, seed - rpcs
