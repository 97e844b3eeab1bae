"""docker-compose.yml is valid compose, its workers can be scaled, and they answer the gateway alone
(mutual TLS and mesh tickets from secrets); the serving service publishes its gRPC and HTTP ports on
127.0.0.1 and asks its callers for the gateway's tokens."""

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
    assert set(services) == {"nats", "gateway", "serving", *WORKERS}
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
    for name in [*WORKERS, "gateway", "serving"]:
        env = services[name]["environment"]
        assert env["MODELPRESS_REQUIRE_NATS_AUTH"] == "1", name
        assert env["MODELPRESS_NATS_URL"].startswith("nats://modelpress:${MODELPRESS_NATS_PASSWORD"), name
    gateway = services["gateway"]
    assert gateway["environment"]["MODELPRESS_AUTH_TOKENS"] == "/run/secrets/modelpress_tokens"
    assert "modelpress_tokens" in gateway["secrets"] and "modelpress_tokens" in compose["secrets"]
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])


def _mounted(service: dict) -> dict[str, str]:
    """target file under /run/secrets -> the compose secret it is."""
    return {item["target"]: item["source"] for item in service["secrets"] if isinstance(item, dict)}


def test_workers_ask_for_mutual_tls_and_tickets_and_the_gateway_presents_both_from_secrets():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services, secrets = compose["services"], compose["secrets"]
    for name in WORKERS:
        env, mounted = services[name]["environment"], _mounted(services[name])
        assert mounted == {"mesh-ca.crt": "mesh_ca", "tls.crt": f"{name}_tls_crt", "tls.key": f"{name}_tls_key",
                           "mesh.secret": "mesh_secret"}, name
        assert (env["MODELPRESS_TLS_CERT"], env["MODELPRESS_TLS_KEY"], env["MODELPRESS_TLS_CLIENT_CA"],
                env["MODELPRESS_MESH_SECRET"]) == ("/run/secrets/tls.crt", "/run/secrets/tls.key",
                                                   "/run/secrets/mesh-ca.crt", "/run/secrets/mesh.secret"), name
        assert secrets[f"{name}_tls_key"]["file"] == f"./secrets/mesh/tls/{name}.key"
        # The health probe cannot present a client certificate: it checks the port instead.
        assert "healthcheck" not in " ".join(services[name]["healthcheck"]["test"])
    gateway = services["gateway"]
    env, mounted = gateway["environment"], _mounted(gateway)
    assert mounted == {"mesh-ca.crt": "mesh_ca", "mesh-gateway.crt": "gateway_tls_crt",
                       "mesh-gateway.key": "gateway_tls_key", "mesh.secret": "mesh_secret"}
    assert env["MODELPRESS_TARGETS_TLS_CA"] == "/run/secrets/mesh-ca.crt"
    assert env["MODELPRESS_TARGETS_TLS_CERT"] == "/run/secrets/mesh-gateway.crt"
    assert env["MODELPRESS_MESH_SECRET"] == "/run/secrets/mesh.secret"
    assert "MODELPRESS_TLS_CERT" not in env  # its own listener stays as it was, behind 127.0.0.1
    # Key material comes from files `modelpress mesh-certs secrets/mesh` writes, never from the repo.
    assert all(secret["file"].startswith("./secrets/") for secret in secrets.values())
    assert "secrets/" in (REPO / ".gitignore").read_text().splitlines()


def test_serving_listens_on_50057_and_8000_published_on_loopback_with_the_gateways_tokens():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    serving = compose["services"]["serving"]
    env = serving["environment"]
    assert serving["command"] == ["python", "-m", "services.serving"]
    assert (env["MODELPRESS_LISTEN"], env["MODELPRESS_HTTP_LISTEN"]) == ("0.0.0.0:50057", "0.0.0.0:8000")
    assert env["MODELPRESS_ADVERTISE_HOST"] == "serving"  # endpoints other containers resolve
    assert env["MODELPRESS_AUTH_TOKENS"] == "/run/secrets/modelpress_tokens" and serving["secrets"] == ["modelpress_tokens"]
    # The gateway never calls it: no mesh certificate, no mesh secret (it could sign tickets with it).
    assert not env["MODELPRESS_MESH_SECRET"] and "MODELPRESS_TLS_CERT" not in env
    assert serving["healthcheck"]["test"][-1] == "127.0.0.1:50057"
    published = {port.rpartition(":")[2]: port for port in serving["ports"]}
    assert set(published) == {"8000", "50057"} and all(p.startswith("127.0.0.1:") for p in published.values())
    assert "container_name" not in serving  # it scales: each container takes the next host port of a range
    assert all("-" in port.split(":")[1] for port in serving["ports"])
