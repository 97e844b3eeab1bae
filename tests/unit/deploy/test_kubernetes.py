"""deploy/kubernetes validates offline against the Kubernetes 1.37 schemas (strict) and wires the
mesh as compose does: one Deployment and headless Service per worker, secrets for every credential."""

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
    files = [str(FOLDER / f"{name}.yaml") for name in ["gateway", *WORKERS]]
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
