"""docker-compose.yml is valid compose and its workers can be scaled."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
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
    assert services["nats"]["command"] == ["-c", "/etc/nats/nats.conf"] and services["nats"]["volumes"]


def test_auth_is_on_nats_asks_for_a_password_and_the_gateway_for_tokens():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    conf = (REPO / "deploy" / "nats.conf").read_text()
    assert "jetstream" in conf and "password: $MODELPRESS_NATS_PASSWORD" in conf
    for name in [*WORKERS, "gateway"]:
        env = services[name]["environment"]
        assert env["MODELPRESS_REQUIRE_NATS_AUTH"] == "1", name
        assert env["MODELPRESS_NATS_URL"].startswith("nats://modelpress:${MODELPRESS_NATS_PASSWORD"), name
    gateway = services["gateway"]
    assert gateway["environment"]["MODELPRESS_AUTH_TOKENS"] == "/run/secrets/modelpress_tokens"
    assert gateway["secrets"] == ["modelpress_tokens"] and "modelpress_tokens" in compose["secrets"]
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])
