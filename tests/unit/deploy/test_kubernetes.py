"""deploy/kubernetes validates offline against the Kubernetes 1.37 schemas (strict) and wires the
mesh as compose does: one Deployment and headless Service per worker, secrets for every credential,
workers that answer the gateway alone (mutual TLS, mesh tickets, NetworkPolicies), and the serving
service on 50057 and 8000 with a CPU autoscaler, its callers asked for the gateway's tokens."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
FOLDER = REPO / "deploy" / "kubernetes"
WORKERS = ["quantizer", "pruner", "distiller", "evaluator", "optimizer"]


def _resources(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((FOLDER / f"{name}.yaml").read_text()) if doc}


def test_every_manifest_passes_strict_schema_validation():
    exe = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    files = [str(FOLDER / f"{name}.yaml") for name in ["gateway", *WORKERS, "serving", "network-policies"]]
    run = subprocess.run([exe, "--strict", "--no-warn", *files], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(Path(f).name for f in files)


def _env(deployment: dict) -> dict[str, dict]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item for item in container["env"]}


def test_workers_scale_behind_headless_services_and_every_credential_is_a_secret():
    for name in WORKERS:
        found = _resources(name)
        assert found["Service"]["metadata"]["name"] == name and found["Service"]["spec"]["clusterIP"] == "None"
        assert found["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == f"modelpress-{name}"
        env = _env(found["Deployment"])
        assert env["MODELPRESS_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "modelpress-nats"
        assert "$(MODELPRESS_NATS_PASSWORD)" in env["MODELPRESS_NATS_URL"]["value"]
        assert env["MODELPRESS_REQUIRE_NATS_AUTH"]["value"] == "1"
    gateway = _resources("gateway")
    env = _env(gateway["Deployment"])
    for name in WORKERS:
        assert env[f"MODELPRESS_{name.upper()}_TARGET"]["value"] == f"dns:///{name}:50051"
    volumes = {v["name"]: v for v in gateway["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tokens"]["secret"]["secretName"] == "modelpress-tokens"
    assert volumes["tls"]["secret"]["secretName"] == "modelpress-gateway-tls"
    assert env["MODELPRESS_AUTH_TOKENS"]["value"].startswith("/etc/modelpress/auth/")
    values = yaml.safe_load((FOLDER / "nats-values.yaml").read_text())
    assert values["config"]["cluster"]["replicas"] == 3 and values["config"]["jetstream"]["enabled"]
    assert values["container"]["env"]["MODELPRESS_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == \
        "modelpress-nats"


def _pod(deployment: dict) -> tuple[dict, dict[str, dict], dict[str, str]]:
    """(the container, its pod's volumes by name, its mounts: volume name -> mount path)."""
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return (container, {v["name"]: v for v in spec["volumes"]},
            {m["name"]: m["mountPath"] for m in container["volumeMounts"]})


def _items(volume: dict) -> dict[str, str]:
    return {item["key"]: item["path"] for item in volume["secret"]["items"]}


def test_workers_ask_for_the_gateways_certificate_and_tickets_and_the_gateway_presents_both():
    for name in WORKERS:
        container, volumes, mounts = _pod(_resources(name)["Deployment"])
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert volumes["mesh-tls"]["secret"]["secretName"] == "modelpress-mesh-tls"
        # Its own key only, not the gateway's or another worker's.
        assert _items(volumes["mesh-tls"]) == {"ca.crt": "ca.crt", f"{name}.crt": "tls.crt", f"{name}.key": "tls.key"}
        assert volumes["mesh-secret"]["secret"]["secretName"] == "modelpress-mesh-secret"
        tls, secret = mounts["mesh-tls"], mounts["mesh-secret"]
        assert (env["MODELPRESS_TLS_CERT"], env["MODELPRESS_TLS_KEY"], env["MODELPRESS_TLS_CLIENT_CA"]) == (
            f"{tls}/tls.crt", f"{tls}/tls.key", f"{tls}/ca.crt"), name
        assert env["MODELPRESS_MESH_SECRET"] == f"{secret}/mesh.secret"
        # The kubelet's gRPC probe presents no client certificate.
        assert "tcpSocket" in container["readinessProbe"] and "tcpSocket" in container["livenessProbe"]
    container, volumes, mounts = _pod(_resources("gateway")["Deployment"])
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert _items(volumes["mesh-tls"]) == {"ca.crt": "ca.crt", "gateway.crt": "tls.crt", "gateway.key": "tls.key"}
    tls = mounts["mesh-tls"]
    assert (env["MODELPRESS_TARGETS_TLS_CA"], env["MODELPRESS_TARGETS_TLS_CERT"], env["MODELPRESS_TARGETS_TLS_KEY"]) \
        == (f"{tls}/ca.crt", f"{tls}/tls.crt", f"{tls}/tls.key")
    assert env["MODELPRESS_MESH_SECRET"] == f"{mounts['mesh-secret']}/mesh.secret"


def test_network_policies_let_only_gateways_reach_workers_and_only_modelpress_reach_nats():
    policies = {doc["metadata"]["name"]: doc["spec"]
                for doc in yaml.safe_load_all((FOLDER / "network-policies.yaml").read_text()) if doc}
    workers = policies["modelpress-workers-from-gateway"]
    (components,) = workers["podSelector"]["matchExpressions"]
    assert components["key"] == "app.kubernetes.io/component" and sorted(components["values"]) == sorted(WORKERS)
    assert workers["policyTypes"] == ["Ingress"]
    (rule,) = workers["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "modelpress",
                                                             "app.kubernetes.io/component": "gateway"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 50051}]
    # The selector picks every worker Deployment's pods and no gateway pod.
    for name in WORKERS:
        labels = _resources(name)["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] in components["values"]
    nats = policies["modelpress-nats-from-modelpress"]
    assert nats["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "nats"}}
    clients, routes = nats["ingress"]
    assert clients == {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "modelpress"}}}],
                       "ports": [{"protocol": "TCP", "port": 4222}]}
    assert routes == {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}]}


