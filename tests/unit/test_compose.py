"""docker-compose.yml is valid compose and its workers can be scaled."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKERS = ["quantizer", "pruner", "distiller", "evaluator", "optimizer"]


def test_compose_file_matches_the_compose_spec():
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    run = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(REPO / "docker-compose.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_service_has_a_container_and_workers_scale():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"nats", "gateway", *WORKERS}
    for name in WORKERS:
        service = services[name]
        assert "ports" not in service and "container_name" not in service, name
        assert service["command"][-1] == f"services.{name}"
        assert "healthcheck" in service
    gateway_env = services["gateway"]["environment"]
    for name in WORKERS:
        assert gateway_env[f"MODELPRESS_{name.upper()}_TARGET"] == f"dns:///{name}:50051"
    assert "-js" in services["nats"]["command"] and services["nats"]["volumes"]
