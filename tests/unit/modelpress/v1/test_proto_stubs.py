"""The committed stubs in modelpress/v1 and modelpress/inference/v2 must be exactly what
proto/generate.py produces now."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
# The stub folders proto/generate.py writes: modelpress's contract and the Open Inference Protocol's.
STUB_PACKAGES = ("modelpress/v1", "modelpress/inference/v2")


def _stub_files(root: Path, package: str) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / package).glob("*_pb2*.py*"))


def test_generated_stubs_are_current(tmp_path):
    subprocess.run([sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(tmp_path)], check=True)
    for package in STUB_PACKAGES:
        # Every file generated into the package folder (stubs and __init__.py) must be committed.
        fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / package).glob("*.py*"))
        committed = _stub_files(REPO, package) + [Path(package) / "__init__.py"]
        assert fresh == sorted(committed), f"{package}: stub files differ: run `python proto/generate.py`"
        stale = [
            str(rel)
            for rel in _stub_files(tmp_path, package)
            if (tmp_path / rel).read_bytes() != (REPO / rel).read_bytes()
        ]
        assert not stale, f"stale generated stubs (run `python proto/generate.py`): {stale}"
    # The parent of a nested stub package is a package too, or the stubs cannot be imported.
    assert (tmp_path / "modelpress" / "inference" / "__init__.py").is_file()
    assert (REPO / "modelpress" / "inference" / "__init__.py").is_file()


def test_inference_v2_stubs_import_as_a_package():
    """The gRPC module imports its messages by package path (include root proto/), and the service is
    the one the Open Inference Protocol's RPC paths name."""
    from modelpress.inference.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

    source = (REPO / "modelpress" / "inference" / "v2" / "grpc_predict_v2_pb2_grpc.py").read_text()
    assert "from modelpress.inference.v2 import grpc_predict_v2_pb2 as " in source
    service = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    rpcs = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
            "ModelStreamInfer"}
    assert set(service.methods_by_name) == rpcs
    # Only Triton's streaming extension streams, both ways (requests in, responses out as they come).
    streaming = {m.name for m in service.methods if m.client_streaming or m.server_streaming}
    assert streaming == {"ModelStreamInfer"}
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert hasattr(grpc_predict_v2_pb2_grpc, "add_GRPCInferenceServiceServicer_to_server")


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