def test_serving_exposes_grpc_and_http_autoscales_on_cpu_and_asks_for_tokens():
    found = _resources("serving")
    assert set(found) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    container, volumes, mounts = _pod(found["Deployment"])
    assert container["command"] == ["python", "-m", "services.serving"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 50057, "http": 8000}
    env = _env(found["Deployment"])
    assert env["MODELPRESS_LISTEN"]["value"] == "0.0.0.0:50057" and env["MODELPRESS_HTTP_LISTEN"]["value"] == "0.0.0.0:8000"
    # Each pod names itself in the endpoints: a deployment's replica lives on one pod.
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["MODELPRESS_ADVERTISE_HOST"]["value"] == "$(POD_IP)"
    assert list(env).index("POD_IP") < list(env).index("MODELPRESS_ADVERTISE_HOST")  # $(VAR) sees earlier ones
    assert env["MODELPRESS_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "modelpress-nats"
    assert "$(MODELPRESS_NATS_PASSWORD)" in env["MODELPRESS_NATS_URL"]["value"]
    assert env["MODELPRESS_REQUIRE_NATS_AUTH"]["value"] == "1"
    assert env["MODELPRESS_AUTH_TOKENS"]["value"] == f"{mounts['tokens']}/tokens.json"
    assert volumes["tokens"]["secret"]["secretName"] == "modelpress-tokens"
    # The gateway never calls it: no mesh certificate or secret mounted, none named in its env.
    assert not {"mesh-tls", "mesh-secret"} & set(volumes) and not [k for k in env if "TLS" in k or "MESH" in k]
    assert container["readinessProbe"]["grpc"]["port"] == 50057
    annotations = found["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8000" and annotations["prometheus.io/path"] == "/metrics"
    service = found["Service"]
    assert service["metadata"]["name"] == "serving" and service["spec"]["clusterIP"] == "None"
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {50057: "grpc", 8000: "http"}
    assert service["spec"]["selector"] == found["Deployment"]["spec"]["selector"]["matchLabels"]
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    assert found["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "modelpress-serving"}
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
